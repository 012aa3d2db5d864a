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
from pathlib import Path

import numpy as np

from amnet.checkpoint import file_sha256
from amnet.errors import InputError, RuntimeMissing
from export import manifest as mf
from export.int8_scope import FLOAT_OP_TYPES, describe, nncf_patterns
from export.onnx_export import read_metadata

PSNR_CAP = 50.0


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeMissing("OpenVINO is not installed: pip install openvino nncf") from None
    return ov


def ir_name(onnx_file: str, precision: str) -> str:
    return onnx_file.replace(".onnx", f"_ov_{precision}.xml")


def quantize(ov_model, items: list[dict], preset: str, accuracy_control: bool, max_drop: float,
             validation: list[dict] | None = None, progress: bool = True):
    try:
        import nncf
    except ImportError:
        raise RuntimeMissing("NNCF is not installed: pip install nncf") from None
    import logging

    nncf.set_log_level(logging.ERROR)  # its INFO lines list every ignored node
    dataset = nncf.Dataset(items)
    ignored = nncf.IgnoredScope(patterns=nncf_patterns(), types=list(FLOAT_OP_TYPES), validate=False)
    preset_enum = nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    if not accuracy_control:
        return nncf.quantize(ov_model, dataset, preset=preset_enum, subset_size=len(items), ignored_scope=ignored,
                             fast_bias_correction=True, model_type=None)
    from benchmarks.metrics import psnr

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


def build_openvino(model_path: Path, precisions, out_dir: Path, batches=(1,), resolution: int = 256,
                   calib_samples: int = 64, preset: str = "mixed", accuracy_control: bool = False,
                   max_drop: float = 6.0, progress: bool = True) -> dict:
    ov = _ov()
    from tqdm import tqdm

    from amnet.realdata import calibration_batches
    from export.pipeline import fp32_onnx_inputs

    onnx_files = fp32_onnx_inputs(model_path, out_dir, batches, resolution, progress)
    artifacts = []
    jobs = [(f, p) for f in onnx_files for p in precisions]
    for onnx_path, precision in tqdm(jobs, desc="openvino", disable=not progress, unit="variant"):
        meta = read_metadata(onnx_path)
        if meta.get("batch") == "dynamic":
            raise InputError(f"{onnx_path.name} has a dynamic batch; OpenVINO builds need a fixed-batch export")
        batch = int(meta["batch"])
        model = ov.convert_model(str(onnx_path))
        if precision == "int8":
            names = [i.get_any_name() for i in model.inputs]
            items = calibration_batches(names, int(meta["resolution"]), calib_samples, batch)
            # Accuracy control validates on calibration inputs: the held-out split stays for the parity gate.
            validation = items[-max(1, 16 // batch):] if accuracy_control else None
            model = quantize(model, items, preset, accuracy_control, max_drop, validation, progress)
            meta["calibration"] = json.dumps({"samples": len(items) * batch, "preset": preset,
                                              "accuracy_control": accuracy_control, "max_drop_db": max_drop,
                                              "kept_float": describe()})
        meta["precision"] = precision
        for k, v in meta.items():
            model.set_rt_info(str(v), k)
        xml = out_dir / ir_name(onnx_path.name, precision)
        _save_ir(ov, model, xml, compress_to_fp16=(precision == "fp16"))
        from runtimes.openvino_runner import OpenVinoRunner

        with OpenVinoRunner(xml, threads=2) as r:
            actual = {"compute": r.compute_precision,
                      "ops": r.executed_precisions()}
        artifacts.append({"file": xml.name, "part": meta.get("part", "full"), "gc_form": meta.get("gc_form"),
                          "batch": batch, "resolution": int(meta["resolution"]), "precision": precision,
                          "runtime": "openvino", "from": onnx_path.name, "weights": {"fp16": "fp16"}.get(precision,
                          "int8+fp32" if precision == "int8" else "fp32"), "actual_precision": actual,
                          "sha256": file_sha256(xml)})
    return mf.update(out_dir, artifacts, versions=mf.tool_versions("torch", "onnx", "onnxruntime", "openvino", "nncf"))


def _save_ir(ov, model, xml: Path, compress_to_fp16: bool) -> None:
    """save_model writes .xml and .bin: both to temp names, then renamed (xml last)."""
    import os

    tmp = xml.with_name(f".{xml.stem}.tmp.xml")
    try:
        ov.save_model(model, str(tmp), compress_to_fp16=compress_to_fp16)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    finally:
        for p in (tmp, tmp.with_suffix(".bin")):
            if p.exists():
                p.unlink()
