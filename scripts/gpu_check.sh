#!/usr/bin/env bash
# The prepared GPU check (issue 24): every CUDA path of etf-train exercised and measured in one command.
#
#   scripts/gpu_check.sh --prepare            # here, before: copy the wheels and CIFAR-10 into .gpu/ (git-ignored)
#   scripts/gpu_check.sh OUT [--budget-s S]   # on the GPU machine: install .gpu/wheels, run every step, results in OUT
#   scripts/gpu_check.sh --dry-run OUT        # the same steps on the CPU at toy sizes (tests/test_gpu_check.py)
#
# With the device tool: run(command="bash scripts/gpu_check.sh $OUT", carry=[".gpu"], timeout_s=...).
# OUT receives summary.md, results.json and gpu_check.tar.gz (every step's log, the CIFAR-10 runs and their
# etf-compare output): at most 8 files, as the device tool brings back. Steps: scripts/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu

if [ "${1:-}" = "--prepare" ]; then
    shared="${SHARED:-../shared}"
    mkdir -p "$GPU_DIR/wheels"
    cp "$shared"/gpu/wheels/*.whl "$GPU_DIR/wheels/"
    cp "$shared"/data/cifar10-jpg.tar.gz "$GPU_DIR/"
    du -sh "$GPU_DIR"
    exit 0
fi

dry=()
if [ "${1:-}" = "--dry-run" ]; then
    dry=(--dry-run)
    shift
fi
out="${1:?usage: scripts/gpu_check.sh [--prepare | [--dry-run] OUT [driver options]]}"
shift
mkdir -p "$out"

# The GPU machine has torch but not Hydra and no package index: the wheels --prepare copied.
if [ ${#dry[@]} -eq 0 ] && [ -d "$GPU_DIR/wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$GPU_DIR"/wheels/*.whl \
        || { echo "gpu_check: installing $GPU_DIR/wheels failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
data=()
if [ -f "$GPU_DIR/cifar10-jpg.tar.gz" ] && [ ${#dry[@]} -eq 0 ]; then
    data=(--cifar "$GPU_DIR/cifar10-jpg.tar.gz")
fi
exec "${PYTHON:-python3}" scripts/gpu_check.py --out "$out" "${dry[@]}" "${data[@]}" "$@"
