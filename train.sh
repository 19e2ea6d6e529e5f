#!/usr/bin/env bash
# Train (and then test the best checkpoint of) Video-ColBERT with a per-dataset recipe.
DATASET=${DATASET:-synthetic}   # the recipe: configs/<DATASET>.sh (README lists them)
# Any recipe value can be overridden from the environment, e.g.
#   DATASET=msrvtt ANNO_PATH=data/msrvtt/anns VIDEO_PATH=data/msrvtt/videos NPROC=4 bash train.sh
#   LOSS=sigmoid OUTPUT_DIR=outputs/demo_sigmoid EXTRA_ARGS="--branches frame" bash train.sh
# RESUME=1 continues the run in OUTPUT_DIR; OVERWRITE=1 replaces it.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
: "${RESUME:=0}"
: "${OVERWRITE:=0}"

if compgen -G "$OUTPUT_DIR/*.pth" > /dev/null && [ "$RESUME" = 0 ] && [ "$OVERWRITE" = 0 ]; then
  echo "train.sh: $OUTPUT_DIR already holds a run. Set RESUME=1 to continue it, OUTPUT_DIR=<new folder> for a new" \
       "run, or OVERWRITE=1 to delete it and start again." >&2
  exit 2
fi

if [ "$DATASET" = synthetic ] && [ ! -f "$ANNO_PATH/MSRVTT_data.json" ]; then
  echo "Generating the synthetic dataset in $SYNTHETIC_DIR ..."
  python -m tvr.dataloaders.synthetic --output_dir "$SYNTHETIC_DIR" --seed 0
fi

OPTIONAL=()
[ -n "${PRETRAINED:-}" ] && OPTIONAL+=(--pretrained "$PRETRAINED")
[ -n "${TOKENIZER:-}" ] && OPTIONAL+=(--tokenizer "$TOKENIZER")
[ -n "${LOSS_LR:-}" ] && OPTIONAL+=(--loss_lr "$LOSS_LR")

# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --do_train 1 --do_eval 1 "${COMMON_FLAGS[@]}" --output_dir "$OUTPUT_DIR" \
  --max_words "$MAX_WORDS" --query_expansion "$QUERY_EXPANSION" --max_frames "$MAX_FRAMES" --video_framerate "$VIDEO_FRAMERATE" --base_encoder "$BASE_ENCODER" --loss "$LOSS" --epochs "$EPOCHS" --batch_size "$BATCH_SIZE" \
  --lr "$LR" --coef_lr "$COEF_LR" --seed "$SEED" --resume "$RESUME" --overwrite "$OVERWRITE" \
  --cache_frames "${CACHE_FRAMES:-0}" \
  ${OPTIONAL[@]+"${OPTIONAL[@]}"} $EXTRA_ARGS

echo "Metrics: $OUTPUT_DIR/eval_results.json"
cat "$OUTPUT_DIR/eval_results.json"
