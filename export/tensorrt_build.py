"""Strongly typed TensorRT engines (TensorRT 10 and 11) from precision-carrying ONNX files.

Precision is carried by the ONNX (export/onnx_precision.py), never by builder
flags: TensorRT 11 removed BuilderFlag.FP16/INT8 and the INT8 calibrators, and
TensorRT 10 builds the same files with the STRONGLY_TYPED network flag
(available since 9.1). FP32 engines clear BuilderFlag.TF32 (on by default), or
they would miss the 1e-4 FP32 gate. One engine per batch bucket, because the
batch-folded GC fixes N·C at build time. An engine is reused when the manifest
already holds one with the same cache key (FP32 ONNX sha256, TensorRT version,
GPU, precision and calibration size, version-compatibility, workspace) and its
files verify, before any INT8 calibration; each engine
is published together with its sidecar JSON (runtimes/tensorrt_runner.py owns
that format); nothing is prepended to the engine bytes.

API used (TensorRT 10.x Python): Builder.create_network(flags),
NetworkDefinitionCreationFlag.STRONGLY_TYPED, OnnxParser.parse,
IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, …), clear_flag(BuilderFlag.TF32),
create_timing_cache / set_timing_cache / get_timing_cache().serialize(),
BuilderFlag.VERSION_COMPATIBLE (8.6+), Builder.build_serialized_network.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from amnet.core.errors import ArtifactError, IntegrityError
from amnet.core.fileio import atomic_write, file_sha256, tool_versions
from runtimes.tensorrt_runner import gpu_name, import_cudart, import_tensorrt, logger, write_sidecar

WORKSPACE_BYTES = 2 << 30
TIMING_CACHE = "timing.cache"


def cache_key(onnx_sha: str, trt_version: str, gpu: str, precision: str, version_compatible: bool = False,
              workspace: int = WORKSPACE_BYTES) -> str:
    """Everything that changes the engine: the FP32 export, TensorRT, the GPU, precision (+ calibration), flags."""
    text = f"{onnx_sha}|{trt_version}|{gpu}|{precision}|vc={int(version_compatible)}|ws={workspace}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def builder_flags(trt, precision: str, version_compatible: bool) -> tuple[list, list]:
    """(flags to set, flags to clear) for one engine."""
    set_, clear = [], []
    if version_compatible:
        set_.append(trt.BuilderFlag.VERSION_COMPATIBLE)
    if precision == Precision.FP32 and hasattr(trt.BuilderFlag, "TF32"):
        clear.append(trt.BuilderFlag.TF32)  # TF32 moves FP32 outputs by ~3e-3: the FP32 gate is 1e-4
    return set_, clear


def serialize_engine(onnx_path: Path, precision: str, timing_cache: Path, workspace: int = WORKSPACE_BYTES,
                     version_compatible: bool = False, extra_outputs: tuple[str, ...] = ()) -> tuple[bytes, float]:
    """Parse one precision-carrying ONNX and build its engine; returns (bytes, build seconds).

    ``extra_outputs``: ONNX tensor names to mark as engine outputs too (diagnose's probes; marking a tensor
    can stop TensorRT fusing across it, so a probed engine is a close relative of the deployed one).
    """
    trt = import_tensorrt()
    builder = trt.Builder(logger())
    # TensorRT 10: strong typing is opt-in via this flag; TensorRT 11: always on (the flag may be gone).
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger())
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {onnx_path.name}: {errors[:300]}")
    wanted = set(extra_outputs)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor.name in wanted and not tensor.is_network_output:
                network.mark_output(tensor)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    to_set, to_clear = builder_flags(trt, precision, version_compatible)
    for flag in to_set:
        config.set_flag(flag)
    for flag in to_clear:
        config.clear_flag(flag)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    seconds = time.perf_counter() - t
    timing = bytes(config.get_timing_cache().serialize())
    atomic_write(timing_cache, lambda tmp: Path(tmp).write_bytes(timing))
    return bytes(serialized), seconds


def _cached(out_dir: Path, key: str) -> dict | None:
    for a in artifacts.read(out_dir)["artifacts"]:
        if a["runtime"] == "tensorrt" and a.get("tensorrt", {}).get("cache_key") == key:
            try:
                artifacts.verify(out_dir, a)
                return a
            except (ArtifactError, IntegrityError):
                return None
    return None


def precision_source(fp32: Path, precision: Precision, out_dir: Path, calib_samples: int, tmp: Path,
                      scope_file: Path | None = None) -> Path:
    """The ONNX an engine is built from: the export (fp32), or the onnxruntime build's FP16/INT8 file when it
    was made from this very export, else one made now (so INT8 is calibrated once, not per engine build)."""
    from export.onnx_export import save_onnx
    from export.int8_scope import load_scope
    from export.onnx_precision import precision_name, precision_proto

    if precision == Precision.FP32:
        return fp32
    name = precision_name(artifacts.logical_name(fp32), str(precision))
    fp32_sha = file_sha256(fp32)
    for a in artifacts.read(out_dir)["artifacts"]:
        if a["name"] == name and a.get("from_sha256") == fp32_sha and scope_file is None:
            return out_dir / a["file"]
    return save_onnx(precision_proto(fp32, precision, calib_samples, load_scope(scope_file)), tmp / name)


def build(onnx_files: list[Path], out_dir: Path, opts) -> dict:
    """The tensorrt backend's builder: one engine (+ sidecar) per ONNX file and precision."""
    trt = import_tensorrt()
    import_cudart()
    from amnet.core.progress import progress_bar

    from export.onnx_export import gc_smoothing, read_export_metadata

    gpu = gpu_name()
    workspace = WORKSPACE_BYTES
    jobs = [(f, p) for f in onnx_files for p in opts.precisions]
    with Stage(out_dir) as stage, tempfile.TemporaryDirectory() as tmp:
        for fp32, precision in progress_bar(jobs, desc="tensorrt", disable=not opts.progress, unit="engine"):
            meta = read_export_metadata(fp32)
            # Keyed on the FP32 export (+ calibration size), so a cache hit skips INT8 calibration too.
            scope_id = file_sha256(opts.int8_scope)[:12] if opts.int8_scope else "default"
            calibrated = (f"{precision}/calib{opts.calib_samples}/scope-{scope_id}" if precision == Precision.INT8
                          else str(precision))
            key = cache_key(file_sha256(fp32), trt.__version__, gpu, calibrated, opts.version_compatible, workspace)
            if _cached(out_dir, key) is not None:
                continue
            src = precision_source(fp32, precision, out_dir, opts.calib_samples, Path(tmp), opts.int8_scope)
            onnx_sha = file_sha256(src)
            data, seconds = serialize_engine(src, str(precision), out_dir / TIMING_CACHE, workspace,
                                             opts.version_compatible)
            name = artifacts.logical_name(fp32).replace(".onnx", f"_trt_{precision}.engine")
            engine = stage.path(name)
            atomic_write(engine, lambda t: Path(t).write_bytes(data))
            side = {"onnx": src.name, "onnx_sha256": onnx_sha, "tensorrt": trt.__version__, "gpu": gpu,
                    "precision": str(precision), "cache_key": key, "workspace_bytes": workspace,
                    "version_compatible": opts.version_compatible, "build_seconds": round(seconds, 1),
                    "audio_delta": meta["audio_delta"], "batch": meta["batch"], "resolution": meta["resolution"]}
            write_sidecar(engine, side)
            stage.add({"name": name, "runtime": "tensorrt", "part": "full", "gc_form": meta["gc_form"],
                       "batch": meta["batch"], "resolution": meta["resolution"], "precision": str(precision),
                       "audio_delta": meta["audio_delta"], **gc_smoothing(meta),
                       "from": artifacts.logical_name(fp32), "from_sha256": file_sha256(fp32), "tensorrt": side},
                      [engine, engine.with_name(engine.name + ".json")])
        return artifacts.publish(stage, {"versions": tool_versions("onnx", "onnxruntime", "tensorrt", "cuda-python")})
