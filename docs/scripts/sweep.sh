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
# init-model, a warm start from it), and `@NAME` for any earlier line's (the same seed's), e.g.
#   maml-from-fomaml | maml | init-model=@fomaml num-server-rounds=50  (a first-order warm start)
#   SEEDS default "0" (or SEED): training seeds. With several, every recipe (and `supervised`) is
#         trained once per seed and scored as one method over all its seeds, as the headline run
#         does: a recipe is chosen on its mean over seeds, not on one seed's luck (on new-hospital,
#         FOMAML's held-out accuracy spans 6.9 points over three seeds; see docs/sweeps/new-hospital-3.txt)
#   SHOTS default "1,5"; EPISODES default 200 (per shots, over the validation sites)
#   LOCAL default 1; LOCAL=0 leaves local training out of the tuning and the scoring (a recipe
#         comparison against fine-tuning does not need it, and on 2 cores it is the longest part:
#         about 15 min of scoring on new-hospital-blood's validation hospitals at 100 episodes;
#         its tuning grid trains from scratch for every try and episode)
#   FINETUNE_META default 0; FINETUNE_META=1 also fine-tunes every recipe that adapts by steps
#         (MAML, FOMAML, ...) at the new site as FedAvg's model is: a NAME+finetune row per recipe,
#         tuned on fine-tuning's grid (`tune --finetune-meta`; about as long to score as fine-tuning)
#   SCREEN default 0; SCREEN=1 scores the recipes as they come (a ProtoNet's prototypes alone, a
#         MAML at its own evaluation steps) without tuning their adaptation first: a cheap first
#         screen of many recipes (tuning ProtoNet + fine-tune costs about 12 min per model on 2 cores);
#         run again without it for the recipes worth tuning (scores already made are kept)
#   REUSE default "": recipe names whose models are the headline run's, linked from
#         docs/results/models/SCENARIO/seed-<s>/<name> (`supervised`: its fedavg-supervised)
#         instead of trained again; their lines stay in RECIPES to say how they were trained.
#         Those are the models committed now: a sweep file that reuses them names the commit to
#         rerun it at once the headline's models are replaced
#         With `supervised` reused, the baselines' tuning is taken from that run's tuned.json, and
#         every entry that records the model it was tuned on (`tune` tunes it again if the model
#         differs); older meta-model entries, which do not, are left out and tuned again
# Rerun it to resume: trained recipes are kept, a training run stopped midway continues from its
# checkpoint, and tuning and scoring keep what they finished (tuned.json, tuned.progress/, scores/).
# Writes OUT_DIR/<name>/ per recipe (OUT_DIR/seed-<s>/<name>/ with several seeds), the adaptation
# settings OUT_DIR/tuned.json (tuned on the first seed's models), times.tsv beside the runs and
# the validation table OUT_DIR/headline.md (+ headline.json, plots).
set -euo pipefail
SCENARIO=${1:?scenario}
RECIPES=${2:?recipes file}
DATA=${3:-../shared/data/medmnist}
OUT=${4:-runs/sweep/$SCENARIO}
FEDMETA=${FEDMETA:-.venv/bin/fedmeta}
SEEDS=${SEEDS:-${SEED:-0}}
SHOTS=${SHOTS:-1,5}
EPISODES=${EPISODES:-200}
LOCAL=${LOCAL:-1}
SCREEN=${SCREEN:-0}
finetune_meta=()
[[ "${FINETUNE_META:-0}" == 1 ]] && finetune_meta=(--finetune-meta)
REUSE=" ${REUSE:-} "
HEADLINE=docs/results/models/$SCENARIO
read -r -a seeds <<< "$SEEDS"
(( ${#seeds[@]} > 0 )) || { echo "SEEDS is empty: give at least one training seed" >&2; exit 2; }
# one seed keeps the single-run layout (OUT_DIR/<name>); several get a folder each
runs_of() { if (( ${#seeds[@]} > 1 )); then echo "$OUT/seed-$1"; else echo "$OUT"; fi; }
source "$(dirname "$0")/trained.sh"
trim() { local s="$1"; s="${s#"${s%%[![:space:]]*}"}"; echo "${s%"${s##*[![:space:]]}"}"; }
models=()
first=()  # the first seed's recipes: their evaluation steps are tuned with the baselines'
supervised=()
for seed in "${seeds[@]}"; do
    runs=$(runs_of "$seed")
    mkdir -p "$runs"
    names=()  # this seed's lines so far: what @NAME may name
    while IFS='|' read -r name method config; do
        name=$(trim "$name")
        [[ -z "$name" || "$name" == \#* ]] && continue
        method=$(trim "$method")
        config=$(trim "$config")
        # @NAME: an earlier line's model, longest names first (@fomaml-scan before @fomaml)
        while read -r earlier; do
            [[ -n "$earlier" ]] && config=${config//@$earlier/\'$runs/$earlier/model\'}
        done < <(printf '%s\n' ${names[@]+"${names[@]}"} | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
        [[ "$config" == *@* ]] && { echo "$name: ${config}: @ names no earlier line of $RECIPES" >&2; exit 2; }
        names+=("$name")
        if [[ "$REUSE" == *" $name "* ]] && ! trained "$runs/$name"; then
            reused="$HEADLINE/seed-$seed/$([[ "$name" == supervised ]] && echo fedavg-supervised || echo "$name")"
            trained "$reused" || { echo "REUSE $name: no headline model at $reused/model" >&2; exit 2; }
            ln -sfn "$(realpath "$reused")" "$runs/$name"
        fi
        if ! trained "$runs/$name"; then
            t=$(date +%s)
            resume=()  # a run stopped midway goes on from its checkpoint (its time is then the rest's)
            stopped_midway "$runs/$name" && resume=(--resume)
            "$FEDMETA" simulate --scenario "$SCENARIO" --data-dir "$DATA" --seed "$seed" --algorithm "$method" \
                --run-config "eval-heldout=false $config" --out "$runs/$name" ${resume[@]+"${resume[@]}"} < /dev/null
            printf '%s\t%s\t%s\t%s%s\n' "$name" "$method" "$config" "$(($(date +%s) - t))" \
                "${resume[@]+"	(resumed: the rest of the run only)"}" >> "$runs/times.tsv"
        fi
        [[ "$name" == supervised ]] && continue
        models+=(--model "$name=$runs/$name/model")
        if [[ "$seed" == "${seeds[0]}" ]]; then first+=(--model "$name=$runs/$name/model"); fi
    done < "$RECIPES"
    supervised+=(--supervised "$runs/supervised/model")
done
mkdir -p "$OUT"
if [[ "$REUSE" == *" supervised "* && ! -f "$OUT/tuned.json" ]]; then  # the baselines' tuning of the same models
    "${PYTHON:-python3}" -c 'import json, sys
d = json.load(open(sys.argv[1]))
keep = ("protocol", "finetune", "linear-probe", "local")  # and entries that name their model: tune checks it
json.dump({k: v for k, v in d.items() if k in keep or "model" in v}, open(sys.argv[2], "w"))' \
        "$HEADLINE/tuned.json" "$OUT/tuned.json"
fi
# the baselines' adaptation and the recipes' evaluation steps, tuned on the first seed's models
# (what OUT_DIR/tuned.json already holds is kept)
if [[ "$SCREEN" == 1 ]]; then first=(); fi  # the recipes' adaptation is not tuned: scored as trained
"$FEDMETA" benchmark tune --scenario "$SCENARIO" --data-dir "$DATA" --shots "$SHOTS" ${first[@]+"${first[@]}"} \
    --supervised "$(runs_of "${seeds[0]}")/supervised/model" --out "$OUT/tuned.json" \
    "$([[ "$LOCAL" == 0 ]] && echo --no-local || echo --local)" ${finetune_meta[@]+"${finetune_meta[@]}"}
"$FEDMETA" benchmark evaluate --scenario "$SCENARIO" --data-dir "$DATA" --sites validation --shots "$SHOTS" \
    --episodes "$EPISODES" "${models[@]}" "${supervised[@]}" --tuned "$OUT/tuned.json" --out "$OUT" \
    "$([[ "$LOCAL" == 0 ]] && echo --no-local || echo --local)"
