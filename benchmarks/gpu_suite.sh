#!/usr/bin/env bash
# The CUDA rows of the README's Performance section in one go: full-size models, 256x256 source, random weights.
# Usage: bash benchmarks/gpu_suite.sh [OUT_DIR] [BUDGET_S] [compile]
#   JSON lines in OUT_DIR/gpu.jsonl, stderr in OUT_DIR/gpu.err; BUDGET_S (default 450) caps the whole run,
#   so it fits one device call with time left for a rerun. Rows run in order of importance; a row whose
#   own limit no longer fits in what is left is skipped (named on stderr), never cut short.
#   "compile" runs only the Inductor-compiled step (minutes of compiling): give it a device call of its own.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/bench}
budget=${2:-450}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$SECONDS
bench() {  # [SCRIPT=bench_methods] bench SECONDS ARGS...   (default script: bench_step)
  local limit=$1 script=${SCRIPT:-bench_step}; shift
  local left=$((budget - (SECONDS - start)))
  if (( limit > left )); then echo "-- skipped (${left}s left, needs ${limit}s): $*" >&2; return; fi
  echo "== $*" >&2
  timeout "$limit" python3 "benchmarks/$script.py" --size full --device cuda "$@" >>"$out/gpu.jsonl" 2>>"$out/gpu.err" \
    || echo "!! exit $? after ${limit}s limit: $*" >&2
}
B="--steps 5 --warmup 2"
if [[ "${3:-}" == compile ]]; then
  bench "$budget" --dtype bf16 --batch 1 $B --compile --compare-capture
  echo "suite: $((SECONDS - start))s of ${budget}s" >&2
  exit 0
fi
# 1. the captured step (issue 12): graphed vs eager, both modes, batch 1 and 4, with kernel counts and the
#    graphed-vs-eager comparison; then whole default translations with graphs, and the eager reference rows
bench 150 --dtype bf16 --mode text image --batch 1 4 $B --graph --compare-capture --profile
bench 90 --dtype bf16 --batch 1 --full-run --no-steps --graph
bench 60 --dtype bf16 --mode text image --batch 1 4 $B --profile
bench 90 --dtype bf16 --batch 1 --full-run --no-steps
# 1b. AGG beside DiffuseIT: whole default translations of both methods on the same models (eager steps),
#     1 and 4 samples, with the ratios AGG / DiffuseIT; one call per mode so that one mode's rows survive the other
SCRIPT=bench_methods bench 100 --dtype bf16 --mode text --samples 1 4
SCRIPT=bench_methods bench 70 --dtype bf16 --mode image --samples 1 4
# 1c. the ImageNet 512 generator (SPEC §6): seconds per step and peak memory at 512x512, eager, batch 1 and 2,
#     with the FLOP count of both UNets (their ratio prices the 512 model in the ZeroGPU plan until measured)
bench 90 --dtype bf16 --generator imagenet512 --width 512 --height 512 --mode text image --batch 1 2 $B --unet-flops
# 2. the kernel reductions on top of graphs (the compiled step: "compile", a call of its own)
bench 50 --dtype bf16 --batch 1 4 $B --graph --fold-bn --native-groupnorm --plain-attention --compare-capture
# 3. the older variants, if time is left
bench 40 --dtype bf16 --batch 1 4 $B --grad-checkpointing
bench 40 --dtype fp16 --batch 1 4 $B --graph
bench 40 --dtype bf16 --batch 1 $B --channels-last --cudnn-benchmark
# 4. AGG's work at full size (SPEC-AGG §9; the same counts as the tiny models', a check that the hooks agree)
bench 60 --dtype bf16 --mode text image --batch 1 --no-steps --agg-counts
echo "suite: $((SECONDS - start))s of ${budget}s" >&2
