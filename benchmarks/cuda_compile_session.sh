#!/bin/bash
# The GPU measurements of the compiled and captured training step (docs/performance.md), in stages
# with their own time limits, so that one stage failing or running long leaves the others' results:
#   1. the compile and CUDA-graph tests on the GPU (tests/test_compile.py; its CUDA tests have never run);
#   2. training throughput of EdVAE at the paper's configuration (width 128, batch 128, bf16): eager,
#      compiled, captured and the authors' path side by side, with kernels per step, the GPU-busy fraction
#      and the fraction of the GPU's measured bf16 matrix-product rate (benchmarks/throughput.py);
#   3. (RUN_DVAE=1) the same for dVAE.
# Each compiled mode compiles for minutes (two modes, so twice): the limits below assume a machine
# with many CPU cores for inductor's compile workers.
# Usage: benchmarks/cuda_compile_session.sh OUT_DIR  (from the repository root; python3 must hold torch
# with CUDA and Triton, and the package's requirements; the package is taken from src/).
# Written without a GPU: this script has not been run.
set -u
OUT=${1:?output folder}
STEPS=${STEPS:-50}
source "$(dirname "$0")/session_lib.sh"
machine triton

log "1. compile tests on the GPU"
stage 240 "$OUT/pytest_compile_cuda.txt" 20 python3 -m pytest tests/test_compile.py -q -rA -p no:cacheprovider -k "cuda"

run_throughput() {  # METHOD
    timeout 420 python3 benchmarks/throughput.py --device cuda --precision bf16 --steps "$STEPS" --warmup 3 \
        --methods "$1" --modes eager compiled captured reference --out "$OUT/throughput_cuda_bf16_$1" \
        > "$OUT/throughput_cuda_bf16_$1.log" 2>&1
    log "exit $?"; cat "$OUT/throughput_cuda_bf16_$1.md"; tail -n 5 "$OUT/throughput_cuda_bf16_$1.log"
}
log "2. throughput, edvae, bf16"
run_throughput edvae
if [ "${RUN_DVAE:-0}" = 1 ]; then log "3. throughput, dvae, bf16"; run_throughput dvae; fi
