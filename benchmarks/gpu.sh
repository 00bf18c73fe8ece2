#!/usr/bin/env bash
# The one prepared script for the GPU machine lent through the `device` tool (H200: Python 3.12, jax 0.11, flax,
# optax, chex; no TensorFlow / tensorflow-datasets, no network, 64 MiB carried per call). It needs only this
# repository and the Fashion-MNIST IDX files. It times DM's step, a DC outer iteration and the evaluation of 20
# networks in one program with their model-FLOP utilisation (benchmarks/bench_speed.py rows dm256, dc10, eval20;
# SPEED_SECONDS, default 240, 0 to skip), then runs one chunk of the paper protocol (experiments.full).
#
# Here, once:
#   mkdir -p .idx && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .idx/ && echo /.idx/ >> .git/info/exclude
#   echo /.full-state/ >> .git/info/exclude
# Then: device run, carry [".idx"] (plus ".full-state" to continue an earlier chunk), command
#   bash benchmarks/gpu.sh
# with timeout_s ~ BUDGET + SPEED_SECONDS + 120. Back under $OUT: device.txt, speed/ (speed.json, README.md),
# full_table.md, full_status.json and full_state.tgz (the
# run state without the expert buffer, which is GBs: `mkdir -p .full-state && tar xzf full_state.tgz -C .full-state`
# here, and carry .full-state next time to continue; MTT's buffer is rebuilt, resumably, within a lease).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export JAXDISTILL_DATA_BACKEND=idx JAXDISTILL_IDX_DIR="${JAXDISTILL_IDX_DIR:-$PWD/.idx}" PYTHONUNBUFFERED=1
export JAXDISTILL_PROGRESS=0 TF_CPP_MIN_LOG_LEVEL=3
PY=${PYTHON:-python3}
FULL=${FULL_DIR:-.full-state/full}
BUDGET=${BUDGET:-420}
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$OUT/device.txt"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) >> "$OUT/device.txt"
SPEED_SECONDS=${SPEED_SECONDS:-240}
if [ "$SPEED_SECONDS" -gt 0 ]; then
  timeout "$SPEED_SECONDS" "$PY" -m benchmarks.run --only speed --methods dm256,dc10,eval20 --out "$OUT/speed" \
    || echo "speed rows stopped after ${SPEED_SECONDS} s (rows finished so far are in $OUT/speed)"
fi
"$PY" -m experiments.full --out "$FULL" --budget-seconds "$BUDGET" --quiet ${FULL_ARGS:-}
cp "$FULL/table.md" "$OUT/full_table.md"
cp "$FULL/status.json" "$OUT/full_status.json"
tar czf "$OUT/full_state.tgz" --exclude=buffer -C "$(dirname "$FULL")" "$(basename "$FULL")"
