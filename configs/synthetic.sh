# The built-in demo: synthetic videos (generated on first use) and a tiny CLIP trained from scratch on a CPU.
: "${SYNTHETIC_DIR:=data/synthetic}"
: "${DATATYPE:=msrvtt}"
: "${ANNO_PATH:=$SYNTHETIC_DIR/anns}"
: "${VIDEO_PATH:=$SYNTHETIC_DIR/videos}"
: "${BASE_ENCODER:=scratch:tiny}"
: "${OUTPUT_DIR:=outputs/synthetic_tiny}"
: "${EPOCHS:=8}"
: "${BATCH_SIZE:=64}"
: "${BATCH_SIZE_VAL:=100}"
: "${LR:=1e-3}"
: "${COEF_LR:=1.0}"   # a from-scratch encoder learns at the full rate
: "${LOSS:=softmax}"
: "${MAX_WORDS:=32}"
: "${MAX_FRAMES:=6}"
: "${VIDEO_FRAMERATE:=1}"
: "${WORKERS:=1}"
: "${CACHE_FRAMES:=1}"  # decode each tiny video once per run, not once per epoch (same metrics)
