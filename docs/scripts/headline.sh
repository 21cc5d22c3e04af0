#!/usr/bin/env bash
# The headline benchmark (issue 15): on each scenario, every method trained with each seed, the
# baselines' adaptation tuned on the validation sites, then everything scored on the same fixed
# episodes of the held-out (new) sites, with paired 95% CIs against FedAvg + fine-tune.
#
#   docs/scripts/headline.sh [DATA_DIR] [OUT_DIR]       # defaults: ../shared/data/medmnist runs/headline
#
#   SCENARIOS   default "new-hospital new-hospital-blood new-classes"
#   SEEDS       default "0 1 2"
#   METHODS     federated meta-learners, default "maml,fomaml,meta-sgd,anil,protonet"
#   RUN         extra run-config for every training run (e.g. "num-server-rounds=60"); each
#               scenario's file recommends its own (its [run-config] table)
#   SUPERVISED_RUN  extra run-config for the supervised FedAvg runs only (e.g. "num-server-rounds=100")
#   META_RUN    extra run-config for the meta-learners and their centralized versions only (e.g.
#               "shots=1", which new-hospital's file recommends: in RUN it would also change the
#               supervised FedAvg runs' batches, whose tasks hold shots + queries images per class)
#   FINETUNE_META  1: each meta-learner that adapts by steps is also fine-tuned at the new site as
#               FedAvg's model is (NAME+finetune rows, tuned on fine-tuning's grid: `tune --finetune-meta`);
#               0 (default): only ProtoNet's NAME+finetune, which is always tuned
#   WARM_START  1: the meta-learners (and their centralized versions) start from that seed's
#               supervised FedAvg model (init-model); 0 (default): from scratch
#   SHOTS       default "1,5"; EPISODES default 600 (per shots, over the two new sites)
#   TUNE_SHOTS  the shots the adaptation settings are chosen at, default SHOTS. SHOTS=1,5,10
#               TUNE_SHOTS=1,5 adds 10-shot rows to a finished table with the settings tuned.json
#               holds (chosen at 1 and 5 shots) and scores only the 10-shot episodes (`evaluate`
#               keeps each finished method-seed's 1- and 5-shot episodes)
#   SIMULATE_ARGS  extra options for every `fedmeta simulate`, e.g. "--gpus-per-site 0.25" on a GPU
#               machine (with RUN="device='cuda' ...": see docs/RESULTS.md for the longer GPU setting)
#   DEVICE      where tuning and scoring adapt, default cpu (the reported figures); cuda on a GPU
#               machine, whose scores are named by the device (docs/scripts/gpu_score.sh scores one
#               scenario's models on a GPU with several processes)
#   ACCEPT      device types whose finished scores are kept too (evaluate --accept-device), e.g.
#               "cuda": the committed new-hospital scores are part GPU-made (docs/RESULTS.md)
#
# Writes OUT_DIR/<scenario>/seed-<s>/<method>/ (results, model), OUT_DIR/<scenario>/tuned.json,
# and docs/results/headline.json, headline.md and the plots (RESULTS_DIR to write elsewhere).
# Rerun it to resume: finished training runs and the methods tuned.json holds are kept (delete them to redo),
# a run stopped midway continues from its checkpoint, and the scoring keeps every method-seed it
# finished (RESULTS_DIR/scores; `fedmeta benchmark evaluate --rescore` to redo) and, of one
# stopped midway, the episodes it had scored (NAME-SEED.progress.json there; tuning keeps its
# own in OUT_DIR/<scenario>/tuned.progress/). On 2 cores, two scoring processes with
# OMP_NUM_THREADS=1 score 1.42x to 2.05x as fast as one with two threads (docs/BENCHMARKS.md, 2026-12-02 and -05): run this script with
# OMP_NUM_THREADS=1 (its training and tuning too: a 2-thread process beside busy cores ran 2.8x
# to 22x slower than alone, and `evaluate` warns when it finds itself so placed) and, beside it,
# `fedmeta benchmark evaluate` with the same --supervised models, --tuned and --out (the baselines); each method-seed is claimed by the process scoring
# it (NAME-SEED.claim), and the other takes its scores instead of scoring it twice.
set -euo pipefail
DATA=${1:-../shared/data/medmnist}
OUT=${2:-runs/headline}
FEDMETA=${FEDMETA:-.venv/bin/fedmeta}
SCENARIOS=${SCENARIOS:-new-hospital new-hospital-blood new-classes}
SEEDS=${SEEDS:-0 1 2}
METHODS=${METHODS:-maml,fomaml,meta-sgd,anil,protonet}
RUN=${RUN:-}
SUPERVISED_RUN=${SUPERVISED_RUN:-}
META_RUN=${META_RUN:-}
WARM_START=${WARM_START:-0}
finetune_meta=()
[[ "${FINETUNE_META:-0}" == 1 ]] && finetune_meta=(--finetune-meta)
SHOTS=${SHOTS:-1,5}
TUNE_SHOTS=${TUNE_SHOTS:-$SHOTS}
EPISODES=${EPISODES:-600}
RESULTS_DIR=${RESULTS_DIR:-docs/results}
DEVICE=${DEVICE:-cpu}
accept=()
for kind in ${ACCEPT:-}; do accept+=(--accept-device "$kind"); done
read -r -a SIMULATE_ARGS <<< "${SIMULATE_ARGS:-}"
start=$(date +%s)
# a run that finished is not trained again (pass docs/results/models as OUT_DIR to reuse the committed models)
source "$(dirname "$0")/trained.sh"
for scenario in $SCENARIOS; do
    models=()
    supervised=()
    for seed in $SEEDS; do
        dir="$OUT/$scenario/seed-$seed"
        t=$(date +%s)
        # FedAvg as a consortium would pre-train without meta-learning: supervised, global labels
        if ! trained "$dir/fedavg-supervised"; then
            resume=()
            stopped_midway "$dir/fedavg-supervised" && resume=(--resume)
            "$FEDMETA" simulate --scenario "$scenario" --data-dir "$DATA" --seed "$seed" --algorithm fedavg \
                --run-config "tasks='hospital' $RUN $SUPERVISED_RUN" --out "$dir/fedavg-supervised" "${resume[@]}" "${SIMULATE_ARGS[@]}"
        fi
        # the federated meta-learners, and each one's centralized (pooled-data) version as its upper
        # bound; with WARM_START=1 both start from that supervised model (Meta-Baseline's recipe)
        warm=""
        [[ "$WARM_START" == 1 ]] && warm="init-model='$dir/fedavg-supervised/model'"
        centralized=$(echo "$METHODS" | sed 's/\([^,]*\)/centralized-\1/g')
        for method in ${METHODS//,/ } ${centralized//,/ }; do
            trained "$dir/$method" && continue  # finished by an earlier invocation: the script resumes
            resume=()
            stopped_midway "$dir/$method" && resume=(--resume)
            "$FEDMETA" simulate --scenario "$scenario" --data-dir "$DATA" --seed "$seed" \
                --algorithm "$method" --run-config "$warm $RUN $META_RUN" --out "$dir/$method" "${resume[@]}" "${SIMULATE_ARGS[@]}"
        done
        echo "$scenario seed $seed: trained in $(($(date +%s) - t)) s"
        for method in ${METHODS//,/ } ${centralized//,/ }; do
            models+=(--model "$method=$dir/$method/model")
        done
        supervised+=(--supervised "$dir/fedavg-supervised/model")
    done
    # every method's adaptation settings, chosen on the validation sites with the first seed's
    # models (the baselines' steps and rates, the meta-models' steps); what tuned.json holds is kept
    first_seed=${SEEDS%% *}
    first=()
    for method in ${METHODS//,/ } ${centralized//,/ }; do
        first+=(--model "$method=$OUT/$scenario/seed-$first_seed/$method/model")
    done
    "$FEDMETA" benchmark tune --scenario "$scenario" --data-dir "$DATA" --shots "$TUNE_SHOTS" "${first[@]}" \
        --supervised "$OUT/$scenario/seed-$first_seed/fedavg-supervised/model" --out "$OUT/$scenario/tuned.json" \
        --device "$DEVICE" ${finetune_meta[@]+"${finetune_meta[@]}"}
    "$FEDMETA" benchmark evaluate --scenario "$scenario" --data-dir "$DATA" --shots "$SHOTS" --episodes "$EPISODES" \
        "${models[@]}" "${supervised[@]}" --tuned "$OUT/$scenario/tuned.json" --out "$RESULTS_DIR" --device "$DEVICE" \
        ${accept[@]+"${accept[@]}"}
done
# the results page's headline tables, regenerated from headline.json (only for the reported results)
[[ "$RESULTS_DIR" == docs/results ]] && "$FEDMETA" benchmark report --results "$RESULTS_DIR" --doc docs/RESULTS.md
echo "headline: $(($(date +%s) - start)) s; $RESULTS_DIR/headline.md"
