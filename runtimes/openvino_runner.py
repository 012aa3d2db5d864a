"""OpenVINO runner (CPU plugin): latency mode (one sync request) or throughput mode (async queue, streams).

The precision a compiled model really runs is read back from it
(``INFERENCE_PRECISION_HINT`` and the execution graph's per-op runtime
precisions), never assumed from what was asked for: on a CPU without native
FP16 an f16 hint falls back to f32, and on AMX/AVX-512-BF16 CPUs the plugin
defaults to bf16 unless told f32.

``hold_source=True`` (for `reenact`, where one face drives a whole video)
splits the graph where the drive signals first arrive, at the output of cell 0
(GC 0 reads it): the encoder and cell 0 run once per distinct source image and
each frame runs only the rest. Bit-identical outputs; measured 7 % less time per
frame at 128² and 256² on a 2-core AMD EPYC (Zen 3, AVX2).
"""
from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np

from amnet.core.errors import AmnetError, ArtifactError, InputError
from amnet.core.fileio import lazy_import
from amnet.core.cpu import float_precision
from amnet.core.progress import native_stderr_dropped
from amnet.core.runner import Runner, TensorSpec, check_feeds

SOURCE_CUT = "/reenactor/cells.0/Relu"  # the last tensor that depends on the source image alone


def _ov():
    return lazy_import("openvino", "pip install openvino", "2025.0")


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None, mode: str = "latency",
                 cache_dir: str | os.PathLike | None = None, compute: str | None = None, streams: int | None = None,
                 hold_source: bool = False, perf_count: bool = False):
        super().__init__(path, threads=threads, precision=precision)
        if mode not in ("latency", "throughput"):
            raise InputError(f"OpenVINO mode must be 'latency' or 'throughput', got {mode!r}")
        self.mode, self.cache_dir, self.compute, self.streams = mode, cache_dir, compute, streams
        self.hold_source = hold_source
        self.perf_count = perf_count  # per-node timings (benchmarks.profile_layers): the product's config plus this
        self.source_request = None  # hold_source: the encoder + cell 0 part, and the last source it ran on
        self._held: tuple[np.ndarray, np.ndarray] | None = None

    def _activate(self):
        ov = _ov()
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise ArtifactError(f"OpenVINO IR needs both {self.path.name} and {self.path.with_suffix('.bin').name}")
        core = ov.Core()
        try:
            with native_stderr_dropped():  # on a damaged file, frontends probing it log lines of their own
                model = core.read_model(str(self.path))
        except Exception as e:  # noqa: BLE001 - OV raises RuntimeError with long multi-line text
            raise ArtifactError(f"{self.path.name} is not a readable OpenVINO IR: {_openvino_said(e)}") from None
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
        if self.perf_count:
            config["PERF_COUNT"] = True
        self.inputs = [TensorSpec(i.get_any_name(), tuple(d.get_length() if d.is_static else None
                                                          for d in i.get_partial_shape()))
                       for i in model.inputs]
        split = split_at_source(core, self.path, model) if self.hold_source else None
        try:
            if split:  # the driven part's settings: INT8 kernels round by thread layout, and the split must not
                self.source_request = core.compile_model(split[0], "CPU", config).create_infer_request()
            self.compiled = core.compile_model(split[1] if split else model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"OpenVINO could not compile {self.path.name}: {_openvino_said(e)}") from None
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        if not self.inputs or not self.outputs:
            raise ArtifactError(f"{self.path.name} declares no {'inputs' if not self.inputs else 'outputs'}")
        self.request = self.compiled.create_infer_request()

    def _close(self):
        self.request = self.compiled = self.source_request = self._held = None

    @property
    def holds_source(self) -> bool:
        """hold_source was asked for and the IR could be split (else every call runs the whole graph)."""
        return self.source_request is not None

    def _driven(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """hold_source: the feeds of the driven part, the source replaced by its features (run once per source)."""
        if self.source_request is None:
            return feeds
        source = feeds["source"]
        if self._held is None or not np.array_equal(self._held[0], source):
            self.source_request.infer({"source": source})
            self._held = (source.copy(), self.source_request.get_output_tensor(0).data.copy())
        return {**{k: v for k, v in feeds.items() if k != "source"}, "source_features": self._held[1]}

    @property
    def compute_precision(self) -> str:
        """What the compiled model reports it computes in (f32, f16, bf16)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def executed_precisions(self, where: str | None = None) -> dict[str, dict[str, int]]:
        """Per compute layer type, how many ran in each runtime precision (from the execution graph); ``where``,
        a regex, keeps only the nodes one of whose original layer names it matches (a fused node keeps them all)."""
        import re

        out: dict[str, Counter] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            layer = rt["layerType"].astype(str)
            if where and not re.search(where, rt["originalLayersNames"].astype(str)):
                continue
            if layer in ("Convolution", "Deconvolution", "FullyConnected", "MatMul"):
                out.setdefault(layer, Counter())[rt["runtimePrecision"].astype(str)] += 1
        return {k: dict(v) for k, v in out.items()}

    def _run(self, feeds):
        self.request.infer(self._driven(feeds))
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
            requests[k].start_async(self._driven(b))
            in_flight[k] = i
        for k in range(len(requests)):
            if in_flight[k] is not None:
                collect(k)
        self.inference_time = time.perf_counter() - t
        return results

    @property
    def optimal_requests(self) -> int:
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


def split_at_source(core, xml, tail_model):
    """(source → cell 0 output, `tail_model` changed to take that output as input 'source_features'), or None
    when the graph has no such cut (a fuser-only IR, or a graph where a drive signal reaches the encoder).

    The precision reports of a split runner (`compute_precision`, `executed_precisions`) cover the driven part.
    """
    import openvino.opset13 as ops

    def cut(model):
        return next((n for n in model.get_ordered_ops() if n.get_friendly_name() == SOURCE_CUT), None)

    tail_cut = cut(tail_model)
    if tail_cut is None:
        return None
    head_model = core.read_model(str(xml))
    head_cut = cut(head_model)
    sources = [p for p in head_model.get_parameters() if "source" in p.output(0).get_names()]
    if not sources:
        return None
    try:  # each part must be closed over its parameters: OV refuses a model that reaches an undeclared one
        head = _ov().Model([ops.result(head_cut.output(0))], sources, "source")
    except Exception:  # noqa: BLE001 - a drive signal reaches the encoder: no cut here
        return None
    features = ops.parameter(tail_cut.output(0).get_partial_shape(), tail_cut.output(0).get_element_type(),
                             name="source_features")
    features.output(0).set_names({"source_features"})
    consumers = list(tail_cut.output(0).get_target_inputs())
    for consumer in consumers:
        consumer.replace_source_output(features.output(0))
    try:
        tail = _ov().Model(tail_model.get_results(), [p for p in tail_model.get_parameters()
                                                      if "source" not in p.output(0).get_names()] + [features], "driven")
    except Exception:  # noqa: BLE001 - the source reaches past cell 0: undo, the whole graph runs
        for consumer in consumers:
            consumer.replace_source_output(tail_cut.output(0))
        return None
    return head, tail


def _openvino_said(e: Exception) -> str:
    """OpenVINO's reason, without the "Check '…' failed at src/…" and "Exception from" lines it wraps it in."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("Check ", "Exception from"))]
    return (lines[0] if lines else type(e).__name__)[:200]
