"""The files an ONNX model makes its runtime read beside it (external data), found without onnx or protobuf.

A tensor saved with ``onnx.save(..., save_as_external_data=True)`` keeps its
bytes in another file, named by its ``external_data`` entry ``location`` and
read by the runtime from the model's folder. The manifest must vouch for those
files too, and the torch-free install (ONNX Runtime only) has no onnx package to
parse the model with: this reads just the protobuf fields that can hold a
tensor (graphs, nodes, attributes, sparse tensors, functions, training graphs),
with a stack instead of recursion, so a hostile nesting cannot overflow it.
"""
from __future__ import annotations

from pathlib import Path

from amnet.core.errors import ArtifactError

# For each message kind on a path to a TensorProto: field number → the kind it holds (field numbers of onnx.proto).
_HOLDS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # external_data: StringStringEntryProto (key 1, value 2)
}


def external_data(path: Path) -> list[str]:
    """The ``location`` of every external-data tensor in the ONNX file, in order, each once."""
    buf = memoryview(Path(path).read_bytes())
    found: list[str] = []
    stack = [("model", 0, len(buf))]
    try:
        while stack:
            kind, start, end = stack.pop()
            if kind == "entry":
                entry = {f: bytes(buf[a:b]).decode() for f, (a, b) in _fields(buf, start, end) if f in (1, 2)}
                if entry.get(1) == "location" and entry.get(2, "") not in found:
                    found.append(entry.get(2, ""))
                continue
            for field, span in _fields(buf, start, end):
                inner = _HOLDS[kind].get(field)
                if inner is not None and span is not None:
                    stack.append((inner, *span))
    except (ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        raise ArtifactError(f"{Path(path).name} is not a readable ONNX file (damaged protobuf)") from None
    return found


def _fields(buf: memoryview, start: int, end: int):
    """(field number, (start, end) of a length-delimited value, or None) for each field of one message."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
            yield field, None
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated field")
            yield field, (i, i + n)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            yield field, None
        else:
            raise ValueError(f"wire type {wire}")
    if i != end:
        raise ValueError("truncated message")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
