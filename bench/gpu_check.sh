#!/usr/bin/env bash
# One command on a GPU machine: the GPU-only tests, fp16/bf16 autocast against fp32, 1-GPU and
# all-GPU training runs of the synthetic recipe at the ViT-B/32 shape (samples/s and peak memory,
# with and without --grad_checkpointing), the scoring / evaluation benchmarks on CUDA, and a search
# index built on all GPUs; all gathered into one JSON file.
#
#   bash bench/gpu_check.sh [OUT_DIR]          # default outputs/gpu_check; result OUT_DIR/gpu_check.json
#
# Environment (defaults in brackets): NGPU [all visible], NUM_TRAIN [1024 synthetic training videos,
# 3 captions each], NUM_TEST [200], BATCH_SIZE [128, global], MAX_FRAMES [12], PRECISION [fp16, the
# training runs' autocast], WORKERS [8 per process], ENCODER [scratch:ViT-B/32], SIM_NT [1000 texts]
# and SIM_NV [1000,10000,20000 videos] for the scoring benchmark, EVAL_SIZES
# [1000x1000,10000x1000,10000x10000 queries x videos], STEP_TIMEOUT [900 s per step], PYTEST_PATHS
# [tests; pytest's arguments for the GPU-only tests, e.g. "tests --ignore=tests/test_video_reader.py"
# where the test-only PyAV is not installed], SKIP [steps to skip, space-separated: pytest train
# autocast similarity eval search].
# DEVICE [cuda]: DEVICE=cpu is a dry run on a machine without a GPU (every step on the CPU, where
# autocast is off): it checks the script end to end, with small sizes, before GPU time is spent.
# A failing step is recorded (its exit status and the tail of its output) and the next one runs;
# the script exits non-zero if any step failed. Without CUDA (and without DEVICE=cpu) it stops at
# once with a message.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-outputs/gpu_check}
PARTS="$OUT_DIR/parts"
NUM_TRAIN=${NUM_TRAIN:-1024}
NUM_TEST=${NUM_TEST:-200}
BATCH_SIZE=${BATCH_SIZE:-128}
MAX_FRAMES=${MAX_FRAMES:-12}
PRECISION=${PRECISION:-fp16}
WORKERS=${WORKERS:-8}
ENCODER=${ENCODER:-scratch:ViT-B/32}
SIM_NT=${SIM_NT:-1000}
SIM_NV=${SIM_NV:-1000,10000,20000}
EVAL_SIZES=${EVAL_SIZES:-1000x1000,10000x1000,10000x10000}
DEVICE=${DEVICE:-cuda}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
PYTEST_PATHS=${PYTEST_PATHS:-tests}
SKIP=${SKIP:-}
PY=${PYTHON:-python}

if [ "$DEVICE" = cpu ]; then
  DEVICES='{"dry_run": "DEVICE=cpu: every step on the CPU"}'
  NGPU=${NGPU:-1}
elif DEVICES=$("$PY" bench/gpu_check.py require-cuda); then
  NGPU=${NGPU:-$("$PY" -c "import torch; print(torch.cuda.device_count())")}
else
  echo "gpu_check.sh: stopping: this check needs a CUDA GPU (DEVICE=cpu runs it as a dry run)." >&2
  exit 2
fi
# An earlier result in OUT_DIR is kept under its time stamp, so that its parts do not mix with these.
if [ -e "$OUT_DIR/gpu_check.json" ] || [ -e "$PARTS" ]; then
  STAMP=$(date +%Y%m%d-%H%M%S)
  [ -e "$PARTS" ] && mv "$PARTS" "$PARTS.$STAMP"
  [ -e "$OUT_DIR/gpu_check.json" ] && mv "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_check.$STAMP.json"
  echo "gpu_check: the earlier result in $OUT_DIR is kept with the suffix .$STAMP"
fi
mkdir -p "$PARTS"
echo "$DEVICES" > "$PARTS/devices.json"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
FAILED=()

skipped() { [[ " $SKIP " == *" $1 "* ]]; }

# step NAME CMD...: run CMD with a timeout; output to PARTS/NAME.txt, status to PARTS/status_NAME.json.
step() {
  local name=$1; shift
  local start end rc
  echo "gpu_check: $name: $*"
  start=$(date +%s)
  timeout "$STEP_TIMEOUT" "$@" > "$PARTS/$name.txt" 2>&1
  rc=$?
  end=$(date +%s)
  printf '{"rc": %d, "seconds": %d, "command": "%s"}\n' "$rc" "$((end - start))" "$(echo "$*" | sed 's/"/\\"/g')" \
    > "$PARTS/status_$name.json"
  if [ "$rc" -ne 0 ]; then
    echo "gpu_check: $name FAILED (exit $rc); last lines of $PARTS/$name.txt:" >&2
    tail -n 15 "$PARTS/$name.txt" >&2
    FAILED+=("$name")
  fi
  return "$rc"
}

