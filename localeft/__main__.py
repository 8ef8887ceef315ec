"""`python -m localeft ...` runs the command line."""

from localeft.cli import main

if __name__ == "__main__":
    main()
