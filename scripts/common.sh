# Shared by train.sh and eval.sh: load the recipe named by DATASET (configs/$DATASET.sh), let the
# environment override any of its values, and build the launcher and the flags both scripts pass.
# Sampling settings given in the environment (not by the recipe), for eval.sh.
SAMPLING_FLAGS=()
[ -n "${MAX_WORDS:-}" ] && SAMPLING_FLAGS+=(--max_words "$MAX_WORDS")
[ -n "${MAX_FRAMES:-}" ] && SAMPLING_FLAGS+=(--max_frames "$MAX_FRAMES")
[ -n "${VIDEO_FRAMERATE:-}" ] && SAMPLING_FLAGS+=(--video_framerate "$VIDEO_FRAMERATE")

RECIPE="configs/${DATASET}.sh"
if [ ! -f "$RECIPE" ]; then
  echo "DATASET=$DATASET: no recipe $RECIPE; available: $(cd configs && ls *.sh | sed 's/\.sh$//' | tr '\n' ' ')" >&2
  exit 2
fi
# shellcheck source=/dev/null
source "$RECIPE"

: "${NPROC:=1}"
: "${SEED:=42}"
: "${TRAIN_LIST:=9k}"
: "${EXTRA_ARGS:=}"
: "${QUERY_EXPANSION:=1}"  # padded query positions count as query tokens (main.py's default)
# One compute thread per process beside the loader workers is fastest on a small CPU; torchrun sets 1 too.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# NPROC > 1 launches one process per device with torchrun.
if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC")
else
  LAUNCH=(python)
fi

# Flags of main.py that both scripts pass. Frames, words and frame rate are train.sh's alone: eval.sh
# takes them from the checkpoint unless they are set in the environment.
COMMON_FLAGS=(
  --datatype "$DATATYPE" --anno_path "$ANNO_PATH" --video_path "$VIDEO_PATH" --train_list "$TRAIN_LIST"
  --batch_size_val "$BATCH_SIZE_VAL" --workers "$WORKERS"
)