# 1. GPU-only tests.
# shellcheck disable=SC2086  # PYTEST_PATHS is a list of words on purpose
skipped pytest || step pytest_gpu "$PY" -m pytest -q -m gpu -rs $PYTEST_PATHS

# 2. Training runs of the synthetic recipe at the ViT-B/32 shape (random init: the numbers are speed
#    and memory, not accuracy).
DATA="$OUT_DIR/data/${NUM_TRAIN}_train_${NUM_TEST}_test"  # generated once per size, then reused
if ! skipped train || ! skipped autocast; then
  if [ ! -f "$DATA/anns/MSRVTT_data.json" ]; then
    step synthetic_data "$PY" -m tvr.dataloaders.synthetic --output_dir "$DATA" --num_train "$NUM_TRAIN" --num_test "$NUM_TEST"
  fi
fi
train_run() {  # LABEL NPROC GRAD_CHECKPOINTING
  local label=$1 nproc=$2 gc=$3 run="$OUT_DIR/runs/$1"
  rm -rf "$run"  # this script's own scratch run: a failed run must not leave an earlier best.pth to test
  step "run_$label" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$nproc" main.py \
    --do_train 1 --do_eval 1 --anno_path "$DATA/anns" --video_path "$DATA/videos" \
    --base_encoder "$ENCODER" --output_dir "$run" --epochs 1 --batch_size "$BATCH_SIZE" \
    --batch_size_val "$BATCH_SIZE" --max_frames "$MAX_FRAMES" --max_words 32 --video_framerate 2 \
    --lr 1e-4 --coef_lr 1 --precision "$PRECISION" --workers "$WORKERS" --n_display 2 \
    --grad_checkpointing "$gc" \
  && step "train_$label" "$PY" bench/gpu_check.py train-log --log "$run/log.txt" --label "$label" \
       --json "$PARTS/train_$label.json"
}
if ! skipped train; then
  train_run 1gpu 1 0
  train_run 1gpu_gradckpt 1 1
  if [ "$NGPU" -gt 1 ]; then
    train_run "${NGPU}gpu" "$NGPU" 0
    train_run "${NGPU}gpu_gradckpt" "$NGPU" 1
  else
    echo '{"note": "one GPU visible: the all-GPU runs are the 1-GPU runs"}' > "$PARTS/train_allgpu.json"
  fi
fi

# 3. Autocast: the 1-GPU run's checkpoint evaluated in fp32, fp16 and bf16.
if ! skipped autocast; then
  if [ -f "$OUT_DIR/runs/1gpu/best.pth" ]; then
    step autocast "$PY" bench/gpu_check.py autocast --checkpoint "$OUT_DIR/runs/1gpu/best.pth" \
      --device "$DEVICE" --workers "$WORKERS" --json "$PARTS/autocast.json"
  else
    echo "gpu_check: autocast skipped: no $OUT_DIR/runs/1gpu/best.pth (the training step did not run or failed)" >&2
    FAILED+=("autocast")
  fi
fi

# 4. Scoring against a bare matmul, and evaluation at scale, on CUDA.
if ! skipped similarity; then
  step similarity "$PY" bench/bench_similarity.py --device "$DEVICE" --nt "$SIM_NT" --nv "$SIM_NV" --repeats 5 \
    --json "$PARTS/similarity_fp32.json"
  step similarity_bf16 "$PY" bench/bench_similarity.py --device "$DEVICE" --dtype bfloat16 --nt "$SIM_NT" \
    --nv "$SIM_NV" --repeats 5 --json "$PARTS/similarity_bf16.json"
fi
if ! skipped eval; then
  step eval_tokens "$PY" bench/bench_eval.py tokens --sizes "$EVAL_SIZES" --json "$PARTS/eval_tokens.json"
fi

# 5. Search over one's own videos: the 1-GPU run's model indexes the synthetic videos on all GPUs
#    (each process encodes its share), then one query is answered on the GPU.
if ! skipped search; then
  if [ -f "$OUT_DIR/runs/1gpu/best.pth" ]; then
    rm -rf "$OUT_DIR/runs/index"  # this script's own scratch index, rebuilt from this run's model
    step search_index "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU" -m tvr.search index \
      --checkpoint "$OUT_DIR/runs/1gpu/best.pth" --videos "$DATA/videos" --out "$OUT_DIR/runs/index" \
      --device "$DEVICE" --workers "$WORKERS" \
    && step search_query "$PY" -m tvr.search query --index "$OUT_DIR/runs/index" --device "$DEVICE" --json --top 3 \
      "a red circle moves left then a blue square moves up"
  else
    echo "gpu_check: search skipped: no $OUT_DIR/runs/1gpu/best.pth (the training step did not run or failed)" >&2
    FAILED+=("search")
  fi
fi

"$PY" bench/gpu_check.py collect --parts "$PARTS" --json "$OUT_DIR/gpu_check.json"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_check: failed steps: ${FAILED[*]} (details in $OUT_DIR/gpu_check.json)" >&2
  exit 1
fi
echo "gpu_check: all steps passed"
