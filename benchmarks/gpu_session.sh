#!/usr/bin/env bash
# One call on a lent GPU machine (../shared/GPU.md), in the order that file asks for:
#   1. the CUDA paths of the test suite (the widget's tests need napari, which is not there);
#   2. pre-training of both shipped models at once for $PRETRAIN_MIN minutes, "auto" steps (the
#      cosine schedule is fitted to the time), checkpoints into $OUT every minute so that a killed
#      call still returns weights, with a weights-only copy of each in $OUT/history;
#   3. the new weights against random initialisation at the fast preset (pretrain_gain.py);
#   4. fill speed: s / iteration at 512² and 2048², fp32 and bf16, peak GPU memory; planes / s on a stack.
# It reads .gpu-data/pretrain (the corpus, shrunk to a 256-px short side and re-saved as JPEG q95 so it
# fits the 64 MiB the call may carry) and .gpu-data/samples256.npz (pretrain_gain.py --export-samples).
# Dry run on a CPU: OUT=/tmp/gpu-out DEVICE=cpu PRETRAIN_MIN=0.3 QUICK=1 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
PRETRAIN_MIN=${PRETRAIN_MIN:-4.0}
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

stamp "1. tests"
if [ "$QUICK" = 1 ]; then TESTS=tests/test_cuda.py; else TESTS=tests; fi
timeout 75 $PY -m pytest -q -x -p no:cacheprovider --ignore=tests/test_widget.py $TESTS >>"$LOG" 2>&1
echo "pytest exit $?" | tee -a "$LOG"

stamp "2. pre-training, $PRETRAIN_MIN min"
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
(cd "$OUT" && tar cf history.tar history && rm -r history)

stamp "3. gain over random initialisation"
if [ "$QUICK" = 1 ]; then LIMIT=(--limit 1 --iterations 5); else LIMIT=(); fi
timeout 150 $PY benchmarks/pretrain_gain.py --samples .gpu-data/samples256.npz --device "$DEVICE" \
    --gray "$OUT/gray-pixel.pt" --rgb "$OUT/rgb-channel.pt" --out "$OUT/gain.json" "${LIMIT[@]}" >>"$LOG" 2>&1
echo "gain exit $?" | tee -a "$LOG"

stamp "4. speed"
if [ "$QUICK" = 1 ]; then SIZES=1x64x64; STACK=2x64x64; REP=(--repeats 3 --warmup 1); else
  SIZES=1x512x512,3x512x512,1x2048x2048; STACK=16x512x512; REP=(--repeats 40 --warmup 10); fi
timeout 60 $PY benchmarks/speed.py --device "$DEVICE" --sizes $SIZES --precisions fp32,bf16 "${REP[@]}" \
    --out "$OUT/speed.json" --md "$OUT/speed.md" >>"$LOG" 2>&1
echo "speed exit $?" | tee -a "$LOG"
timeout 45 $PY benchmarks/speed.py --device "$DEVICE" --sizes "" --precisions bf16 --stack $STACK \
    --out "$OUT/stack.json" >>"$LOG" 2>&1
echo "stack exit $?" | tee -a "$LOG"
stamp "done"
tail -n 40 "$LOG"
