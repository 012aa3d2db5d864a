"""OpenVINO runner (CPU plugin): latency mode (one sync request) or throughput mode (async queue, streams).

The precision a compiled model really runs is read back from it
(``INFERENCE_PRECISION_HINT`` and the execution graph's per-op runtime
precisions), never assumed from what was asked for: on a CPU without native
FP16 an f16 hint falls back to f32, and on AMX/AVX-512-BF16 CPUs the plugin
defaults to bf16 unless told f32.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from amnet.errors import ArtifactError, InputError, RuntimeMissing
from runtimes.base import Runner, TensorSpec, check_feeds

# The compute precision each variant asks for. INT8 keeps its non-quantized ops in f32.
COMPUTE_HINT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}


def _ov():
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeMissing("OpenVINO is not installed: pip install openvino") from None
    return ov


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, mode: str = "latency",
                 cache_dir: str | os.PathLike | None = None, precision: str | None = None,
                 compute: str | None = None, streams: int | None = None):
        super().__init__()
        ov = _ov()
        if mode not in ("latency", "throughput"):
            raise InputError(f"OpenVINO mode must be 'latency' or 'throughput', got {mode!r}")
        self.path, self.mode = Path(path), mode
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise ArtifactError(f"OpenVINO IR needs both {self.path.name} and {self.path.with_suffix('.bin').name}")
        core = ov.Core()
        t = time.perf_counter()
        try:
            model = core.read_model(str(self.path))
        except Exception as e:  # noqa: BLE001 - OV raises RuntimeError with long multi-line text
            raise ArtifactError(f"{self.path.name} is not a readable OpenVINO IR: {_first_line(e)}") from None
        info = model.get_rt_info()
        self.metadata = {k: str(info[k]) for k in ("precision", "audio_delta", "batch", "gc_form") if k in info}
        self.precision = precision or self.metadata.get("precision", "fp32")
        config = {"PERFORMANCE_HINT": mode.upper(),
                  "INFERENCE_PRECISION_HINT": compute or COMPUTE_HINT.get(self.precision, "f32")}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if streams:
            config["NUM_STREAMS"] = streams
        if cache_dir:
            config["CACHE_DIR"] = str(cache_dir)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"OpenVINO could not compile {self.path.name}: {_first_line(e)}") from None
        self.load_time = time.perf_counter() - t
        self.inputs = [TensorSpec(i.get_any_name(), tuple(d.get_length() if d.is_static else None
                                                          for d in i.get_partial_shape()))
                       for i in self.compiled.inputs]
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    @property
    def compute_precision(self) -> str:
        """What the compiled model reports it computes in (f32, f16, bf16)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def executed_precisions(self) -> dict[str, dict[str, int]]:
        """Per compute layer type, how many ran in each runtime precision (from the execution graph)."""
        out: dict[str, Counter] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            layer = rt["layerType"].astype(str)
            if layer in ("Convolution", "Deconvolution", "FullyConnected", "MatMul"):
                out.setdefault(layer, Counter())[rt["runtimePrecision"].astype(str)] += 1
        return {k: dict(v) for k, v in out.items()}

    def _run(self, feeds):
        self.request.infer(feeds)
        return {name: self.request.get_output_tensor(i).data.copy() for i, name in enumerate(self.outputs)}

    def infer_many(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Throughput mode: all batches in flight through an async queue (one request per stream)."""
        ov = _ov()
        batches = [check_feeds(b, self.inputs) for b in batches]
        results: list = [None] * len(batches)
        queue = ov.AsyncInferQueue(self.compiled)

        def done(request, index):
            results[index] = {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self.outputs)}

        queue.set_callback(done)
        t = time.perf_counter()
        for i, b in enumerate(batches):
            queue.start_async(b, i)
        queue.wait_all()
        self.inference_time = time.perf_counter() - t
        return results

    @property
    def optimal_requests(self) -> int:
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("Check ", "Exception from"))]
    return (lines[0] if lines else type(e).__name__)[:200]
