#!/usr/bin/env bash
# Print CMAKE_ARGS for building llama-cpp-python's CPU backend for exactly this machine's
# instruction set. llama.cpp's default GGML_NATIVE build has been seen to emit instructions
# (AMX, AVX-VNNI) that a virtualised CPU advertises to the compiler but cannot execute, which
# crashes with SIGILL on K-quant and Q8 models. Here each extension is enabled only if
# /proc/cpuinfo lists it, and AMX is always off. Elsewhere (macOS, ARM) it prints nothing:
# the default build is right there.
set -euo pipefail
[ -r /proc/cpuinfo ] && grep -qw avx2 /proc/cpuinfo || exit 0
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
echo "-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma)" \
     "-DGGML_F16C=$(has f16c) -DGGML_BMI2=$(has bmi2) -DGGML_AVX512=$(has avx512f)" \
     "-DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)" \
     "-DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX_VNNI=$(has avx_vnni)" \
     "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
