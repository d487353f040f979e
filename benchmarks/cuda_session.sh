#!/bin/bash
# One session on a CUDA machine, in stages that each have their own time limit, so that one stage
# failing or running long leaves the others' results:
#   1. the CUDA tests (tests/test_cuda.py), alone on the GPU;
#   2. the step-cost benchmark on the GPU (paper width 128 at batch 128, and width 64 at batch 32), alone;
#   3. protocol C (configs/fashion-mnist-cpu-w64.yaml) for seeds SEEDS, RUN_JOBS runs at a time, beside
#   4. the whole test suite (device "auto" there means CUDA wherever a test does not name the CPU).
# Usage: benchmarks/cuda_session.sh OUT_DIR FASHION_MNIST_DIR  (run from the repository root; python3 must
# hold torch and the package's requirements; the package is taken from src/).
set -u
OUT=${1:?output folder}
DATA=${2:?Fashion-MNIST folder (IDX files)}
SEEDS=${SEEDS:-$(seq -s ' ' 7 26)}
RUN_JOBS=${RUN_JOBS:-8}
RUN_LIMIT=${RUN_LIMIT:-300}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-}  # empty: the config's 3,000
BENCH_STEPS=${BENCH_STEPS:-50}
source "$(dirname "$0")/session_lib.sh"
machine

log "1. CUDA tests"
stage 180 "$OUT/pytest_cuda.txt" 25 python3 -m pytest tests/test_cuda.py -q -rA -p no:cacheprovider

log "2. step cost"
timeout 90 python3 benchmarks/step_cost.py --device "$DEVICE" --width 128 --batch 128 --precision bf16 \
    --steps "$BENCH_STEPS" --out "$OUT/step_cost_cuda_w128.json" > /dev/null
log "exit $?"
timeout 60 python3 benchmarks/step_cost.py --device "$DEVICE" --width 64 --batch 32 --precision bf16 \
    --steps "$BENCH_STEPS" --out "$OUT/step_cost_cuda_w64.json" > /dev/null
log "exit $?"
grep -h -A3 '"ratio_to_dvae"' "$OUT"/step_cost_cuda_*.json

log "3. protocol C, seeds $SEEDS; 4. the test suite beside it"
timeout 280 python3 -m pytest -q -n 6 -p no:cacheprovider > "$OUT/pytest_all.txt" 2>&1 &
suite=$!
extra=()
[ -n "$STEPS" ] && extra=(--set "train.steps=$STEPS")
# shellcheck disable=SC2086
timeout "$RUN_LIMIT" python3 -m edvae compare --config configs/fashion-mnist-cpu-w64.yaml \
    --set "train.device=$DEVICE" --set "train.data_dir=$DATA" "${extra[@]}" \
    --methods edvae dvae --seeds $SEEDS --out runs/cuda-protocol-c --jobs "$RUN_JOBS" --threads 1 \
    > "$OUT/compare.txt" 2>&1
log "compare exit $?"; tail -n 30 "$OUT/compare.txt"
wait $suite
log "suite exit $?"; tail -n 30 "$OUT/pytest_all.txt"
# the runs without their weights (eval.json, metrics, PNGs, logs)
tar czf "$OUT/runs.tgz" --exclude='*.safetensors' runs/cuda-protocol-c
ls -la "$OUT"
