#!/usr/bin/env bash
# Train (and then evaluate) Video-ColBERT. Every setting below can be overridden from the
# environment, e.g.  DATATYPE=msrvtt ANNO_PATH=data/msrvtt/anns VIDEO_PATH=data/msrvtt/videos \
#                    BASE_ENCODER=ViT-B/32 NPROC=4 BATCH_SIZE=128 EPOCHS=5 MAX_FRAMES=12 bash train.sh
# With no overrides it runs the built-in default: the synthetic dataset (generated on first use)
# and a tiny CLIP trained from scratch, which finishes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")"

SYNTHETIC_DIR=${SYNTHETIC_DIR:-data/synthetic}
DATATYPE=${DATATYPE:-msrvtt}
ANNO_PATH=${ANNO_PATH:-$SYNTHETIC_DIR/anns}
VIDEO_PATH=${VIDEO_PATH:-$SYNTHETIC_DIR/videos}
BASE_ENCODER=${BASE_ENCODER:-scratch:tiny}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/synthetic_tiny}
NPROC=${NPROC:-1}
EPOCHS=${EPOCHS:-6}
BATCH_SIZE=${BATCH_SIZE:-64}
BATCH_SIZE_VAL=${BATCH_SIZE_VAL:-64}
LR=${LR:-1e-3}
COEF_LR=${COEF_LR:-1.0}
MAX_WORDS=${MAX_WORDS:-32}
MAX_FRAMES=${MAX_FRAMES:-8}
VIDEO_FRAMERATE=${VIDEO_FRAMERATE:-2}
WORKERS=${WORKERS:-2}
SEED=${SEED:-42}
EXTRA_ARGS=${EXTRA_ARGS:-}

if [ "$ANNO_PATH" = "$SYNTHETIC_DIR/anns" ] && [ ! -f "$ANNO_PATH/MSRVTT_data.json" ]; then
  echo "Generating the synthetic dataset in $SYNTHETIC_DIR ..."
  python -m tvr.dataloaders.synthetic --output_dir "$SYNTHETIC_DIR" --seed 0
fi

if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC")
else
  LAUNCH=(python)
fi

# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --do_train --do_eval \
  --datatype "$DATATYPE" --anno_path "$ANNO_PATH" --video_path "$VIDEO_PATH" \
  --base_encoder "$BASE_ENCODER" --output_dir "$OUTPUT_DIR" \
  --epochs "$EPOCHS" --batch_size "$BATCH_SIZE" --batch_size_val "$BATCH_SIZE_VAL" \
  --lr "$LR" --coef_lr "$COEF_LR" --max_words "$MAX_WORDS" --max_frames "$MAX_FRAMES" \
  --video_framerate "$VIDEO_FRAMERATE" --workers "$WORKERS" --seed "$SEED" $EXTRA_ARGS

echo "Metrics: $OUTPUT_DIR/eval_results.json"
cat "$OUTPUT_DIR/eval_results.json"
