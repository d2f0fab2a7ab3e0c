#!/usr/bin/env bash
# The device half of bench/walk_forward_encoder_gpu.py: the 23 prepared folds (var/gpu/wf, carried) trained and scored
# by PARTS processes sharing the one GPU, 16/PARTS CPU threads each; the predictions land in $OUT/$NAME.tgz (the device
# returns few files, so one archive). CONFIG is JSON over the encoder's defaults ({} = the defaults), FOLDS a subset.
#   NAME=defaults bash bench/walk_forward_encoder_gpu.sh
#   NAME=bf16 CONFIG='{"precision": "bf16"}' bash bench/walk_forward_encoder_gpu.sh
# then here: tar xzf <files_at>/defaults.tgz -C var/gpu/out && .venv/bin/python bench/walk_forward_encoder_gpu.py report \
#   --preds var/gpu/out/defaults/*.json --processes 8 --out bench/results/walk_forward_encoder
set -euo pipefail
NAME=${NAME:?NAME=a name for this run}
OUT=${OUT:-/tmp/wf-out}
PARTS=${PARTS:-8}
CONFIG=${CONFIG:-"{}"}
FOLDS=${FOLDS:-}
source bench/gpu_setup.sh
mkdir -p "$OUT" "/tmp/wfo/$NAME"
start=$(date +%s)
for ((part = 0; part < PARTS; part++)); do
  OMP_NUM_THREADS=$((16 / PARTS > 0 ? 16 / PARTS : 1)) python bench/walk_forward_encoder_gpu.py train --base-model /tmp/m32 \
    --part "$part/$PARTS" --out-dir "/tmp/wfo/$NAME" --config "$CONFIG" ${FOLDS:+--folds $FOLDS} > "/tmp/wfo/$NAME/part-$part.log" 2>&1 &
done
wait || true
echo "$NAME: $(ls /tmp/wfo/$NAME/preds-*.json 2> /dev/null | wc -l) folds in $(( $(date +%s) - start )) s"
tail -n 3 /tmp/wfo/$NAME/part-*.log | grep -v '^$' | grep -iv warn | tail -n 30
tar czf "$OUT/$NAME.tgz" -C /tmp/wfo "$NAME"
