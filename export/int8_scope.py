"""What stays float in every INT8 variant (OpenVINO via NNCF, and the Q/DQ ONNX for TensorRT), and why.

One rule, measured on the trained model at 256² (held-out faces, INT8 vs FP32,
one layer in INT8 at a time): the layers that suffer are the ones whose input
is a GC output. GC scales every channel by a weight predicted per sample
(across channels these span ~200:1 for the same sample), and one per-tensor
INT8 scale cannot hold that: such a conv alone in INT8 costs 40–51 dB PSNR,
while any other conv alone stays at 50–60 dB. The same holds for the residual
Add that sums a GC output, and for InstanceNorm (MVN) inputs, whose per-channel
offsets a per-tensor scale flattens: quantizing those as well took the whole
model from 41 to 29 dB.

So float: the GC convs and their weight/bias MLPs (their "weights" are
activations), the fuser (tiny, and it drives every GC), the convs that read a
GC output (the first conv of cells 1–8 and the first decoder conv), and the
last, image-facing conv. INT8: the encoder, cell 0, the second conv of each
residual cell, the inverted-residual projections and the second decoder conv.
"""
from __future__ import annotations

import re

# Node-name fragments as the TorchScript ONNX exporter writes them (OpenVINO keeps them as friendly names).
GC_PATH = r"/gcs\.\d+/"
FUSER = r"/fuser/"
GC_READERS = (r"/cells\.[1-5]/body/body\.0/", r"/cells\.[6-8]/", r"/decoder/decoder\.0/")
IMAGE_OUT = r"/decoder/decoder\.6/"  # the last conv writes pixels: its input noise lands on the face directly

FLOAT_FRAGMENTS = (GC_PATH, FUSER, *GC_READERS, IMAGE_OUT)
FLOAT_NODES = re.compile("|".join(f"(?:{f})" for f in FLOAT_FRAGMENTS))

# Op types NNCF would otherwise quantize on the OpenVINO model: the residual Add and InstanceNorm's MVN.
FLOAT_OP_TYPES = ("Add", "MVN")


def nncf_patterns() -> list[str]:
    """The same rule as NNCF IgnoredScope patterns (matched against whole node names)."""
    return [f".*{f}.*" for f in FLOAT_FRAGMENTS]


def describe() -> str:
    return "GC path, fuser, convs reading a GC output, last conv; residual Add and InstanceNorm inputs"
