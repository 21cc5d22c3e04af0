# Sourced by headline.sh and sweep.sh. A run is trained once its model is exported: `fedmeta
# simulate` exports it only after the final evaluation, so a model directory committed or linked
# in from elsewhere (docs/results/models/<scenario>/seed-<s>/<method>) counts as trained too.
trained() { [[ -f "$1/model/model.safetensors" && -f "$1/model/model.json" ]]; }
# A run stopped midway left its checkpoint: `fedmeta simulate --resume` goes on from it (and
# refuses to start again over it without --resume).
stopped_midway() { [[ -f "$1/checkpoint.safetensors" ]]; }
