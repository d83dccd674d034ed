#!/usr/bin/env bash
# One call on a lent GPU machine (../shared/GPU.md), in the order that file asks for:
#   1. pre-training of both shipped models at once for $PRETRAIN_MIN minutes with the default network,
#      "auto" steps (the cosine schedule is fitted to the time), checkpoints into $OUT every minute so that
#      a killed call still returns weights, with a weights-only copy of each in history.tar;
#   2. fill speed: s / iteration at 512² and 2048², fp32 and bf16, with and without the CUDA graph, peak GPU
#      memory; planes / s on a 32x512x512 stack, each plane alone and reusing one network;
#   3. the CUDA paths of the test suite (tests/test_cuda.py; the widget's tests need napari, not there).
# The new weights are judged afterwards on the CPU (benchmarks/prior_fill.py, pretrain_gain.py): the data
# to judge them on does not travel. It reads .gpu-data/pretrain: the corpus, shrunk to a 256-px short side
# and re-saved as JPEG q95 so that it fits the 64 MiB a call may carry.
# Dry run on a CPU: OUT=/tmp/gpu-out DEVICE=cpu PRETRAIN_MIN=0.3 QUICK=1 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
PRETRAIN_MIN=${PRETRAIN_MIN:-5.0}
QUICK=${QUICK:-0}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
LOG=$OUT/session.log
stamp() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }

stamp "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc; } >>"$LOG" 2>&1

stamp "1. pre-training, $PRETRAIN_MIN min"
if [ "$QUICK" = 1 ]; then BATCH=4; CROP=64; else BATCH=64; CROP=128; fi
common=(--images .gpu-data/pretrain --short-side 256 --crop $CROP --batch $BATCH --steps auto --precision bf16
        --max-minutes "$PRETRAIN_MIN" --checkpoint-minutes 1.0 --history "$OUT/history" --device "$DEVICE")
$PY -m napari_mpi.cli pretrain "${common[@]}" --channels 1 --mask-ratio 0.15-0.6 --seed 1 \
    --out "$OUT/gray-pixel.pt" >"$OUT/gray.log" 2>&1 &
gray=$!
$PY -m napari_mpi.cli pretrain "${common[@]}" --channels 3 --mask-ratio 0.3 --seed 2 \
    --out "$OUT/rgb-channel.pt" >"$OUT/rgb.log" 2>&1 &
rgb=$!
wait $gray; echo "gray exit $?" | tee -a "$LOG"
wait $rgb; echo "rgb exit $?" | tee -a "$LOG"
for f in gray rgb; do echo "--- $f.log (tail)"; tail -c 1500 "$OUT/$f.log"; echo; done >>"$LOG"
rm -f "$OUT/gray.log" "$OUT/rgb.log"
(cd "$OUT" && tar cf history.tar history && rm -r history && ls -l >>"$LOG")

stamp "2. speed"
if [ "$QUICK" = 1 ]; then SIZES=1x64x64; STACK=2x64x64; REP=(--repeats 3 --warmup 1); STACK_IT=5; else
  SIZES=1x512x512,1x2048x2048; STACK=16x512x512; REP=(--repeats 40 --warmup 10); STACK_IT=100; fi
timeout -k 5 90 $PY benchmarks/speed.py --device "$DEVICE" --sizes $SIZES --precisions fp32,bf16 --cuda-graphs on,off \
    "${REP[@]}" --out "$OUT/speed.json" --md "$OUT/speed.md" >>"$LOG" 2>&1
echo "speed exit $?" | tee -a "$LOG"
timeout -k 5 100 $PY benchmarks/speed.py --device "$DEVICE" --sizes "" --precisions fp32 --stack $STACK \
    --stack-iterations $STACK_IT --stack-reuse on,off --out "$OUT/stack.json" >>"$LOG" 2>&1
echo "stack exit $?" | tee -a "$LOG"

stamp "3. CUDA tests"
timeout -k 5 75 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py >>"$LOG" 2>&1
echo "pytest exit $?" | tee -a "$LOG"
stamp "done"
tail -n 45 "$LOG"
