"""TensorRT runner: cuda-python device buffers, pinned host buffers, async copies, optional CUDA graph.

Written from the TensorRT 10.x Python API (name-based I/O: ``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``set_tensor_address``,
``execute_async_v3``; TensorRT ≥ 8.5, the only form left in 10 and 11) and
cuda-python's runtime bindings (``cuda.bindings.runtime`` from 12.6 on, the
older ``cuda.cudart`` path as fallback). TensorRT cannot be installed on the
project's CI machines: this module imports it lazily and says what is missing.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np

from amnet.core.errors import ArtifactError, RuntimeMissing
from amnet.core.fileio import lazy_import, write_text
from amnet.core.runner import Runner, TensorSpec

from runtimes.registry import TRT_HINT as INSTALL_HINT

_LOGGER = None


def import_tensorrt():
    return lazy_import("tensorrt", INSTALL_HINT, "10.0")


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise RuntimeMissing(f"cuda-python is not installed: {INSTALL_HINT}") from None
    return cudart


def logger():
    """One TensorRT logger per process (TensorRT keeps a reference to the first one it is given)."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def cuda_check(result):
    """cuda-python calls return (err, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ArtifactError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def gpu_name() -> str:
    cudart = import_cudart()
    props = cuda_check(cudart.cudaGetDeviceProperties(0))
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: Path, meta: dict) -> Path:
    """The engine's manifest: who built it (TensorRT version, GPU), from what, with which settings."""
    return write_text(sidecar_path(engine), json.dumps(meta, indent=1) + "\n")


def read_sidecar(engine: Path) -> dict:
    side = sidecar_path(engine)
    if not side.is_file():
        raise ArtifactError(f"{engine.name} has no {side.name} manifest: rebuild it with `amnet-deploy build`")
    try:
        meta = json.loads(side.read_text())
    except ValueError:
        raise ArtifactError(f"{side.name} is not valid JSON: rebuild the engine") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{side.name} is not an engine manifest: rebuild the engine")
    return meta


def check_engine_matches(engine: Path, trt_version: str, gpu: str) -> dict:
    """The sidecar says who built the engine; a foreign or stale engine is refused in one line."""
    meta = read_sidecar(engine)
    if meta.get("version_compatible"):
        return meta
    if meta.get("tensorrt") != trt_version or meta.get("gpu") != gpu:
        raise ArtifactError(f"{engine.name} was built with TensorRT {meta.get('tensorrt')} on {meta.get('gpu')}; "
                            f"this machine has TensorRT {trt_version} on {gpu}: rebuild it")
    return meta


class _Buffer:
    """A pinned host array and its device twin."""

    def __init__(self, cudart, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.host_ptr = cuda_check(cudart.cudaMallocHost(self.nbytes))
        self.host = np.frombuffer((ctypes.c_byte * self.nbytes).from_address(self.host_ptr),
                                  dtype=self.dtype).reshape(self.shape)
        try:
            self.device = cuda_check(cudart.cudaMalloc(self.nbytes))
        except ArtifactError:
            cudart.cudaFreeHost(self.host_ptr)  # the half already allocated
            raise

    def free(self, cudart):
        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self.host_ptr)


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None, cuda_graph: bool = False):
        super().__init__(path, threads=threads, precision=precision)
        self.cuda_graph = cuda_graph
        self.buffers: dict[str, _Buffer] = {}
        self.stream = self.graph = self.graph_exec = None

    def _activate(self):
        trt = import_tensorrt()
        self.cudart = cudart = import_cudart()
        if not self.path.is_file():
            raise ArtifactError(f"engine not found: {self.path}")
        meta = check_engine_matches(self.path, trt.__version__, gpu_name())
        self.metadata = meta
        self.precision = meta.get("precision", self.precision)
        runtime = trt.Runtime(logger())
        if meta.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # version-compatible engines embed a lean runtime
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{self.path.name} could not be deserialized (corrupt, or another TensorRT/GPU)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_check(cudart.cudaStreamCreate())
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            buf = _Buffer(cudart, shape, trt.nptype(self.engine.get_tensor_dtype(name)))
            self.buffers[name] = buf
            self.context.set_tensor_address(name, buf.device)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(TensorSpec(name, shape, str(buf.dtype)))
            else:
                self.outputs.append(name)
        if self.cuda_graph:
            self._capture_graph()

    def _enqueue(self):
        """Host→device copies, execution, device→host copies, all on one stream."""
        h2d, d2h = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            b = self.buffers[spec.name]
            cuda_check(self.cudart.cudaMemcpyAsync(b.device, b.host_ptr, b.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise ArtifactError("TensorRT execution failed")
        for name in self.outputs:
            b = self.buffers[name]
            cuda_check(self.cudart.cudaMemcpyAsync(b.host_ptr, b.device, b.nbytes, d2h, self.stream))

    def _capture_graph(self):
        cudart = self.cudart
        self._enqueue()  # one plain run first: TensorRT allocates lazily, which a capture cannot hold
        cuda_check(cudart.cudaStreamSynchronize(self.stream))
        cuda_check(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        self._enqueue()
        self.graph = cuda_check(cudart.cudaStreamEndCapture(self.stream))
        self.graph_exec = cuda_check(cudart.cudaGraphInstantiate(self.graph, 0))

    def _run(self, feeds):
        for spec in self.inputs:
            np.copyto(self.buffers[spec.name].host, feeds[spec.name].astype(self.buffers[spec.name].dtype))
        if self.graph_exec is not None:
            cuda_check(self.cudart.cudaGraphLaunch(self.graph_exec, self.stream))
        else:
            self._enqueue()
        cuda_check(self.cudart.cudaStreamSynchronize(self.stream))
        return {name: self.buffers[name].host.astype(np.float32, copy=True) for name in self.outputs}

    def _close(self):
        """Free in reverse order of allocation; also after a failed activate()."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if self.graph_exec is not None:
            cudart.cudaGraphExecDestroy(self.graph_exec)
            self.graph_exec = None
        if self.graph is not None:
            cudart.cudaGraphDestroy(self.graph)
            self.graph = None
        for b in self.buffers.values():
            b.free(cudart)
        self.buffers = {}
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None
