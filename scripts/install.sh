#!/usr/bin/env bash
# Install localeft into ./.venv (created if missing), with its test tools.
#
# llama-cpp-python compiles llama.cpp from source. pip's wheel cache ignores CMAKE_ARGS, so a
# wheel built once with the wrong flags would be reused silently; this script keeps its own
# wheel cache keyed by the flags instead. CMAKE_ARGS from the environment win, e.g.
#   CMAKE_ARGS="-DGGML_CUDA=on" scripts/install.sh        # NVIDIA GPU
# macOS builds with Metal by default. On Linux x86 the CPU flags come from /proc/cpuinfo
# (scripts/cpu-cmake-args.sh), which avoids the SIGILL seen with GGML_NATIVE builds.
set -euo pipefail
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
