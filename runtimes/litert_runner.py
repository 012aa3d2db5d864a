"""LiteRT (TensorFlow Lite's successor) runner: a `.tflite` on the interpreter with its default XNNPACK delegate.

The interpreter applies XNNPACK itself (``num_threads`` is the delegate's thread count too); what it took is
read back from the graph: each DELEGATE node replaced a connected set of the model's nodes, bounded by its own
inputs and outputs (`delegation`). The signature names the inputs (source, audio, pose, eye); outputs
``output_0``, ``output_1`` are the face and the landmarks. What the file was built from (audio delta, GC form,
precision) is read from its own metadata (`METADATA_NAME`, JSON), so a loose copy without its manifest runs as
built; files from before it was written take it from the manifest entry that lists them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from amnet.core import artifacts
from amnet.core.errors import ArtifactError, first_line
from amnet.core.fileio import lazy_import
from amnet.core.runner import MODEL_INPUTS, Runner, TensorSpec

HINT = "pip install 'amnet-deploy[mobile]' (ai-edge-litert)"
OUTPUT_NAMES = ("face", "landmarks")
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
METADATA_NAME = "amnet"  # the flatbuffer's metadata entry the builder writes
METADATA_KEYS = ("audio_delta", "gc_form", "precision")


class LiteRTRunner(Runner):
    name = "litert"

    def _activate(self):
        interpreter = lazy_import("ai_edge_litert.interpreter", HINT, None, "ai-edge-litert")
        if not self.path.is_file():
            raise ArtifactError(f"LiteRT model not found: {self.path}")
        try:
            self.interpreter = interpreter.Interpreter(model_path=str(self.path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
            self.signature = self.interpreter.get_signature_runner()
            details = self.signature.get_input_details()
        except Exception as e:  # noqa: BLE001 - ValueError for a damaged flatbuffer, RuntimeError for a bad graph
            raise ArtifactError(f"{self.path.name} is not a loadable LiteRT model: {first_line(e)}") from None
        if sorted(details) != sorted(MODEL_INPUTS):
            raise ArtifactError(f"{self.path.name} takes {', '.join(sorted(details))}, not the model's "
                                f"{', '.join(MODEL_INPUTS)}")
        self.inputs = [TensorSpec(n, tuple(int(d) for d in details[n]["shape"]), np.dtype(details[n]["dtype"]).name)
                       for n in MODEL_INPUTS]
        self.outputs = list(OUTPUT_NAMES)
        found = artifacts.entry_for(self.path)
        entry = found[1] if found else {}
        own = file_metadata(self.path)
        self.metadata = {k: own.get(k, entry.get(k)) for k in METADATA_KEYS if k in own or k in entry}
        self.precision = self.metadata.get("precision", self.precision)

    def _run(self, feeds):
        out = self.signature(**feeds)
        return {name: np.asarray(out[f"output_{i}"]) for i, name in enumerate(OUTPUT_NAMES)}

    def _close(self):
        self.signature = self.interpreter = None

    def delegation(self) -> dict:
        """Which of the model's ops XNNPACK took, and what share of the convolutions' multiply-adds."""
        ops = self.interpreter._get_ops_details()  # the model's nodes, then one DELEGATE node per partition
        producer = {int(t): o for o in ops if o["op_name"] != "DELEGATE" for t in o["outputs"]}
        delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
        taken: set[int] = set()
        for d in delegates:  # walk back from a partition's outputs to its inputs: the nodes it replaced
            boundary, stack = {int(t) for t in d["inputs"]}, [int(t) for t in d["outputs"]]
            while stack:
                t = stack.pop()
                o = producer.get(t)
                if t in boundary or o is None or o["index"] in taken:
                    continue
                taken.add(o["index"])
                stack.extend(int(i) for i in o["inputs"] if i >= 0)
        model_ops = [o for o in ops if o["op_name"] != "DELEGATE"]
        off = [o for o in model_ops if o["index"] not in taken]
        convs = [o for o in model_ops if o["op_name"] in CONV_OPS]
        macs = {o["index"]: self._conv_macs(o) for o in convs}
        total = sum(macs.values())
        return {"delegate": "XNNPACK", "partitions": len(delegates), "ops": len(model_ops),
                "ops_delegated": len(model_ops) - len(off), "off_delegate": _count(o["op_name"] for o in off),
                "convs": len(convs), "convs_off_delegate": sum(o["index"] not in taken for o in convs),
                "conv_macs": total,
                "conv_macs_delegated": sum(m for i, m in macs.items() if i in taken) / total if total else 1.0}

    def _conv_macs(self, op: dict) -> int:
        def shape(t):
            return [int(d) for d in self.interpreter._get_tensor_details(int(t), 0)["shape"]]

        out = int(np.prod(shape(op["outputs"][0])))
        if op["op_name"] == "TRANSPOSE_CONV":  # inputs: output shape, filter O×KH×KW×I, input
            o, kh, kw, _ = shape(op["inputs"][1])
            return int(np.prod(shape(op["inputs"][2]))) * kh * kw * o
        filt = shape(op["inputs"][1])  # CONV_2D: O×KH×KW×I; DEPTHWISE_CONV_2D: 1×KH×KW×C (one tap set per output)
        taps = int(np.prod(filt[1:-1]))
        return out * taps * (filt[-1] if op["op_name"] != "DEPTHWISE_CONV_2D" else 1)


def file_metadata(path) -> dict:
    """The builder's JSON metadata in a `.tflite` ({} when it has none: built before it was written)."""
    import json
    import mmap

    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:  # the interpreter has loaded the file already: only our entry can be malformed
            model = schema.Model.GetRootAsModel(data, 0)
            for i in range(model.MetadataLength()):
                if model.Metadata(i).Name() == METADATA_NAME.encode():
                    meta = json.loads(model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes())
                    break
            else:
                return {}
        except (ValueError, AttributeError, IndexError) as e:  # JSONDecodeError is a ValueError
            raise ArtifactError(f"{Path(path).name} has unreadable {METADATA_NAME} metadata (damaged file): "
                                f"{first_line(e)}") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k, ""), str) for k in METADATA_KEYS):
        raise ArtifactError(f"{Path(path).name}: its {METADATA_NAME} metadata is not what amnet-deploy writes")
    return {k: meta[k] for k in METADATA_KEYS if k in meta}


def _count(names) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return counts
