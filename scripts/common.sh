# Settings shared by train.sh and eval.sh, sourced by both so that training and evaluation agree
# (frames, words, data). Every one can be overridden from the environment.
# With no overrides: the built-in default, i.e. the synthetic dataset and a tiny CLIP from scratch.

SYNTHETIC_DIR=${SYNTHETIC_DIR:-data/synthetic}
DATATYPE=${DATATYPE:-msrvtt}
ANNO_PATH=${ANNO_PATH:-$SYNTHETIC_DIR/anns}
VIDEO_PATH=${VIDEO_PATH:-$SYNTHETIC_DIR/videos}
BASE_ENCODER=${BASE_ENCODER:-scratch:tiny}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/synthetic_tiny}
NPROC=${NPROC:-1}
BATCH_SIZE_VAL=${BATCH_SIZE_VAL:-100}
MAX_WORDS=${MAX_WORDS:-32}
MAX_FRAMES=${MAX_FRAMES:-6}
VIDEO_FRAMERATE=${VIDEO_FRAMERATE:-1}
WORKERS=${WORKERS:-1}
LOSS=${LOSS:-softmax}   # the paper's sigmoid loss learns far slower at this size (README)
EXTRA_ARGS=${EXTRA_ARGS:-}
# One compute thread beside one loader worker is fastest on a 2-core CPU; torchrun sets 1 too.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# NPROC > 1 launches one process per device with torchrun.
if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC")
else
  LAUNCH=(python)
fi

# Flags of main.py that both scripts pass.
COMMON_FLAGS=(
  --datatype "$DATATYPE" --anno_path "$ANNO_PATH" --video_path "$VIDEO_PATH"
  --base_encoder "$BASE_ENCODER" --batch_size_val "$BATCH_SIZE_VAL"
  --max_words "$MAX_WORDS" --max_frames "$MAX_FRAMES" --video_framerate "$VIDEO_FRAMERATE"
  --workers "$WORKERS" --loss "$LOSS"
)
