"""What the CLI's `export` and `build` call: checkpoint → artifacts + manifest."""
from __future__ import annotations

from pathlib import Path

from amnet.checkpoint import load_checkpoint
from amnet.errors import InputError
from export import manifest as mf

PARITY_MAX_ABS = 1e-4


def export_checkpoint(checkpoint, out_dir: Path, batches=(1,), resolution: int = 256, dynamic: bool = False,
                      parts=("full",), simplify: bool = True, check_parity: bool = True, threads=None,
                      progress: bool = True) -> dict:
    from tqdm import tqdm

    from amnet.realdata import parity_feeds
    from export.onnx_export import OPSET, export_one, parity

    loaded = load_checkpoint(checkpoint)
    model = loaded.require_full()
    out_dir.mkdir(parents=True, exist_ok=True)
    feeds = parity_feeds(model, resolution) if check_parity else None
    jobs = [(p, b) for p in parts for b in batches] + ([(p, None) for p in parts] if dynamic else [])
    artifacts = []
    for part, batch in tqdm(jobs, desc="export", disable=not progress, unit="file"):
        art, _ = export_one(model, out_dir, part, batch, resolution, loaded.sha256, simplify)
        if feeds is not None:
            errs = parity(model, out_dir / art.file, part, feeds, batch, threads)
            art.parity = {"reference": "pytorch-fp32-loop", "inputs": "calibration_data/heldout.npz",
                          "outputs": errs, "threshold_max_abs": PARITY_MAX_ABS,
                          "passed": all(e["max_abs"] <= PARITY_MAX_ABS for e in errs.values())}
        artifacts.append(art)
    return mf.update(out_dir, artifacts, source_checkpoint=str(loaded.path), source_sha256=loaded.sha256,
                     source_format=loaded.format, config=loaded.config.to_dict(), opset=OPSET,
                     parity_threshold=PARITY_MAX_ABS,
                     versions=mf.tool_versions("torch", "onnx", "onnxruntime", "onnxsim"))


def build_runtime(model, runtime: str, precisions, out_dir: Path, batches=(1,), resolution: int = 256,
                  calib_samples: int = 64, preset: str = "mixed", accuracy_control: bool = False,
                  max_drop: float = 6.0, version_compatible: bool = False, progress: bool = True) -> dict:
    if runtime == "openvino":
        from export.openvino_build import build_openvino

        return build_openvino(Path(model), precisions, out_dir, batches, resolution, calib_samples, preset,
                              accuracy_control, max_drop, progress)
    if runtime == "onnxruntime":
        return build_onnx_precisions(Path(model), precisions, out_dir, batches, resolution, calib_samples, progress)
    if runtime == "tensorrt":
        from export.tensorrt_build import build_tensorrt

        return build_tensorrt(Path(model), precisions, out_dir, batches, resolution, calib_samples, progress,
                              version_compatible)
    raise InputError(f"unknown runtime {runtime!r}")


def build_onnx_precisions(model_path: Path, precisions, out_dir: Path, batches=(1,), resolution: int = 256,
                          calib_samples: int = 64, progress: bool = True) -> dict:
    """The FP16 and Q/DQ INT8 ONNX files (what TensorRT builds from), to run in ONNX Runtime on any machine."""
    from tqdm import tqdm

    from amnet.checkpoint import file_sha256
    from export.onnx_export import read_metadata
    from export.tensorrt_build import precision_onnx

    artifacts = []
    onnx_files = fp32_onnx_inputs(model_path, out_dir, batches, resolution, progress)
    jobs = [(f, p) for f in onnx_files for p in precisions if p != "fp32"]
    for fp32, precision in tqdm(jobs, desc="onnx precision", disable=not progress, unit="file"):
        meta = read_metadata(fp32)
        path = precision_onnx(fp32, precision, out_dir, int(meta["resolution"]), int(meta["batch"]), calib_samples)
        artifacts.append({"file": path.name, "part": "full", "gc_form": "grouped", "batch": int(meta["batch"]),
                          "resolution": int(meta["resolution"]), "precision": precision, "runtime": "onnx",
                          "from": fp32.name, "sha256": file_sha256(path)})
    return mf.update(out_dir, artifacts)


def fp32_onnx_inputs(model_path: Path, out_dir: Path, batches, resolution: int, progress: bool) -> list[Path]:
    """The fixed-batch full-model ONNX files to build from: given, found in an export folder, or exported now."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_path.suffix == ".onnx":
        return [model_path]
    if model_path.is_dir():
        arts = mf.read(model_path)["artifacts"]
        files = [model_path / a["file"] for a in arts if a["part"] == "full" and a.get("runtime", "onnx") == "onnx"
                 and a.get("precision", "fp32") == "fp32" and a["batch"] is not None
                 and a.get("resolution") == resolution and a["batch"] in batches]
        if not files:
            raise InputError(f"{model_path} holds no fp32 full-model ONNX at {resolution}² for batch {batches}: "
                             "run `amnet-deploy export` first")
        return files
    manifest = export_checkpoint(model_path, out_dir, batches, resolution, progress=progress)
    return [out_dir / a["file"] for a in manifest["artifacts"] if a["part"] == "full" and a["batch"] in batches
            and a.get("runtime", "onnx") == "onnx" and a.get("resolution") == resolution]
