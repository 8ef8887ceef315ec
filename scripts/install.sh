#!/usr/bin/env bash
# Install localeft into ./.venv (created if missing), with its test tools.
# --test: also the system packages the tests need (Chromium for the chat page's browser test:
# apt-get on Debian/Ubuntu; elsewhere it says what to install).
#
# llama-cpp-python compiles llama.cpp from source. pip's wheel cache ignores CMAKE_ARGS, so a
# wheel built once with the wrong flags would be reused silently; this script keeps its own
# wheel cache keyed by the flags instead. CMAKE_ARGS from the environment win, e.g.
#   CMAKE_ARGS="-DGGML_CUDA=on" scripts/install.sh        # NVIDIA GPU
# macOS builds with Metal by default. On Linux x86 the CPU flags come from /proc/cpuinfo
# (scripts/cpu-cmake-args.sh), which avoids the SIGILL seen with GGML_NATIVE builds.
set -euo pipefail
test_deps=0
for arg in "$@"; do
    case "$arg" in
        --test) test_deps=1 ;;
        *) echo "usage: scripts/install.sh [--test]" >&2; exit 2 ;;
    esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)

# RPC on everywhere: `localeft rpc-server` and `--rpc` place layers on other machines' backends.
export CMAKE_ARGS="${CMAKE_ARGS-$(scripts/cpu-cmake-args.sh)}"
[[ " $CMAKE_ARGS " == *" -DGGML_RPC="* ]] || CMAKE_ARGS="$CMAKE_ARGS -DGGML_RPC=ON"
key=$("$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])' \
      "$version|$CMAKE_ARGS|$(uname -sm)")  # portable: macOS has no sha256sum
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/localeft/wheels/$key"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version (several minutes) with CMAKE_ARGS=$CMAKE_ARGS"
    mkdir -p "$wheels.tmp"
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 4)} \
        "${pip[@]}" wheel -q --no-deps --no-cache-dir -w "$wheels.tmp" "llama-cpp-python==$version"
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
"${pip[@]}" install -q "$wheels"/llama_cpp_python-*.whl
"${pip[@]}" install -q -e ".[test]"
.venv/bin/localeft --version 2>/dev/null || .venv/bin/python -c "import localeft; print('localeft', localeft.__version__)"

# The browser test drives the system's Chromium (Playwright's own browser downloads are not used).
if [ "$test_deps" = 1 ] && [ -z "${LOCALEFT_CHROMIUM:-}" ] \
        && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
        echo "installing chromium (apt-get) for the browser test"
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "install Chromium for the browser test (e.g. brew install --cask chromium)," \
             "or set LOCALEFT_CHROMIUM=/path/to/chrome" >&2
    fi
fi
