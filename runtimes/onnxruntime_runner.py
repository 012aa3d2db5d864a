"""ONNX Runtime runner (CPU execution provider by default)."""
from __future__ import annotations

import numpy as np

from amnet.core.errors import ArtifactError, first_line
from amnet.core.fileio import lazy_import
from amnet.core.runner import Runner, TensorSpec

_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None,
                 providers: list[str] | None = None):
        super().__init__(path, threads=threads, precision=precision)
        self.providers = providers or ["CPUExecutionProvider"]

    def _activate(self):
        ort = lazy_import("onnxruntime", "pip install onnxruntime", "1.20")
        if not self.path.is_file():
            raise ArtifactError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        self.session = self._session(ort, opts)
        try:
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        except (UnicodeDecodeError, RuntimeError):  # damaged metadata bytes
            raise ArtifactError(f"{self.path.name} has unreadable metadata (damaged file)") from None
        if self.precision == "int8" or self.metadata.get("precision") == "int8":
            # Q/DQ files are TensorRT's input. Unfused, ORT runs them as dequantize → float op, which
            # reproduces Q/DQ semantics exactly on any CPU; fused, it would use the CPU's int8 kernels
            # (AVX2 without VNNI saturates u8·s8 pairs) and the check would depend on the machine.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.session = self._session(ort, opts)
        self.precision = self.metadata.get("precision", self.precision)
        self.inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape),
                                  _DTYPES.get(i.type, i.type)) for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        if not self.inputs or not self.outputs:
            raise ArtifactError(f"{self.path.name} declares no {'inputs' if not self.inputs else 'outputs'}")

    def _session(self, ort, opts):
        try:
            return ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - ORT raises Fail/InvalidProtobuf/InvalidGraph...
            raise ArtifactError(f"{self.path.name} is not a loadable ONNX model: {first_line(e)}") from None

    def _run(self, feeds):
        values = self.session.run(self.outputs, feeds)
        return dict(zip(self.outputs, (np.asarray(v) for v in values)))

    def _close(self):
        self.session = None
