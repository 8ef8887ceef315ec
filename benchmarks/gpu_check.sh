#!/usr/bin/env bash
# One device call: CUDA build, random-weight 7B/0.5B-shaped F16 models, then the benchmarks.
#   here:    bash ../shared/gpu/prepare.sh          (fills .gpu/, ignored by git)
#   device:  run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# Results land in $OUT (bench.json, verify.txt, log.txt).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
source .gpu/build.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
M=/tmp/models
time python3 benchmarks/random_gguf.py $M --shapes "${SHAPES:-7b,0.5b}"
python3 benchmarks/verify_cost.py $M/large_base.gguf -ngl 99 | tee "$OUT/verify.txt"
python3 benchmarks/verify_cost.py $M/small_base.gguf -ngl 99 | tee -a "$OUT/verify.txt"
python3 benchmarks/bench_eft.py $M/large_base.gguf $M/small_ft.gguf $M/small_base.gguf \
    -ngl 99 -n 64 --reps 3 --draft 8 --json > "$OUT/bench.json"
python3 -c "import json,sys; from localeft.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))" "$OUT/bench.json"
