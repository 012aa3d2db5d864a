#!/usr/bin/env bash
# The committed golden build that CI gates from a torch-free install (.ci/run):
# the shipped model's OpenVINO FP16 IR at 128², eight held-out inputs, and PyTorch FP32 reference outputs.
#   tests/data/golden/make.sh        (in the full .venv; rewrites models/, inputs.npz, reference.npz)
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-../../../.venv/bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf models
$BIN/amnet-deploy export --output "$tmp" --batch 1 --resolution 128 --no-parity --quiet
$BIN/amnet-deploy build "$tmp" --runtime openvino --precision fp16 --resolution 128 --output models --quiet
$BIN/python - <<'PY'
import numpy as np
from amnet.core.fileio import save_npz
from amnet.realdata import load_inputs

feeds = load_inputs("heldout", 128, 8)
save_npz("inputs.npz", {k: feeds[k] for k in ("source", "audio", "pose", "eye")}, compressed=True)
PY
$BIN/amnet-deploy infer ../../../amnet/default/amnet.safetensors --inputs inputs.npz --output reference.npz
rm -f models/.manifest.lock
