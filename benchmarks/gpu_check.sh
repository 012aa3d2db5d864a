#!/usr/bin/env bash
# The GPU half in one call (at most ~8 minutes on an H100/H200): pytorch-cuda parity and speed at 128² and 256²,
# batch 1/8/64, and TensorRT where `import tensorrt` works. Uses the machine's own python3 (no venv, no network).
#   benchmarks/gpu_check.sh [OUT]        → OUT/gpu_report.json, OUT/gpu_report.md (default reports/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports/gpu}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader || true
shift || true
PYTHONPATH=. "$PY" -m benchmarks.gpu_check "$OUT" "$@"
