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

import numpy as np

from amnet.core.errors import AmnetError, ArtifactError, InputError
from amnet.core.fileio import lazy_import
from amnet.core.cpu import float_precision
from amnet.core.runner import Runner, TensorSpec, check_feeds



def _ov():
    return lazy_import("openvino", "pip install openvino", "2025.0")


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None, mode: str = "latency",
                 cache_dir: str | os.PathLike | None = None, compute: str | None = None, streams: int | None = None):
        super().__init__(path, threads=threads, precision=precision)
        if mode not in ("latency", "throughput"):
            raise InputError(f"OpenVINO mode must be 'latency' or 'throughput', got {mode!r}")
        self.mode, self.cache_dir, self.compute, self.streams = mode, cache_dir, compute, streams

    def _activate(self):
        ov = _ov()
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise ArtifactError(f"OpenVINO IR needs both {self.path.name} and {self.path.with_suffix('.bin').name}")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as e:  # noqa: BLE001 - OV raises RuntimeError with long multi-line text
            raise ArtifactError(f"{self.path.name} is not a readable OpenVINO IR: {_first_line(e)}") from None
        info = model.get_rt_info()
        # rt_info values are OVAny: .astype(str) gives the stored string (str() gives the wrapper's repr).
        self.metadata = {k: info[k].astype(str) for k in ("precision", "audio_delta", "batch", "gc_form")
                         if k in info}
        self.precision = self.metadata.get("precision", self.precision)
        # What the float parts compute in (amnet.core.cpu): FP32 always f32; INT8/FP16 bf16 where the CPU
        # has native bf16 (unless told otherwise), f32 elsewhere.
        compute = self.compute if self.compute in ("f16",) else float_precision(self.precision, self.compute)
        config = {"PERFORMANCE_HINT": self.mode.upper(), "INFERENCE_PRECISION_HINT": compute}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.streams:
            config["NUM_STREAMS"] = self.streams
        if self.cache_dir:
            config["CACHE_DIR"] = str(self.cache_dir)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"OpenVINO could not compile {self.path.name}: {_first_line(e)}") from None
        self.inputs = [TensorSpec(i.get_any_name(), tuple(d.get_length() if d.is_static else None
                                                          for d in i.get_partial_shape()))
                       for i in self.compiled.inputs]
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        if not self.inputs or not self.outputs:
            raise ArtifactError(f"{self.path.name} declares no {'inputs' if not self.inputs else 'outputs'}")
        self.request = self.compiled.create_infer_request()

    def _close(self):
        self.request = self.compiled = None

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
        """Throughput mode: all batches in flight, one infer request per stream, round robin.

        Plain requests and wait(), not AsyncInferQueue: its Python callbacks run on the plugin's
        threads, and freeing the compiled model afterwards could deadlock with one of them on the GIL.
        """
        if not self.is_active:
            raise AmnetError("OpenVinoRunner used before activate() (use it in a `with` block)")
        batches = [check_feeds(b, self.inputs) for b in batches]
        results: list = [None] * len(batches)
        requests = [self.compiled.create_infer_request() for _ in range(max(1, self.optimal_requests))]
        in_flight: list[int | None] = [None] * len(requests)

        def collect(k: int) -> None:
            requests[k].wait()
            results[in_flight[k]] = {name: requests[k].get_output_tensor(i).data.copy()
                                     for i, name in enumerate(self.outputs)}

        t = time.perf_counter()
        for i, b in enumerate(batches):
            k = i % len(requests)
            if in_flight[k] is not None:
                collect(k)
            requests[k].start_async(b)
            in_flight[k] = i
        for k in range(len(requests)):
            if in_flight[k] is not None:
                collect(k)
        self.inference_time = time.perf_counter() - t
        return results

    @property
    def optimal_requests(self) -> int:
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("Check ", "Exception from"))]
    return (lines[0] if lines else type(e).__name__)[:200]
