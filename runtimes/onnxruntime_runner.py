"""ONNX Runtime runner (CPU execution provider by default)."""
from __future__ import annotations

import os
import time

import numpy as np

from amnet.errors import ArtifactError, RuntimeMissing
from runtimes.base import Runner, TensorSpec

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None, precision: str | None = None):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("onnxruntime is not installed: pip install onnxruntime") from None
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise ArtifactError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        t = time.perf_counter()
        try:
            self.session = ort.InferenceSession(self.path, opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises Fail/InvalidProtobuf/InvalidGraph...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{os.path.basename(self.path)} is not a loadable ONNX model: {msg[:200]}") from None
        self.load_time = time.perf_counter() - t
        self.inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                                  _DTYPES.get(i.type, i.type)) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.precision = precision or meta.get("precision", "fp32")
        if self.precision == "int8":
            # Q/DQ files are TensorRT's input. Unfused, ORT runs them as dequantize → float op, which
            # reproduces Q/DQ semantics exactly on any CPU; fused, it would use the CPU's int8 kernels
            # (AVX2 without VNNI saturates u8·s8 pairs) and the check would depend on the machine.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.session = ort.InferenceSession(self.path, opts, providers=providers or ["CPUExecutionProvider"])
            self.load_time = time.perf_counter() - t

    def _run(self, feeds):
        values = self.session.run(self.outputs, feeds)
        return dict(zip(self.outputs, (np.asarray(v) for v in values)))
