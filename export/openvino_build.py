"""ONNX → OpenVINO IR in FP32, FP16 (compressed weights) and INT8 (NNCF post-training quantization).

Built from the ONNX export, not from the PyTorch module: the ONNX file is the
artifact already checked for parity, carries its provenance in its metadata,
has a fixed batch (the grouped GC needs a known weight shape on the CPU
plugin), and building from it needs no torch. NNCF runs on the OpenVINO
model, not on the ONNX one (NNCF's ONNX backend fails on the batch-folded GC).

INT8 keeps out what `export.int8_scope` lists (the GC path, the fuser, the convs
that read a GC output, the last conv, and the residual Add / InstanceNorm
inputs): per-sample per-channel GC scales do not survive one per-tensor scale.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from amnet.core.fileio import file_sha256, lazy_import, tool_versions
from export.int8_scope import GC_PATH, Scope, load_scope
from export.onnx_export import gc_smoothing, read_export_metadata, read_metadata

PSNR_CAP = 50.0


def _ov():
    return lazy_import("openvino", "pip install openvino nncf", "2025.0")


def ir_name(onnx_name: str, precision: str) -> str:
    """amnet_full_b1_r256.onnx → amnet_full_b1_r256_ov_int8.xml"""
    return onnx_name.replace(".onnx", f"_ov_{precision}.xml")


def quantize(ov_model, items: list[dict], preset: str, accuracy_control: bool, max_drop: float,
             validation: list[dict] | None = None, scope: Scope | None = None):
    import logging

    nncf = lazy_import("nncf", "pip install nncf", "2.16")
    scope = scope or Scope()

    nncf.set_log_level(logging.ERROR)  # its INFO lines list every ignored node
    dataset = nncf.Dataset(items)
    ignored = nncf.IgnoredScope(patterns=scope.nncf_patterns(), types=list(scope.op_types), validate=False)
    preset_enum = nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    if not accuracy_control:
        return nncf.quantize(ov_model, dataset, preset=preset_enum, subset_size=len(items), ignored_scope=ignored,
                             fast_bias_correction=True, model_type=None)
    from amnet.core.metrics import psnr

    ov = _ov()

    def validate(compiled, data) -> float:
        # Mean PSNR of the face vs the FP32 IR's face, capped at PSNR_CAP: the FP32 model itself scores
        # the cap (not infinity), so max_drop reads "accept down to PSNR_CAP − max_drop dB".
        scores = [min(psnr(ref, compiled(item)[compiled.outputs[0]]), PSNR_CAP) for item, ref in data]
        return float(np.mean(scores))

    fp32 = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pairs = [(it, fp32(it)[fp32.outputs[0]]) for it in (validation or items)]
    return nncf.quantize_with_accuracy_control(
        ov_model, calibration_dataset=dataset, validation_dataset=nncf.Dataset(pairs), validation_fn=validate,
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, preset=preset_enum, subset_size=len(items),
        ignored_scope=ignored)


def build(onnx_files: list[Path], out_dir: Path, opts) -> dict:
    """The openvino backend's builder: one IR (.xml + .bin, published together) per ONNX file and precision."""
    ov = _ov()
    from amnet.core.progress import progress_bar, quiet_output

    from amnet.realdata import calibration_batches
    from runtimes.openvino_runner import OpenVinoRunner

    scope = load_scope(getattr(opts, "int8_scope", None))
    jobs = [(f, p) for f in onnx_files for p in opts.precisions]
    with Stage(out_dir) as stage:
        for onnx_path, precision in progress_bar(jobs, desc="openvino", disable=not opts.progress, unit="variant"):
            meta = read_export_metadata(onnx_path)
            rt_info = {k: v for k, v in read_metadata(onnx_path).items()}
            model = ov.convert_model(str(onnx_path))
            if precision == Precision.INT8:
                names = [i.get_any_name() for i in model.inputs]
                items = calibration_batches(names, meta["resolution"], opts.calib_samples, meta["batch"])
                # Accuracy control validates on calibration inputs: the held-out split stays for the parity gate.
                validation = items[-max(1, 16 // meta["batch"]):] if opts.accuracy_control else None
                with quiet_output(not opts.progress):
                    model = quantize(model, items, opts.preset, opts.accuracy_control, opts.max_drop, validation,
                                     scope)
                rt_info["calibration"] = json.dumps({"samples": len(items) * meta["batch"], "preset": opts.preset,
                                                     "accuracy_control": opts.accuracy_control,
                                                     "max_drop_db": opts.max_drop, "kept_float": scope.describe()})
            rt_info["precision"] = str(precision)
            for k, v in rt_info.items():
                model.set_rt_info(str(v), k)
            name = ir_name(artifacts.logical_name(onnx_path), str(precision))
            xml = stage.path(name)
            ov.save_model(model, str(xml), compress_to_fp16=(precision == Precision.FP16))
            with OpenVinoRunner(xml, threads=min(2, os.cpu_count() or 1), precision=str(precision)) as r:
                # The GC path apart: never INT8, and in the float parts' precision (bf16 on bf16 CPUs: amnet.core.cpu).
                actual = {"compute": r.compute_precision, "ops": r.executed_precisions(),
                          "gc_path": r.executed_precisions(GC_PATH)}
            stage.add({"name": name, "runtime": "openvino", "part": meta["part"], "gc_form": meta["gc_form"],
                       "batch": meta["batch"], "resolution": meta["resolution"], "precision": str(precision),
                       "audio_delta": meta["audio_delta"], **gc_smoothing(rt_info),
                       "from": artifacts.logical_name(onnx_path),
                       "from_sha256": file_sha256(onnx_path),
                       "weights": {"fp16": "fp16", "int8": "int8+fp32"}.get(str(precision), "fp32"),
                       "actual_precision": actual}, [xml, xml.with_suffix(".bin")])
        return artifacts.publish(stage, {"versions": tool_versions("onnx", "openvino", "nncf")})
