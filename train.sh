#!/usr/bin/env bash
# Train (and then evaluate) Video-ColBERT. Every setting can be overridden from the environment:
#   DATATYPE=msrvtt ANNO_PATH=data/msrvtt/anns VIDEO_PATH=data/msrvtt/videos BASE_ENCODER=ViT-B/32 \
#   NPROC=4 EPOCHS=5 BATCH_SIZE=128 LR=1e-4 COEF_LR=1e-3 LOSS=sigmoid MAX_FRAMES=12 bash train.sh
# Shared data / model settings live in scripts/common.sh (eval.sh reads the same ones). With no
# overrides this runs the built-in default: the synthetic dataset (generated on first use) and a
# tiny CLIP trained from scratch, which finishes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

EPOCHS=${EPOCHS:-8}
BATCH_SIZE=${BATCH_SIZE:-64}
LR=${LR:-1e-3}          # a from-scratch encoder learns at the full rate: COEF_LR=1
COEF_LR=${COEF_LR:-1.0}
SEED=${SEED:-42}

if [ "$ANNO_PATH" = "$SYNTHETIC_DIR/anns" ] && [ ! -f "$ANNO_PATH/MSRVTT_data.json" ]; then
  echo "Generating the synthetic dataset in $SYNTHETIC_DIR ..."
  python -m tvr.dataloaders.synthetic --output_dir "$SYNTHETIC_DIR" --seed 0
fi

# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --do_train --do_eval "${COMMON_FLAGS[@]}" --output_dir "$OUTPUT_DIR" \
  --epochs "$EPOCHS" --batch_size "$BATCH_SIZE" --lr "$LR" --coef_lr "$COEF_LR" \
  --seed "$SEED" $EXTRA_ARGS

echo "Metrics: $OUTPUT_DIR/eval_results.json"
cat "$OUTPUT_DIR/eval_results.json"
