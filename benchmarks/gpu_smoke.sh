#!/usr/bin/env bash
# The whole TensorRT path in one command, for whoever has an NVIDIA GPU with TensorRT:
# export → FP16 / Q/DQ INT8 ONNX → engines (one per bucket) → parity → bench.
#   pip install -e ".[gpu,test]"   (TensorRT from NVIDIA's index: --extra-index-url https://pypi.nvidia.com)
#   benchmarks/gpu_smoke.sh [CHECKPOINT] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-amnet/default/amnet.safetensors}
OUT=${2:-reports/gpu_smoke}
BIN=${BIN:-.venv/bin}
# The project's venv first: it is where `pip install -e ".[gpu,test]"` put TensorRT.
$BIN/python -c "import tensorrt" 2>/dev/null || { echo "TensorRT is not importable from $BIN/python"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
for R in 128 256; do
  $BIN/amnet-deploy export "$CKPT" --output "$OUT/build" --batch 1,4 --resolution $R
  $BIN/amnet-deploy build "$OUT/build" --runtime tensorrt --precision fp16,int8 --batch 1,4 --resolution $R --output "$OUT/build"
  $BIN/amnet-deploy parity "$CKPT" --build "$OUT/build" --resolution $R --report "$OUT/parity_$R" --only tensorrt,onnxruntime-fp32
  $BIN/amnet-deploy bench "$CKPT" --build "$OUT/build" --resolution $R --report "$OUT/bench_$R" --only tensorrt
done
$BIN/python -m pytest tests/test_tensorrt.py -q -rs
echo "GPU smoke done → $OUT"
