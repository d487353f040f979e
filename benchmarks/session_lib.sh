# Sourced by the CUDA session scripts (cuda_session.sh, cuda_compile_session.sh) after they set OUT:
# the package from src/, unbuffered output, the output folder, and the helpers below.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
mkdir -p "${OUT:?OUT must be set before sourcing session_lib.sh}"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

machine() {  # [MODULE...]: the GPU, torch and its CUDA, and the versions of python3 MODULEs, on one line
    log "machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c "import importlib, sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
          *(f'{m} {importlib.import_module(m).__version__}' for m in sys.argv[1:]))" "$@"
}

# stage LIMIT_S LOG TAIL COMMAND...: COMMAND under a time limit with all its output in LOG, then its exit
# status and the last TAIL lines of LOG
stage() {
    local limit=$1 output=$2 lines=$3
    shift 3
    timeout "$limit" "$@" > "$output" 2>&1
    log "exit $?"; tail -n "$lines" "$output"
}
