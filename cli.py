"""`python cli.py ...` runs the localeft command line from a source checkout."""

from localeft.cli import main

if __name__ == "__main__":
    main()
