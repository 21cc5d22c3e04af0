#!/usr/bin/env bash
# fedmeta's GPU checks, as one script (docs/BENCHMARKS.md, "GPU"): the CUDA tests (vmap over
# tasks equals the CPU loop; four virtual sites sharing one GPU in Flower's simulation engine)
# and the second-order MAML meta-batch timed on the GPU against higher and an autograd loop.
#
#   PYTHON=.venv/bin/python OUT_DIR=runs/gpu-check docs/scripts/gpu_check.sh
#
# Each step writes OUT_DIR/<step>.log; a failing step does not stop the others.
set -u
PY=${PYTHON:-python3}
OUT=${OUT_DIR:-runs/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=0

step() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - start)) s"
    tail -n 4 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed=1
}

step env 120 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; $PY -c '
import sys, torch, flwr, ray, monai, higher
print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))
print(\"flwr\", flwr.__version__, \"ray\", ray.__version__, \"monai\", monai.__version__)'"
step tests 300 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
bench() { step "$1" 150 "$PY" -m fedmeta bench maml --device cuda --json "${@:2}"; }
bench bench-vmap --execution vmap --repeats 21
bench bench-loop --execution loop --repeats 21
bench bench-vmap-32tasks --execution vmap --tasks 32 --repeats 11
bench bench-vmap-tf32 --execution vmap --repeats 21 --tf32
exit $failed
