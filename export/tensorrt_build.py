"""Strongly typed TensorRT engines (TensorRT 10 and 11) from precision-carrying ONNX files.

Precision is carried by the ONNX (export/onnx_precision.py), never by builder
flags: TensorRT 11 removed BuilderFlag.FP16/INT8 and the INT8 calibrators, and
TensorRT 10 builds the same files with the STRONGLY_TYPED network flag
(available since 9.1). One engine per batch bucket, because the batch-folded GC
fixes N·C at build time. Engines are cached under a key of (ONNX sha256,
TensorRT version, GPU name, precision); each has a sidecar JSON manifest, and
nothing is prepended to the engine bytes.

API used (TensorRT 10.x Python): Builder.create_network(flags),
NetworkDefinitionCreationFlag.STRONGLY_TYPED, OnnxParser.parse,
IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, …),
create_timing_cache / set_timing_cache / get_timing_cache().serialize(),
BuilderFlag.VERSION_COMPATIBLE (8.6+), Builder.build_serialized_network.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from amnet.checkpoint import atomic_write, file_sha256
from amnet.errors import ArtifactError, InputError
from export import manifest as mf
from runtimes.tensorrt_runner import gpu_name, import_cudart, import_tensorrt, sidecar_path

WORKSPACE_BYTES = 2 << 30
TIMING_CACHE = "timing.cache"


def cache_key(onnx_sha: str, trt_version: str, gpu: str, precision: str) -> str:
    return hashlib.sha256(f"{onnx_sha}|{trt_version}|{gpu}|{precision}".encode()).hexdigest()[:16]


def build_engine(onnx_path: Path, out_dir: Path, precision: str, workspace: int = WORKSPACE_BYTES,
                 version_compatible: bool = False) -> tuple[Path, dict]:
    """Build (or reuse from cache) the engine for one precision-carrying ONNX file."""
    trt = import_tensorrt()
    import_cudart()
    gpu = gpu_name()
    onnx_sha = file_sha256(onnx_path)
    key = cache_key(onnx_sha, trt.__version__, gpu, precision)
    engine_path = out_dir / f"{onnx_path.stem}_{key}.engine"
    side = sidecar_path(engine_path)
    if engine_path.is_file() and side.is_file():
        try:
            meta = json.loads(side.read_text())
            if meta.get("cache_key") == key:
                return engine_path, meta
        except ValueError:
            pass  # a broken sidecar: rebuild below

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: strong typing is opt-in via this flag; TensorRT 11: always on (the flag may be gone).
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_file = out_dir / TIMING_CACHE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    build_s = time.perf_counter() - t
    data = bytes(serialized)
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(data))
    timing = bytes(config.get_timing_cache().serialize())
    atomic_write(cache_file, lambda tmp: Path(tmp).write_bytes(timing))
    meta = {"engine": engine_path.name, "onnx": onnx_path.name, "onnx_sha256": onnx_sha, "tensorrt": trt.__version__,
            "gpu": gpu, "precision": precision, "cache_key": key, "workspace_bytes": workspace,
            "version_compatible": version_compatible, "build_seconds": round(build_s, 1),
            "engine_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    return engine_path, meta


def precision_onnx(fp32_onnx: Path, precision: str, out_dir: Path, resolution: int, batch: int,
                   calib_samples: int) -> Path:
    """The FP16 or Q/DQ INT8 ONNX TensorRT builds from (fp32: the export itself)."""
    import onnx

    from export.onnx_export import save_onnx
    from export.onnx_precision import to_fp16, to_int8_qdq

    if precision == "fp32":
        return fp32_onnx
    target = out_dir / fp32_onnx.name.replace(".onnx", f"_{precision}.onnx")
    if precision == "fp16":
        save_onnx(to_fp16(onnx.load(str(fp32_onnx))), target)
    elif precision == "int8":
        save_onnx(to_int8_qdq(fp32_onnx, resolution, batch, calib_samples), target)
    else:
        raise InputError(f"unknown precision {precision!r}")
    return target


def build_tensorrt(model_path: Path, precisions, out_dir: Path, batches=(1,), resolution: int = 256,
                   calib_samples: int = 64, progress: bool = True, version_compatible: bool = False) -> dict:
    # Fail fast, before any export work, when TensorRT is absent.
    import_tensorrt()
    import_cudart()
    from tqdm import tqdm

    from export.onnx_export import read_metadata
    from export.pipeline import fp32_onnx_inputs

    artifacts = []
    onnx_files = fp32_onnx_inputs(model_path, out_dir, batches, resolution, progress)
    for fp32 in tqdm(onnx_files, desc="tensorrt", disable=not progress, unit="bucket"):
        meta = read_metadata(fp32)
        for precision in precisions:
            src = precision_onnx(fp32, precision, out_dir, int(meta["resolution"]), int(meta["batch"]),
                                 calib_samples)
            engine, side = build_engine(src, out_dir, precision, version_compatible=version_compatible)
            artifacts.append({"file": engine.name, "part": "full", "gc_form": "grouped", "batch": int(meta["batch"]),
                              "resolution": int(meta["resolution"]), "precision": precision, "runtime": "tensorrt",
                              "from": src.name, "sha256": side["engine_sha256"], "tensorrt": side})
    return mf.update(out_dir, artifacts, versions=mf.tool_versions("onnx", "onnxruntime", "tensorrt", "cuda-python"))
