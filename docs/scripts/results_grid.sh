#!/usr/bin/env bash
# The results grid of docs/RESULTS.md: every algorithm and baseline on the real MedMNIST files,
# 2-way (medmnist-2d: cross-modality, BreastMNIST held out) and 3-way (medmnist-dirichlet:
# RetinaMNIST over label-skewed clinics, one held out), meta-trained at 5 shots and scored after
# the last round with 1, 5 and 10 labelled examples per class at every site.
#
#   docs/scripts/results_grid.sh [DATA_DIR] [OUT_DIR]     # defaults: ../shared/data/medmnist runs/results-grid
#
# Writes OUT_DIR/<scenario>/comparison.{md,csv,png} and each method's results.json.
set -euo pipefail
DATA=${1:-../shared/data/medmnist}
OUT=${2:-runs/results-grid}
FEDMETA=${FEDMETA:-.venv/bin/fedmeta}
METHODS=maml,fomaml,meta-sgd,anil,protonet,fedavg,centralized,local
COMMON=(--data-dir "$DATA" --compare "$METHODS" --rounds 40 --eval-every 20)
start=$(date +%s)
"$FEDMETA" simulate --scenario medmnist-2d "${COMMON[@]}" \
    --run-config 'eval-tasks=50 ways=2 eval-shots="1,10"' --out "$OUT/medmnist-2d-2way"
"$FEDMETA" simulate --scenario medmnist-dirichlet "${COMMON[@]}" \
    --run-config 'eval-tasks=50 ways=3 queries=3 eval-shots="1,10"' --out "$OUT/medmnist-dirichlet-3way"
echo "results grid: $(($(date +%s) - start)) s; tables in $OUT/*/comparison.md"
