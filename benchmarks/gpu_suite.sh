#!/usr/bin/env bash
# The CUDA rows of the README's Performance section in one go: full-size models, 256x256 source, random weights.
# Usage: bash benchmarks/gpu_suite.sh [OUT_DIR]   (JSON lines in OUT_DIR/gpu.jsonl, stderr in OUT_DIR/gpu.err)
# Each command has its own time limit, so one slow variant cannot starve the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bench() {  # bench SECONDS ARGS...
  local limit=$1; shift
  echo "== $*" >&2
  timeout "$limit" python3 benchmarks/bench_step.py --size full --device cuda "$@" >>"$out/gpu.jsonl" 2>>"$out/gpu.err" \
    || echo "!! exit $? after ${limit}s limit: $*" >&2
}
B="--steps 5 --warmup 2"
# default precision, both modes, batch 1 and 4, then one whole default translation of each mode
bench 150 --dtype bf16 --mode text image --batch 1 4 $B
bench 120 --dtype bf16 --batch 1 --full-run --no-steps
# lower-memory options (text, the mode that needs most)
bench 80 --dtype bf16 --batch 1 4 $B --grad-checkpointing
bench 80 --dtype bf16 --batch 1 4 $B --clip-models RN50-quickgelu ViT-B-32-quickgelu
# other precisions, and the speed variants that must pay to be adopted
bench 80 --dtype fp16 --batch 1 4 $B
bench 80 --dtype fp32 --batch 1 $B
bench 80 --dtype bf16 --batch 1 4 $B --cudnn-benchmark
bench 80 --dtype bf16 --batch 1 $B --channels-last --cudnn-benchmark
bench 150 --dtype bf16 --batch 1 $B --compile
