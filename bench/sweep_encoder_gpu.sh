#!/usr/bin/env bash
# The encoder-kind sweep behind bench/results/train_defaults_encoder*.md, on one GPU of the device image
# (torch, transformers, peft, scikit-learn; no polars, prefect or mlflow): 19 configurations x 3 seeds.
#
# Prepare here (var/gpu is ignored by git and travels as a carried path, under the 64 MiB limit):
#   var/gpu/wheels/        pydantic, pydantic-core (cp312), pydantic-settings, annotated-types, typing-inspection,
#                          typing-extensions, python-dotenv wheels (pip download --no-deps ...)
#   var/gpu/minilm-fp16/   the bundled all-MiniLM-L6-v2 saved in fp16 (45 MB; loaded back as fp32 below):
#       python -c "import torch; from transformers import AutoModel, AutoTokenizer; from tasks.training.encoder import \
#         resolve_encoder as r; p = r('minilm'); AutoModel.from_pretrained(p, dtype=torch.float16).save_pretrained('var/gpu/minilm-fp16'); \
#         AutoTokenizer.from_pretrained(p).save_pretrained('var/gpu/minilm-fp16')"
#   var/gpu/data/<task>/   manifest.json, train.json, validation.json of a built dataset version: the sentiment one
#                          of bench/sweep_train_defaults.py's docstring, the direction one of bench/shared_split.py
# then, on the device:  TASK=direction bash bench/sweep_encoder_gpu.sh   (and TASK=sentiment); the part files land
# in $OUT; merge them with: python bench/sweep_train_defaults.py --kind encoder --dataset - --merge <parts> --out ...
# SET=layers runs the second sweep instead (LoRA on the top layers with the lower ones cached, train.encoder_lora_layers,
# against batch size): 10 configurations x 5 seeds, PARTS processes side by side.
set -euo pipefail
TASK=${TASK:?TASK=direction or TASK=sentiment}
OUT=${OUT:-/tmp/sweep-out}
SET=${SET:-pooling}
PARTS=${PARTS:-4}
source bench/gpu_setup.sh
CONFIGS=(
  '"learning_rate": 2e-4, "encoder_pooling": "cls"' '"learning_rate": 5e-4, "encoder_pooling": "cls"'
  '"learning_rate": 1e-3, "encoder_pooling": "cls"' '"learning_rate": 2e-3, "encoder_pooling": "cls"'
  '"learning_rate": 1e-3, "encoder_pooling": "cls", "warmup_steps": 30' '"learning_rate": 1e-3, "encoder_pooling": "cls", "warmup_steps": 100'
  '"learning_rate": 2e-3, "encoder_pooling": "cls", "warmup_steps": 30' '"learning_rate": 2e-3, "encoder_pooling": "cls", "warmup_steps": 100'
  '"learning_rate": 5e-4, "encoder_pooling": "cls", "early_stopping_patience": 5' '"learning_rate": 7e-4, "encoder_pooling": "cls"'
  '"learning_rate": 7e-4, "encoder_pooling": "cls", "early_stopping_patience": 5'
  '"learning_rate": 3e-4, "encoder_pooling": "mean"' '"learning_rate": 5e-4, "encoder_pooling": "mean"'
  '"learning_rate": 7e-4, "encoder_pooling": "mean"' '"learning_rate": 1e-3, "encoder_pooling": "mean"'
  '"learning_rate": 5e-4, "encoder_pooling": "mean", "target_modules": ["query", "key", "value", "dense"]'
  '"learning_rate": 5e-4, "encoder_pooling": "mean", "lora_r": 32, "lora_alpha": 64'
  '"learning_rate": 5e-4, "encoder_pooling": "mean", "batch_size": 8'
  '"learning_rate": 5e-4, "encoder_pooling": "mean", "early_stopping_patience": 5'
)
SEEDS=(42 1 2)
if [ "$SET" = layers ]; then
  M='"encoder_pooling": "mean"'
  CONFIGS=(
    "$M, \"learning_rate\": 5e-4" "$M, \"learning_rate\": 5e-4, \"batch_size\": 8"
    "$M, \"learning_rate\": 5e-4, \"encoder_lora_layers\": 3" "$M, \"learning_rate\": 5e-4, \"encoder_lora_layers\": 2"
    "$M, \"learning_rate\": 5e-4, \"encoder_lora_layers\": 1" "$M, \"learning_rate\": 5e-4, \"encoder_lora_layers\": 3, \"batch_size\": 8"
    "$M, \"learning_rate\": 5e-4, \"encoder_lora_layers\": 2, \"batch_size\": 8"
    "$M, \"learning_rate\": 1e-3, \"encoder_lora_layers\": 2" "$M, \"learning_rate\": 1e-3, \"encoder_lora_layers\": 2, \"batch_size\": 8"
    "$M, \"learning_rate\": 1e-3, \"encoder_lora_layers\": 1"
  )
  SEEDS=(42 1 2 3 4)
fi
args=()
for c in "${CONFIGS[@]}"; do for seed in "${SEEDS[@]}"; do
  args+=(--config "{\"base_model\": \"/tmp/m32\", $c, \"seed\": $seed}")
done; done
mkdir -p "$OUT"
for ((part = 0; part < PARTS; part++)); do  # PARTS processes share the GPU
  python bench/sweep_train_defaults.py --kind encoder --torch-threads $((16 / PARTS > 0 ? 16 / PARTS : 1)) \
    --dataset "var/gpu/data/$TASK" --out "$OUT/$TASK-$part" --part "$part/$PARTS" "${args[@]}" > "$OUT/$TASK-$part.log" 2>&1 &
done
wait
