"""Open any model file (checkpoint, ONNX, OpenVINO IR, TensorRT engine, bucket folder) as a Runner."""
from __future__ import annotations

import json
from pathlib import Path

from amnet.errors import ArtifactError, InputError
from runtimes.base import BucketedRunner, Runner

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


def default_checkpoint() -> Path:
    return Path(__file__).resolve().parent.parent / "amnet" / "default" / "amnet.safetensors"


def open_runner(path: str | Path, threads: int | None = None, **opts) -> Runner:
    path = Path(path)
    if not path.exists():
        raise InputError(f"model not found: {path}")
    if path.is_dir():
        return _open_bucket_dir(path, threads, **opts)
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        from amnet.reference import TorchRunner

        return TorchRunner(str(path), threads=threads)
    if suffix == ".onnx":
        from runtimes.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=threads)
    if suffix == ".xml":
        from runtimes.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(path, threads=threads, **opts)
    if suffix in (".engine", ".plan"):
        from runtimes.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path)
    raise InputError(f"don't know how to run {path.name}: expected a checkpoint (.safetensors/.pth), "
                     ".onnx, OpenVINO .xml, TensorRT .engine, or an export folder")


def _open_bucket_dir(path: Path, threads, **opts) -> Runner:
    """An export folder: the full-model artifacts of one precision and runtime, as buckets."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"{path} has no manifest.json: pass one artifact file instead")
    try:
        arts = json.loads(manifest.read_text())["artifacts"]
    except (ValueError, KeyError):
        raise ArtifactError(f"{manifest} is not an amnet-deploy manifest") from None
    runtime, precision = opts.pop("runtime", "onnx"), opts.pop("precision", "fp32")
    chosen = [a for a in arts if a["part"] == "full" and a.get("runtime", "onnx") == runtime
              and a.get("precision", "fp32") == precision and a["batch"] is not None]
    if not chosen:
        raise InputError(f"{manifest} lists no fixed-batch full-model {runtime} {precision} artifact")
    return BucketedRunner({a["batch"]: open_runner(path / a["file"], threads, **opts) for a in chosen})
