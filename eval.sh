#!/usr/bin/env bash
# Evaluate a checkpoint on the test split. INIT_MODEL is the checkpoint (default: the best one of
# the run in OUTPUT_DIR); data and model settings come from scripts/common.sh, overridden from the
# environment as for train.sh, e.g.  INIT_MODEL=outputs/msrvtt_b32/best.pth BASE_ENCODER=ViT-B/32 ... bash eval.sh
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
"${LAUNCH[@]}" main.py --do_eval --init_model "$INIT_MODEL" "${COMMON_FLAGS[@]}" \
  --output_dir "$EVAL_DIR" $EXTRA_ARGS

echo "Metrics: $EVAL_DIR/eval_results.json"
cat "$EVAL_DIR/eval_results.json"
