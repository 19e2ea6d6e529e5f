#!/usr/bin/env bash
# Evaluate a checkpoint on the test split. INIT_MODEL is the checkpoint (default: the best one of
# the built-in default run); the other settings are train.sh's and are overridden the same way.
set -euo pipefail
cd "$(dirname "$0")"

SYNTHETIC_DIR=${SYNTHETIC_DIR:-data/synthetic}
DATATYPE=${DATATYPE:-msrvtt}
ANNO_PATH=${ANNO_PATH:-$SYNTHETIC_DIR/anns}
VIDEO_PATH=${VIDEO_PATH:-$SYNTHETIC_DIR/videos}
BASE_ENCODER=${BASE_ENCODER:-scratch:tiny}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/synthetic_tiny}
INIT_MODEL=${INIT_MODEL:-$OUTPUT_DIR/best.pth}
EVAL_DIR=${EVAL_DIR:-$OUTPUT_DIR/eval}
NPROC=${NPROC:-1}
BATCH_SIZE_VAL=${BATCH_SIZE_VAL:-64}
MAX_WORDS=${MAX_WORDS:-32}
MAX_FRAMES=${MAX_FRAMES:-8}
VIDEO_FRAMERATE=${VIDEO_FRAMERATE:-2}
WORKERS=${WORKERS:-2}
EXTRA_ARGS=${EXTRA_ARGS:-}

if [ ! -f "$INIT_MODEL" ]; then
  echo "eval.sh: checkpoint INIT_MODEL=$INIT_MODEL not found (run train.sh first, or set INIT_MODEL)" >&2
  exit 2
fi

if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC")
else
  LAUNCH=(python)
fi

# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --do_eval --init_model "$INIT_MODEL" \
  --datatype "$DATATYPE" --anno_path "$ANNO_PATH" --video_path "$VIDEO_PATH" \
  --base_encoder "$BASE_ENCODER" --output_dir "$EVAL_DIR" \
  --batch_size_val "$BATCH_SIZE_VAL" --max_words "$MAX_WORDS" --max_frames "$MAX_FRAMES" \
  --video_framerate "$VIDEO_FRAMERATE" --workers "$WORKERS" $EXTRA_ARGS

echo "Metrics: $EVAL_DIR/eval_results.json"
cat "$EVAL_DIR/eval_results.json"
