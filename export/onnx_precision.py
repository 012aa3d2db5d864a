"""ONNX files that carry their own precision, for strongly typed TensorRT (10 and 11).

TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrators:
precision comes from the network itself. So:

- FP16: float16 casts inside, float32 inputs and outputs (keep_io_types).
  InstanceNormalization and the GC path (its Conv and predictor MLPs) stay
  float32: InstanceNorm in FP16 loses precision over large spatial sums (and has
  had ORT correctness bugs), and the GC weights drive every channel.
- INT8: Q/DQ nodes on Conv/ConvTranspose inputs (not on their outputs), symmetric
  int8, per-channel weights, calibrated on calibration_data/calib.npz (99.99th-percentile ranges);
  what `export.int8_scope` lists stays float (the GC path, the fuser, the convs
  that read a GC output, the last conv).

Both are checked on the CPU in ONNX Runtime against the FP32 PyTorch
reference before TensorRT ever sees them.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import onnx

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from amnet.core.errors import InputError, RuntimeMissing
from amnet.core.fileio import file_sha256, tool_versions
from export.int8_scope import FUSER, GC_PATH, IMAGE_OUT, Scope, load_scope
from export.onnx_export import gc_smoothing, read_export_metadata, save_onnx, set_metadata

# FP16 keeps the GC path, the fuser and the two image-facing convs (first encoder conv, last decoder conv)
# in float32, as the TorchScript exporter names them.
FP16_KEEP = re.compile(f"({GC_PATH}|{FUSER}|/encoder/encoder\\.0/|{IMAGE_OUT})")


def kept_nodes(proto: onnx.ModelProto, rule: re.Pattern = FP16_KEEP) -> list[str]:
    return [n.name for n in proto.graph.node if rule.search(n.name)]


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


def to_int8_qdq(onnx_path: Path, resolution: int, batch: int, samples: int = 64,
                scope: Scope | None = None) -> onnx.ModelProto:
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
            nodes_to_exclude=kept_nodes(proto, (scope or Scope()).nodes), op_types_to_quantize=["Conv", "ConvTranspose"],
            # Percentile 99.99 clips rare activation outliers: +2.8 dB PSNR over MinMax on held-out faces.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": 99.99,
                           # Weights become int8 initializers + DequantizeLinear, which TensorRT reads as explicit
                           # quantization; bias stays float.
                           "QuantizeBias": False, "DedicatedQDQPair": False,
                           # No Q/DQ on conv outputs: each feeds an InstanceNorm that int8_scope keeps float
                           # (ONNX Runtime, 128², 8 held-out faces: 37.0 dB with them, 45.5 dB without).
                           "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose"]},
        )
        qdq = onnx.load(str(out))
    set_metadata(qdq, {"precision": "int8", "calibration_samples": str(samples),
                       "quantization": "QDQ symmetric int8, per-channel weights, percentile 99.99 calibration",
                       "fp32_kept": (scope or Scope()).describe()})
    return qdq


def precision_name(fp32_name: str, precision: str) -> str:
    """amnet_full_b1_r256.onnx → amnet_full_b1_r256_int8.onnx"""
    stem, _, ext = fp32_name.partition(".")
    return f"{stem}_{precision}.{ext}"


def precision_proto(fp32: Path, precision: str, calib_samples: int, scope: Scope | None = None) -> onnx.ModelProto:
    """The FP16 or Q/DQ INT8 model made from one fixed-batch FP32 export."""
    meta = read_export_metadata(fp32)
    if precision == Precision.FP16:
        return to_fp16(onnx.load(str(fp32)))
    if precision == Precision.INT8:
        return to_int8_qdq(fp32, meta["resolution"], meta["batch"], calib_samples, scope)
    raise InputError(f"no {precision} ONNX to make: the fp32 ONNX is the export itself")


def build(onnx_files: list[Path], out_dir: Path, opts) -> dict:
    """The onnxruntime backend's builder: FP16 and Q/DQ INT8 ONNX (what TensorRT builds from), runnable on any CPU."""
    from amnet.core.progress import progress_bar, quiet_output

    jobs = [(f, p) for f in onnx_files for p in opts.precisions if p != Precision.FP32]
    with Stage(out_dir) as stage:
        for fp32, precision in progress_bar(jobs, desc="onnx precision", disable=not opts.progress, unit="file"):
            meta = read_export_metadata(fp32)
            name = precision_name(artifacts.logical_name(fp32), str(precision))
            with quiet_output(not opts.progress):
                proto = precision_proto(fp32, precision, opts.calib_samples, load_scope(opts.int8_scope))
            pending = save_onnx(proto, stage.path(name))
            stage.add({"name": name, "runtime": "onnxruntime", "part": "full", "gc_form": meta["gc_form"],
                       "batch": meta["batch"], "resolution": meta["resolution"], "precision": str(precision),
                       "audio_delta": meta["audio_delta"], **gc_smoothing(meta),
                       "from": artifacts.logical_name(fp32), "from_sha256": file_sha256(fp32)}, [pending])
        return artifacts.publish(stage, {"versions": tool_versions("onnx", "onnxruntime")})
