#!/usr/bin/env bash
# A training-recipe sweep on the VALIDATION hospitals/classes only (issue 15): train one model per
# recipe, then score every recipe and the tuned baselines on the same fixed validation episodes,
# with paired 95% CIs against FedAvg + fine-tune. The held-out sites are never scored: training
# runs get eval-heldout=false, and tuning and scoring load the validation sites only.
#
#   docs/scripts/sweep.sh SCENARIO RECIPES [DATA_DIR] [OUT_DIR]
#
# RECIPES is a file of lines `name | method | run-config` (# comments allowed), e.g.
#   maml-lr0.1   | maml     | inner-lr=0.1 num-server-rounds=100
#   supervised   | fedavg   | tasks='hospital' num-server-rounds=200
# One line must be named `supervised`, before the lines that use it: the FedAvg model the
# baselines (fine-tune, linear probe, prototypes) start from; its adaptation is tuned on the same
# validation sites first. `@supervised` in a run-config stands for its model directory (for
# init-model, a warm start from it).
#   SEED default 0; SHOTS default "1,5"; EPISODES default 200 (per shots, over the validation sites)
# Writes OUT_DIR/<name>/ per recipe, OUT_DIR/tuned.json, OUT_DIR/times.tsv and the validation
# table OUT_DIR/headline.md (+ headline.json, plots).
set -euo pipefail
SCENARIO=${1:?scenario}
RECIPES=${2:?recipes file}
DATA=${3:-../shared/data/medmnist}
OUT=${4:-runs/sweep/$SCENARIO}
FEDMETA=${FEDMETA:-.venv/bin/fedmeta}
SEED=${SEED:-0}
SHOTS=${SHOTS:-1,5}
EPISODES=${EPISODES:-200}
mkdir -p "$OUT"
trim() { local s="$1"; s="${s#"${s%%[![:space:]]*}"}"; echo "${s%"${s##*[![:space:]]}"}"; }
models=()
while IFS='|' read -r name method config; do
    name=$(trim "$name")
    [[ -z "$name" || "$name" == \#* ]] && continue
    method=$(trim "$method")
    config=$(trim "$config")
    config=${config//@supervised/\'$OUT/supervised/model\'}
    if [[ ! -f "$OUT/$name/results.json" ]] || ! grep -q '"final"' "$OUT/$name/results.json"; then
        t=$(date +%s)
        "$FEDMETA" simulate --scenario "$SCENARIO" --data-dir "$DATA" --seed "$SEED" --algorithm "$method" \
            --run-config "eval-heldout=false $config" --out "$OUT/$name" < /dev/null
        printf '%s\t%s\t%s\t%s\n' "$name" "$method" "$config" "$(($(date +%s) - t))" >> "$OUT/times.tsv"
    fi
    [[ "$name" != supervised ]] && models+=(--model "$name=$OUT/$name/model")
done < "$RECIPES"
# the baselines' adaptation, tuned once per supervised model (kept if OUT_DIR already has it)
[[ -f "$OUT/tuned.json" ]] || "$FEDMETA" benchmark tune --scenario "$SCENARIO" --data-dir "$DATA" \
    --shots "$SHOTS" --supervised "$OUT/supervised/model" --out "$OUT/tuned.json"
"$FEDMETA" benchmark evaluate --scenario "$SCENARIO" --data-dir "$DATA" --sites validation --shots "$SHOTS" \
    --episodes "$EPISODES" "${models[@]}" --supervised "$OUT/supervised/model" --tuned "$OUT/tuned.json" --out "$OUT"
