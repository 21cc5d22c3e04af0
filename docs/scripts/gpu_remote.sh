#!/usr/bin/env bash
# Scoring one scenario's committed models on a lent GPU machine (the workplace's device tool),
# which has python3.12 with CUDA torch, typer, rich, numpy and scipy, but no package index, no
# ../shared and at most 64 MiB of travelling files (the working tree included, about 26 MB). Two
# halves:
#
#   docs/scripts/gpu_remote.sh pack DATASET...        # here: .gpu/score/ (ignored by git) holds
#       monai's wheel (the one package scoring needs that is not there) and the named MedMNIST
#       files, e.g. organamnist.npz for new-hospital (38 MB: only one dataset fits per call)
#   docs/scripts/gpu_remote.sh score RUN_DIR SECONDS  # there, with .gpu/score carried: installs
#       monai, scores with docs/scripts/gpu_score.sh (its settings: SHOTS, ACCEPT, WORKERS, ...)
#       into a copy of docs/results/scores/<scenario>, stops the workers after SECONDS, and packs
#       every score, progress file and worker log into $OUT/scores.tar.gz
#
# e.g. 10-shot rows added on the GPU to new-hospital's table that the CPU scored at 1 and 5 shots:
#   SHOTS=1,5,10 ACCEPT=cpu WORKERS=10 docs/scripts/gpu_remote.sh score docs/results/models/new-hospital 470
# then here: unpack scores.tar.gz elsewhere, copy its finished scores (scores/<scenario>/heldout/
# NAME-SEED.json; a progress file a GPU left is resumed only on a GPU) into docs/results/scores, and
# finish the table on the CPU with headline.sh, SHOTS=1,5,10 TUNE_SHOTS=1,5 ACCEPT=cuda.
set -euo pipefail
case "${1:-}" in
pack)
    shift
    (($#)) || { echo "name the MedMNIST files to carry, e.g. organamnist.npz" >&2; exit 2; }
    DATA=${DATA:-../shared/data/medmnist}
    rm -rf .gpu/score && mkdir -p .gpu/score/medmnist
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
    version=$(.venv/bin/python -m pip show monai | awk '/^Version:/{print $2}')
    python3 -m pip download -q --no-deps --only-binary=:all: "monai==$version" -d .gpu/score
    for name in "$@"; do cp "$DATA/$name" .gpu/score/medmnist/; done
    du -sh .gpu/score
    ;;
score)
    RUN=${2:?RUN_DIR: one scenario of the committed models, e.g. docs/results/models/new-hospital}
    SECONDS_LEFT=${3:?SECONDS: when to stop the workers, leaving time for the files to come back}
    : "${OUT:?OUT: the folder whose files come back (set by the device tool)}"
    scenario=$(basename "$RUN")
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/score/monai-*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    nvidia-smi -L || true
    results=/tmp/results
    mkdir -p "$results/scores"
    cp -r "docs/results/scores/$scenario" "$results/scores/"
    start=$(date +%s)
    setsid docs/scripts/gpu_score.sh "$RUN" .gpu/score/medmnist "$results" >"$results/gpu_score.log" 2>&1 &
    leader=$!
    while kill -0 "$leader" 2>/dev/null && (($(date +%s) - start < SECONDS_LEFT)); do sleep 5; done
    kill -- -"$leader" 2>/dev/null || true  # its workers too; each keeps what it saved (SAVE_EVERY)
    sleep 2
    echo "stopped after $(($(date +%s) - start)) s"
    tail -n 5 "$results"/gpu_score.log "$results"/worker-*.log || true
    tar -C "$results" -czf "$OUT/scores.tar.gz" scores gpu_score.log $(cd "$results" && ls worker-*.log headline.md 2>/dev/null)
    ls -la "$OUT"
    ;;
*)
    echo "usage: $0 pack DATASET... | score RUN_DIR SECONDS (see the top of this file)" >&2
    exit 2
    ;;
esac
