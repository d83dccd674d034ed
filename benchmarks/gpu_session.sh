#!/usr/bin/env bash
# The one prepared call for a lent GPU machine (../shared/GPU.md), run from the repository root, in this order:
#   1. pre-training with the napari-mpi pretrain CLI: the gray model (per-pixel masks, mask ratios $RATIOS) for
#      $PRETRAIN_MIN minutes, alone on the GPU, warm-started (--init) from $INIT when that file exists (default:
#      the shipped gray weights, which travel with the checkout), "auto" steps (the cosine schedule is fitted to
#      the time), a checkpoint into $OUT every minute so that a killed call still returns weights, and a
#      weights-only copy of each in history.tar (for benchmarks/pretrain_gain.py --history). With RGB_MIN > 0 a
#      colour model (per-channel masks) trains alongside for RGB_MIN minutes, warm-started from the same file.
#      With SMALL_MIN > 0 a fresh gray network of SMALL_WIDTH channels (default 24, about 3x faster a fill step on
#      a CPU in fp32) trains alongside from a random start for SMALL_MIN minutes: gray-pixel-w$SMALL_WIDTH.pt, to be
#      judged against the shipped weights on every benchmark set (docs/decisions.md, the fp32 path).
#   2. seconds per fill iteration at 1x512x512 and 1x2048x2048, fp32 and bf16, with and without the CUDA graph
#      (benchmarks/speed.py --cuda-graphs on,off): speed.json;
#   3. planes / s on a 32x512x512 stack at the default settings, planes alone and reusing one network: stack.json;
#   4. the CUDA paths of the test suite (pytest tests/test_cuda.py; TESTS=0 skips them).
# Pre-training reads $IMAGES (default .gpu-data/pretrain, a folder that .git/info/exclude ignores and the call
# carries): the corpus shrunk to a 256-px short side and re-saved as JPEG q95, so that it fits the 64 MiB a call
# may carry. New weights are judged afterwards where the data is (pretrain_gain.py, quality.py --weights).
# The GPU machine has no network and napari-mpi is not installed there: when the package does not import, the
# checkout's src/ goes on PYTHONPATH. $OUT keeps at most 7 files (what a call brings back).
# Dry run on a CPU: OUT=/tmp/gpu-out DEVICE=cpu PRETRAIN_MIN=0.3 QUICK=1 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
PRETRAIN_MIN=${PRETRAIN_MIN:-5.5}
RGB_MIN=${RGB_MIN:-0}
SMALL_MIN=${SMALL_MIN:-0}
SMALL_WIDTH=${SMALL_WIDTH:-24}
RATIOS=${RATIOS:-0.15-0.6}
INIT=${INIT:-src/napari_mpi/weights/gray-pixel.pt}
IMAGES=${IMAGES:-.gpu-data/pretrain}
QUICK=${QUICK:-0}
TESTS=${TESTS:-1}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
$PY -c "import napari_mpi" 2>/dev/null || export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
LOG=$OUT/session.log
stamp() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

stamp "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc; } >>"$LOG" 2>&1

if [ "$QUICK" = 1 ]; then
  BATCH=4; CROP=64; SIZES=1x64x64,1x128x128; REPEATS=(--repeats 2 --warmup 1); STACK=(2x64x64 --stack-iterations 3)
else
  BATCH=64; CROP=128; SIZES=1x512x512,1x2048x2048; REPEATS=(--repeats 20 --warmup 5); STACK=(32x512x512)
fi
init=(); [ -f "$INIT" ] && init=(--init "$INIT")
pretrain() {  # pretrain MINUTES CHANNELS OUTPUT [more options]
  local minutes=$1 channels=$2 output=$3; shift 3
  $PY -m napari_mpi.cli pretrain --images "$IMAGES" --short-side 256 --crop $CROP --batch $BATCH --steps auto \
      --precision bf16 --max-minutes "$minutes" --checkpoint-minutes 1.0 --device "$DEVICE" --channels "$channels" \
      --mask-ratio "$RATIOS" --out "$output" "$@"
}

stamp "1. pre-training, gray $PRETRAIN_MIN min, colour $RGB_MIN min, $SMALL_WIDTH-channel gray $SMALL_MIN min"
small=
if [ "$SMALL_MIN" != 0 ]; then
  pretrain "$SMALL_MIN" 1 "$OUT/gray-pixel-w$SMALL_WIDTH.pt" --seed 5 --width "$SMALL_WIDTH" >"$OUT/small.log" 2>&1 &
  small=$!
fi
pretrain "$PRETRAIN_MIN" 1 "$OUT/gray-pixel.pt" "${init[@]}" --seed 3 --history "$OUT/history" >"$OUT/gray.log" 2>&1 &
gray=$!
rgb=
if [ "$RGB_MIN" != 0 ]; then
  pretrain "$RGB_MIN" 3 "$OUT/rgb-channel.pt" "${init[@]}" --seed 4 --mask-mode channel >"$OUT/rgb.log" 2>&1 &
  rgb=$!
fi
wait $gray; echo "gray exit $?" | tee -a "$LOG"
{ echo "--- gray.log (tail)"; tail -c 1500 "$OUT/gray.log"; echo; } >>"$LOG"; rm -f "$OUT/gray.log"
if [ -n "$rgb" ]; then
  wait $rgb; echo "rgb exit $?" | tee -a "$LOG"
  { echo "--- rgb.log (tail)"; tail -c 1500 "$OUT/rgb.log"; echo; } >>"$LOG"; rm -f "$OUT/rgb.log"
fi
if [ -n "$small" ]; then
  wait $small; echo "small exit $?" | tee -a "$LOG"
  { echo "--- small.log (tail)"; tail -c 1500 "$OUT/small.log"; echo; } >>"$LOG"; rm -f "$OUT/small.log"
fi
[ -d "$OUT/history" ] && (cd "$OUT" && tar cf history.tar history && rm -r history)
ls -l "$OUT" >>"$LOG"

stamp "2. seconds per fill iteration, CUDA graph on and off"
timeout -k 5 75 $PY benchmarks/speed.py --device "$DEVICE" --sizes $SIZES --precisions fp32,bf16 "${REPEATS[@]}" \
    --cuda-graphs on,off --out "$OUT/speed.json" >>"$LOG" 2>&1
echo "speed exit $?" | tee -a "$LOG"

stamp "3. stack ${STACK[0]}, planes alone and reusing one network"
timeout -k 5 80 $PY benchmarks/speed.py --device "$DEVICE" --sizes "" --precisions fp32 --stack "${STACK[@]}" \
    --stack-reuse off,auto,on --out "$OUT/stack.json" >>"$LOG" 2>&1
echo "stack exit $?" | tee -a "$LOG"

if [ "$TESTS" = 1 ]; then
  stamp "4. CUDA tests"
  timeout -k 5 60 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >>"$LOG" 2>&1
  echo "pytest exit $?" | tee -a "$LOG"
fi
stamp "done"
tail -n 40 "$LOG"
