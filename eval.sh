#!/usr/bin/env bash
# Evaluate a checkpoint on the test split. The model (and the frames / words it was trained with) come
# from the checkpoint itself; the recipe gives the data, e.g.
#   DATASET=msrvtt INIT_MODEL=outputs/msrvtt_b32/best.pth bash eval.sh
DATASET=${DATASET:-synthetic}   # the recipe: configs/<DATASET>.sh
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

INIT_MODEL=${INIT_MODEL:-$OUTPUT_DIR/best.pth}
EVAL_DIR=${EVAL_DIR:-$OUTPUT_DIR/eval}

if [ ! -f "$INIT_MODEL" ]; then
  echo "eval.sh: checkpoint INIT_MODEL=$INIT_MODEL not found (run train.sh first, or set INIT_MODEL)" >&2
  exit 2
fi

# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --do_eval 1 --init_model "$INIT_MODEL" "${COMMON_FLAGS[@]}" \
  ${SAMPLING_FLAGS[@]+"${SAMPLING_FLAGS[@]}"} --output_dir "$EVAL_DIR" $EXTRA_ARGS

echo "Metrics: $EVAL_DIR/eval_results.json"
cat "$EVAL_DIR/eval_results.json"
