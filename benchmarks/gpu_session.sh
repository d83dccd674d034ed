#!/usr/bin/env bash
# One call on a lent GPU machine (../shared/GPU.md), in the order that file asks for:
#   1. pre-training of the gray model for $PRETRAIN_MIN minutes with the default network, alone on the GPU,
#      warm-started (--init) from $INIT when that file exists (default: the shipped gray weights, which travel
#      with the checkout; session 6 started from session 5's run in .gpu-data/init), "auto" steps (the
#      cosine schedule is fitted to the time), checkpoints into $OUT every minute so that a killed call still
#      returns weights, with a weights-only copy of each in history.tar. Alongside it (its timing does not
#      matter, only PSNR): bf16 against fp32 fills on scikit-image's pictures (benchmarks/gpu_precision.py);
#   2. fill speed at 512²: where an eager step's GPU time goes (profiler, by kernel), then the CUDA graph with
#      and without torch.compile inside it, fp32 and bf16 (benchmarks/gpu_fill_paths.py);
#   3. planes / s on a 32x512x512 stack at the default settings, planes reusing one network and each alone;
#   4. the CUDA paths of the test suite (tests/test_cuda.py), when TESTS=1.
# With RGB_MIN > 0, step 1 also pre-trains a colour model (per-channel masks, the gray ratios) for RGB_MIN minutes,
# warm-started from $INIT spread over the three channels (Checkpoint.as_colour: the colour start the fill uses since
# session 7), sharing the GPU with the gray run. Judge it with benchmarks/color_study.py against the inflated
# gray weights (the default colour start) before shipping it as rgb-channel.pt.
# The new weights are judged afterwards on the CPU (benchmarks/prior_fill.py): the data to judge them on does
# not travel. It reads .gpu-data/pretrain: the corpus, shrunk to a 256-px short side and re-saved as JPEG q95
# so that it fits the 64 MiB a call may carry.
# Dry run on a CPU: OUT=/tmp/gpu-out DEVICE=cpu PRETRAIN_MIN=0.3 QUICK=1 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
PRETRAIN_MIN=${PRETRAIN_MIN:-5.5}
INIT=${INIT:-src/napari_mpi/weights/gray-pixel.pt}
QUICK=${QUICK:-0}
RGB_MIN=${RGB_MIN:-0}
TESTS=${TESTS:-0}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LOG=$OUT/session.log
stamp() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

stamp "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc; } >>"$LOG" 2>&1

stamp "1. pre-training, $PRETRAIN_MIN min; bf16 vs fp32 fills alongside"
if [ "$QUICK" = 1 ]; then BATCH=4; CROP=64; SIZE=64; ITS=(--iterations 5); else BATCH=64; CROP=128; SIZE=512; ITS=(); fi
init=(); [ -f "$INIT" ] && init=(--init "$INIT")
$PY -m napari_mpi.cli pretrain --images .gpu-data/pretrain --short-side 256 --crop $CROP --batch $BATCH --steps auto \
    --precision bf16 --max-minutes "$PRETRAIN_MIN" --checkpoint-minutes 1.0 --history "$OUT/history" --device "$DEVICE" \
    --channels 1 --mask-ratio 0.15-0.6 --seed 3 "${init[@]}" --out "$OUT/gray-pixel.pt" >"$OUT/gray.log" 2>&1 &
gray=$!
rgb=
if [ "$RGB_MIN" != 0 ]; then
  $PY -m napari_mpi.cli pretrain --images .gpu-data/pretrain --short-side 256 --crop $CROP --batch $BATCH --steps auto \
      --precision bf16 --max-minutes "$RGB_MIN" --checkpoint-minutes 1.0 --device "$DEVICE" \
      --channels 3 --mask-mode channel --mask-ratio 0.15-0.6 --seed 4 "${init[@]}" --out "$OUT/rgb-channel.pt" \
      >"$OUT/rgb.log" 2>&1 &
  rgb=$!
fi
timeout -k 5 200 $PY benchmarks/gpu_precision.py --device "$DEVICE" --size $SIZE "${ITS[@]}" \
    --out "$OUT/precision.json" >"$OUT/precision.log" 2>&1
echo "precision exit $?" | tee -a "$LOG"
wait $gray; echo "gray exit $?" | tee -a "$LOG"
if [ -n "$rgb" ]; then
  wait $rgb; echo "rgb exit $?" | tee -a "$LOG"
  { echo "--- rgb.log (tail)"; tail -c 1500 "$OUT/rgb.log"; echo; } >>"$LOG"; rm -f "$OUT/rgb.log"
fi
{ echo "--- gray.log (tail)"; tail -c 1500 "$OUT/gray.log"; echo; cat "$OUT/precision.log"; } >>"$LOG"
rm -f "$OUT/gray.log"
(cd "$OUT" && tar cf history.tar history && rm -r history && ls -l >>"$LOG")

stamp "2. fill paths at 512²"
if [ "$QUICK" = 1 ]; then PATHS=(--sizes 64 --iters 20); else PATHS=(--sizes 512 --iters 200); fi
timeout -k 5 130 $PY benchmarks/gpu_fill_paths.py --device "$DEVICE" "${PATHS[@]}" --profile --precisions fp32,bf16 \
    --variants graph,graph-compile >"$OUT/paths.log" 2>&1
echo "paths exit $?" | tee -a "$LOG"

stamp "3. stack"
if [ "$QUICK" = 1 ]; then STACK=2x64x64; else STACK=32x512x512; fi
timeout -k 5 80 $PY benchmarks/speed.py --device "$DEVICE" --sizes "" --precisions fp32 --stack $STACK \
    --stack-reuse on,off --out "$OUT/stack.json" --md "$OUT/stack.md" >>"$LOG" 2>&1
echo "stack exit $?" | tee -a "$LOG"

if [ "$TESTS" = 1 ]; then
  stamp "4. CUDA tests"
  timeout -k 5 60 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >>"$LOG" 2>&1
  echo "pytest exit $?" | tee -a "$LOG"
fi
stamp "done"
tail -n 30 "$LOG"; grep -E "^\||warm-up|profile" "$OUT/paths.log"
