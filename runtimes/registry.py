"""The runtime registry: one entry per backend, read by the CLI, `open_runner`, the pipeline, parity, bench and choose.

An entry names the backend, the artifact suffixes it runs, the precisions its
builder produces, its runner and builder (as ``"module:attribute"`` so nothing
heavy is imported until asked for, or as the objects themselves), and the
packages it needs with a one-line install hint. Adding a backend = one module
with its runner (and one with its builder, under ``export/``) + one `register`
call: here for the built-in ones, or in a plugin module named in
``AMNET_BACKENDS`` (comma-separated module names, imported on first use, also
by the benchmark's child processes).

Builders are named by string: the one place this layer refers to a higher one
(export/), by name for lazy loading, never by import; import-linter checks the rest.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amnet.core import artifacts
from amnet.core.artifacts import Precision
from amnet.core.errors import ArtifactError, InputError, IntegrityError, RuntimeMissing, first_line
from amnet.core.fileio import lazy_import
from amnet.core.onnx_refs import external_data
from amnet.core.runner import BucketedRunner, Runner


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    min_version: str | None = None
    distribution: str | None = None  # pip name, when it differs


@dataclass(frozen=True)
class Backend:
    name: str
    suffixes: tuple[str, ...]
    runner: str | Callable[..., Runner]
    precisions: tuple[Precision, ...] = ()  # what its builder produces
    builder: str | Callable | None = None
    requires: tuple[Requirement, ...] = ()
    build_requires: tuple[Requirement, ...] = ()
    hint: str = ""
    options: tuple[str, ...] = ()  # runner keyword options beyond path/threads/precision
    companions: tuple[str, ...] = ()  # suffixes of files the runner reads beside the main one (an IR's .bin)
    description: str = ""
    builds_from: str = "onnx"  # or "checkpoint"
    check: str | Callable[[], str | None] | None = None  # beyond packages, e.g. "is there a CUDA device?"

    def missing(self, build: bool = False) -> str | None:
        """None when this machine can run (or build) it; else the one-line reason with the install hint."""
        for req in self.requires + (self.build_requires if build else ()):
            try:
                lazy_import(req.module, self.hint, req.min_version, req.distribution)
            except RuntimeMissing as e:
                return str(e)
        return _resolve(self.check)() if self.check else None

    def load_runner(self) -> Callable[..., Runner]:
        return _resolve(self.runner)

    def load_builder(self) -> Callable:
        if self.builder is None:
            raise InputError(f"runtime {self.name!r} has no builder: it runs files made by `export` or another build")
        problem = self.missing(build=True)
        if problem:
            raise RuntimeMissing(problem)
        return _resolve(self.builder)


def _resolve(target):
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, Backend] = {}
_PLUGINS_LOADED: set[str] = set()


def register(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("AMNET_BACKENDS", "").split(","))):
        if module not in _PLUGINS_LOADED:
            _PLUGINS_LOADED.add(module)  # before the import: a plugin that asks for backends() does not recurse
            try:
                importlib.import_module(module)
            except ImportError as e:
                _PLUGINS_LOADED.discard(module)  # asked again, it fails again: never a silent registry without it
                raise InputError(f"AMNET_BACKENDS names {module!r}, which cannot be imported ({e})") from None
            except SystemExit as e:  # would end any command, `parity` too, with its code: a silent pass at 0
                _PLUGINS_LOADED.discard(module)
                raise InputError(f"AMNET_BACKENDS plugin {module!r} called sys.exit({e.code!r}) while being "
                                 "imported") from None
            except Exception as e:  # noqa: BLE001 - the plugin's fault, not ours: named, not an internal error
                _PLUGINS_LOADED.discard(module)
                raise InputError(f"AMNET_BACKENDS plugin {module!r} raised {type(e).__name__} while being imported"
                                 f"{f': {first_line(e)}' if str(e).strip() else ''}") from None


def backends() -> dict[str, Backend]:
    _load_plugins()
    return dict(_REGISTRY)


def get(name: str) -> Backend:
    found = backends().get(name)
    if found is None:
        raise InputError(f"unknown runtime {name!r}; known: {', '.join(backends())}")
    return found


def for_path(path: Path) -> Backend:
    suffix = Path(path).suffix.lower()
    for b in backends().values():
        if suffix in b.suffixes:
            return b
    known = ", ".join(s for b in backends().values() for s in b.suffixes)
    raise InputError(f"don't know how to run {Path(path).name}: expected one of {known}, or an export folder")


# ---------------------------------------------------------------- opening artifacts

def open_runner(path: str | Path, threads: int | None = None, precision: str | None = None, verify: bool = True,
                runtime: str | None = None, **options) -> Runner:
    """A runner (not yet activated) for any model file or export folder.

    Files listed in a manifest are checked against its sha256 first (``verify``), the runtime's companions and
    an ONNX file's external data included; a logical artifact name (without the content token) resolves to its
    current file (`artifacts.open_entry`).
    """
    path = Path(path)
    if path.is_dir():
        return _open_bucket_dir(path, threads, precision, verify, runtime, **options)
    backend = get(runtime) if runtime else for_path(path)  # a logical name has its file's suffix (manifest rule)
    try:
        opened = artifacts.open_entry(path, verify, backend.companions)
    except IntegrityError as e:  # what verify=False would run: the commands that open runners take --no-verify
        raise IntegrityError(f"{e}, or pass --no-verify to run it anyway") from None
    path, entry = opened.file, opened.entry  # a stale untokened file of the same name is never what runs
    if not path.exists():
        raise InputError(f"model not found: {path}")
    if entry is not None:
        if entry["runtime"] != backend.name:
            raise ArtifactError(f"{artifacts.MANIFEST} says {entry['name']} is a {entry['runtime']} artifact, but "
                                f"{path.name} is run by {backend.name} (damaged or hand-edited): rebuild it")
        if precision and str(precision) != entry["precision"]:
            raise InputError(f"{path.name} is the {entry['precision']} {entry['runtime']} artifact, "
                             f"not {precision}")
        precision = precision or entry["precision"]
    unknown = sorted(set(options) - set(backend.options))
    if unknown:
        raise InputError(f"runtime {backend.name} has no option {', '.join(unknown)}")
    problem = backend.missing()
    if problem:
        raise RuntimeMissing(problem)
    return backend.load_runner()(path, threads=threads, precision=precision, **options)


def files_read(path: str | Path) -> list[Path]:
    """Every file that opening `path` (a model file, logical name or export folder) reads, so that a command's
    output can be refused when it is one of them: an artifact's files, a loose file's companions, the manifest."""
    path = Path(path)
    if path.is_dir():
        return [path / artifacts.MANIFEST] + [path / f for a in artifacts.read(path)["artifacts"] for f in a["files"]]
    try:
        entry = artifacts.open_entry(path, verify=False).entry
    except InputError:  # not there: opening it will say so
        return [path]
    if entry is not None:
        return [path, path.parent / artifacts.MANIFEST] + [path.parent / f for f in entry["files"]]
    suffix = path.suffix.lower()
    companions = [s for b in backends().values() if suffix in b.suffixes for s in b.companions]
    external = external_data(path) if suffix == ".onnx" and path.is_file() else []
    return [path] + [path.with_suffix(s) for s in companions] + [path.parent / loc for loc in external]


def _open_bucket_dir(path: Path, threads, precision, verify, runtime, **options) -> Runner:
    """An export folder: the full-model artifacts of one runtime and precision, as batch buckets."""
    if not (path / artifacts.MANIFEST).is_file():
        raise InputError(f"{path} has no manifest.json: pass one artifact file instead")
    runtime, precision = runtime or "onnxruntime", precision or "fp32"
    chosen = [a for a in artifacts.read(path)["artifacts"] if a["part"] == "full" and a["runtime"] == runtime
              and a["precision"] == precision and a.get("batch") is not None]
    resolutions = {a.get("resolution") for a in chosen}
    if not chosen:
        raise InputError(f"{path}/manifest.json lists no fixed-batch full-model {runtime} {precision} artifact")
    if len(resolutions) > 1:
        raise InputError(f"{path} holds {runtime} {precision} models at several resolutions "
                         f"({', '.join(f'{r}²' for r in sorted(resolutions))}): pass one file instead")
    batches = [a["batch"] for a in chosen]
    twins = sorted(a["name"] for a in chosen if batches.count(a["batch"]) > 1)
    if twins:  # e.g. the default and the GC-smoothed INT8 that `make run` builds
        raise InputError(f"{path} holds several {runtime} {precision} models of one batch ({', '.join(twins)}): "
                         "pass one of them")
    return BucketedRunner({a["batch"]: open_runner(path / a["file"], threads, precision, verify, runtime, **options)
                           for a in chosen})


# ---------------------------------------------------------------- the built-in backends

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")
TRT_HINT = ("on a machine with an NVIDIA GPU and driver: pip install tensorrt cuda-python "
            "(CUDA 12 drivers: pip install tensorrt-cu12 'cuda-python>=12.6,<13')")

register(Backend(
    "pytorch", CHECKPOINT_SUFFIXES, "runtimes.pytorch_runner:TorchRunner", precisions=(Precision.FP32,),
    requires=(Requirement("torch", "2.6"),), hint="pip install 'amnet-deploy[export]' (PyTorch)",
    options=("gc_form",), description="eager PyTorch on the CPU: the FP32 reference"))
register(Backend(
    "onnxruntime", (".onnx",), "runtimes.onnxruntime_runner:OnnxRuntimeRunner",
    precisions=(Precision.FP16, Precision.INT8), builder="export.onnx_precision:build",
    requires=(Requirement("onnxruntime", "1.20"),), build_requires=(Requirement("onnx", "1.17"),),
    hint="pip install onnxruntime (building: pip install 'amnet-deploy[export]')", options=("providers",),
    description="ONNX Runtime, CPU: the exported FP32 ONNX, and the FP16 / Q/DQ INT8 files TensorRT builds from"))
register(Backend(
    "openvino", (".xml",), "runtimes.openvino_runner:OpenVinoRunner",
    precisions=(Precision.FP32, Precision.FP16, Precision.INT8), builder="export.openvino_build:build",
    requires=(Requirement("openvino", "2025.0"),), build_requires=(Requirement("nncf", "2.16"),),
    hint="pip install openvino (building INT8: pip install nncf)",
    options=("mode", "cache_dir", "compute", "streams", "hold_source"), companions=(".bin",),
    description="OpenVINO CPU plugin: FP32, FP16 weights, INT8 by NNCF"))
register(Backend(
    "pytorch-cuda", (".cudaplan",), "runtimes.pytorch_cuda_runner:TorchCudaRunner",
    precisions=(Precision.FP32, Precision.FP16, Precision.BF16), builder="export.pytorch_cuda_build:build",
    requires=(Requirement("torch", "2.6"),), hint="a CUDA build of torch on an NVIDIA GPU",
    options=("graph",), builds_from="checkpoint", check="runtimes.pytorch_cuda_runner:missing_cuda",
    description="PyTorch on an NVIDIA GPU, one CUDA graph per batch bucket: FP32 (TF32 off), FP16, BF16"))
register(Backend(
    "tensorrt", (".engine", ".plan"), "runtimes.tensorrt_runner:TensorRTRunner",
    precisions=(Precision.FP32, Precision.FP16, Precision.INT8), builder="export.tensorrt_build:build",
    requires=(Requirement("tensorrt", "10.0"), Requirement("cuda.bindings", None, "cuda-python")),
    build_requires=(Requirement("onnx", "1.17"),), hint=TRT_HINT, options=("cuda_graph",),
    description="strongly typed TensorRT 10/11 engines on an NVIDIA GPU"))
register(Backend(
    "litert", (".tflite",), "runtimes.litert_runner:LiteRTRunner", precisions=(Precision.FP32, Precision.FP16),
    builder="export.litert_build:build", requires=(Requirement("ai_edge_litert", None, "ai-edge-litert"),),
    build_requires=(Requirement("torch", "2.6"), Requirement("litert_torch", None, "litert-torch")),
    hint="pip install 'amnet-deploy[mobile]' (building: 'amnet-deploy[mobile-build]')", builds_from="checkpoint",
    description="LiteRT (TensorFlow Lite) interpreter with its XNNPACK delegate, as on Android/iOS: "
                "FP32, FP16 weights"))
register(Backend(
    "executorch", (".pte",), "runtimes.executorch_runner:ExecuTorchRunner", precisions=(Precision.FP32,),
    builder="export.executorch_build:build",
    requires=(Requirement("executorch", None, "executorch"), Requirement("torch", "2.6")),
    hint="pip install 'amnet-deploy[mobile]' (ExecuTorch; its Python runtime needs torch)", builds_from="checkpoint",
    description="ExecuTorch program lowered to XNNPACK, as on Android/iOS: FP32"))
