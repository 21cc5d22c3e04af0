#!/usr/bin/env bash
# A headline run's scoring on one GPU: `fedmeta benchmark evaluate --device cuda` in WORKERS
# processes that share one scores directory (each claims the method-seed it scores, the others
# move on to the next), then one more that finds every score kept and writes headline.json,
# headline.md and the plots. On 2 CPU cores the fine-tuned baselines cost about 70 min per seed
# (docs/RESULTS.md); on a GPU each episode's 100 small steps wait on kernel launches rather than
# arithmetic, so several processes keep it busy.
#
#   docs/scripts/gpu_score.sh RUN_DIR [DATA_DIR] [RESULTS_DIR]
#
# RUN_DIR is one scenario's folder of a headline run (headline.sh's OUT_DIR/<scenario>): its
# seed-<s>/fedavg-supervised/model and seed-<s>/<method>/model, and tuned.json (`fedmeta
# benchmark tune`, e.g. on the CPU). RESULTS_DIR defaults to RUN_DIR/results-cuda.
#   SCENARIO  default: RUN_DIR's name
#   METHODS   meta-models scored with their centralized versions, default "fomaml"
#   WORKERS   default 6; EPISODES default 600; SHOTS default "1,5"; DEVICE default "cuda"
#   FEDMETA   default "python3 -m fedmeta"
#   ACCEPT    device types whose finished scores are kept too (evaluate --accept-device), e.g.
#             DEVICE=cpu ACCEPT=cuda finishes on the CPU a table a GPU scored in part
# Writes RESULTS_DIR/worker-<n>.log (each line stamped with seconds since the start) beside the
# scores; the scores are named by the device (`cuda`), so CPU scores are never taken for them.
set -euo pipefail
RUN=${1:?RUN_DIR: a headline run of one scenario, e.g. runs/headline/new-hospital}
DATA=${2:-../shared/data/medmnist}
RESULTS=${3:-$RUN/results-cuda}
SCENARIO=${SCENARIO:-$(basename "$RUN")}
METHODS=${METHODS:-fomaml}
WORKERS=${WORKERS:-6}
EPISODES=${EPISODES:-600}
SHOTS=${SHOTS:-1,5}
DEVICE=${DEVICE:-cuda}
read -r -a FEDMETA <<< "${FEDMETA:-python3 -m fedmeta}"
[[ -f "$RUN/tuned.json" ]] || { echo "$RUN/tuned.json is missing: run \`fedmeta benchmark tune\` first (headline.sh does)" >&2; exit 2; }
args=(--scenario "$SCENARIO" --data-dir "$DATA" --shots "$SHOTS" --episodes "$EPISODES" --tuned "$RUN/tuned.json"
      --device "$DEVICE" --out "$RESULTS")
for kind in ${ACCEPT:-}; do args+=(--accept-device "$kind"); done
for seed_dir in "$RUN"/seed-*; do
    for method in ${METHODS//,/ }; do
        for name in "$method" "centralized-$method"; do
            [[ -f "$seed_dir/$name/model/model.json" ]] && args+=(--model "$name=$seed_dir/$name/model")
        done
    done
    args+=(--supervised "$seed_dir/fedavg-supervised/model")
done
mkdir -p "$RESULTS"
start=$(date +%s)
stamp() { while IFS= read -r line; do printf '%5d %s\n' "$(($(date +%s) - start))" "$line"; done; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
pids=()
for n in $(seq 1 "$WORKERS"); do
    ("${FEDMETA[@]}" benchmark evaluate "${args[@]}" 2>&1 | stamp > "$RESULTS/worker-$n.log") &
    pids+=($!)
    sleep 2  # each claims the first method-seed free when it gets there: a stagger spreads them
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
(( failed == 0 )) || { echo "a worker failed: see $RESULTS/worker-*.log" >&2; tail -n 20 "$RESULTS"/worker-*.log >&2; exit 1; }
"${FEDMETA[@]}" benchmark evaluate "${args[@]}"  # every score kept: writes the tables once, alone
echo "scored on $DEVICE in $(($(date +%s) - start)) s with $WORKERS workers: $RESULTS/headline.md"
