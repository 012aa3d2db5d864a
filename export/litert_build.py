"""The litert backend's builder: checkpoint → `.tflite` (litert-torch) in FP32 and FP16 weights.

FP16 stores the convolution and linear weights as float16 with a DEQUANTIZE in front of each (what
TensorFlow Lite's float16 quantization writes): XNNPACK folds those at load and computes in fp32, so the file
is about half the size. Each artifact's delegation (which ops XNNPACK took, the share of conv multiply-adds) is
read back from the interpreter and recorded in its manifest entry; what the file is (audio delta, GC form,
precision) is also written into its own metadata (`with_metadata`), for copies that travel without the manifest.
"""
from __future__ import annotations

import os
from pathlib import Path

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from amnet.core.errors import InputError
from amnet.core.fileio import atomic_write, lazy_import, tool_versions
from export.mobile import MODEL_INPUTS, artifact_name, entry, file_metadata, on_device_module, sample_inputs

BUILD_HINT = "pip install 'amnet-deploy[mobile-build]' (litert-torch)"
FP16_WEIGHT_INPUTS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}  # op → its weight input


def build(checkpoint: Path, out_dir: Path, opts) -> dict:
    litert_torch = lazy_import("litert_torch", BUILD_HINT, None, "litert-torch")
    import torch

    from amnet.checkpoint import load_checkpoint
    from amnet.core.progress import progress_bar, quiet_output
    from runtimes.litert_runner import LiteRTRunner

    loaded = load_checkpoint(checkpoint)
    model = loaded.require_full()
    mobile = on_device_module(model)
    jobs = [(b, p) for b in opts.batches for p in opts.precisions]
    with Stage(out_dir) as stage:
        converted = {}
        for batch, precision in progress_bar(jobs, desc="litert", disable=not opts.progress, unit="variant"):
            if batch not in converted:
                with torch.no_grad(), quiet_output(not opts.progress):
                    edge = litert_torch.convert(mobile, sample_kwargs=sample_inputs(batch, opts.resolution))
                converted[batch] = _flatbuffer(edge)
            flatbuffer = converted[batch]
            if precision == Precision.FP16:
                flatbuffer = fp16_weights(flatbuffer)
            flatbuffer = with_metadata(flatbuffer, file_metadata(model, str(precision)))
            name = artifact_name(batch, opts.resolution, "litert", str(precision), ".tflite")
            path = atomic_write(stage.path(name), lambda tmp, data=flatbuffer: Path(tmp).write_bytes(data))
            with LiteRTRunner(path, threads=min(2, os.cpu_count() or 1), precision=str(precision)) as r:
                delegation = r.delegation()
                if [s.name for s in r.inputs] != list(MODEL_INPUTS):
                    raise InputError(f"{name}: the converter named the inputs {[s.name for s in r.inputs]}")
            stage.add(entry(name, "litert", str(precision), batch, opts.resolution, model, loaded, delegation,
                            weights=str(precision)), [path])
        return artifacts.publish(stage, {"source_checkpoint": loaded.path.name, "source_sha256": loaded.sha256,
                                         "versions": tool_versions("torch", "litert-torch", "ai-edge-litert")})


def _flatbuffer(edge) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        edge.export(f"{tmp}/model.tflite")
        return Path(f"{tmp}/model.tflite").read_bytes()


def fp16_weights(flatbuffer: bytes) -> bytes:
    """The same model with each conv / linear weight stored as float16 behind a DEQUANTIZE op."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    graph = model.subgraphs[0]
    codes = [c.builtinCode if c.builtinCode else c.deprecatedBuiltinCode for c in model.operatorCodes]
    op_name = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    dequantize = _opcode(model, schema, schema.BuiltinOperator.DEQUANTIZE)
    first_use = {}  # weight tensor → the float16 tensor that now feeds it
    for op in graph.operators:
        slot = FP16_WEIGHT_INPUTS.get(op_name.get(codes[op.opcodeIndex]))
        if slot is None or slot >= len(op.inputs) or op.inputs[slot] < 0:
            continue
        t = op.inputs[slot]
        tensor = graph.tensors[t]
        buffer = model.buffers[tensor.buffer] if tensor.buffer else None
        if t in first_use or tensor.type != schema.TensorType.FLOAT32 or buffer is None or buffer.data is None:
            continue
        half = schema.BufferT()
        half.data = np.frombuffer(bytes(bytearray(buffer.data)), np.float32).astype(np.float16).view(np.uint8)
        model.buffers.append(half)
        twin = schema.TensorT()
        twin.shape, twin.type, twin.buffer = tensor.shape, schema.TensorType.FLOAT16, len(model.buffers) - 1
        twin.name = (tensor.name or b"") + b"_fp16"
        graph.tensors.append(twin)
        tensor.buffer = 0  # buffer 0 is the empty sentinel: the tensor is now the DEQUANTIZE's output
        first_use[t] = len(graph.tensors) - 1
    ops = []
    for t, half in first_use.items():
        dq = schema.OperatorT()
        dq.opcodeIndex, dq.inputs, dq.outputs = dequantize, [half], [t]
        ops.append(dq)
    graph.operators = ops + graph.operators  # constants first: every weight exists before its reader runs
    used = {t.buffer for g in model.subgraphs for t in g.tensors}
    for i, buffer in enumerate(model.buffers):
        if i not in used:  # the float32 copies: kept, they would make the file larger, not smaller
            buffer.data = None
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_metadata(flatbuffer: bytes, meta: dict) -> bytes:
    """The same model carrying ``meta`` as JSON in its own metadata: a copy without the manifest still says
    what it is (the runner reads it back)."""
    import json

    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from runtimes.litert_runner import METADATA_NAME

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != METADATA_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model, schema, code: int) -> int:
    for i, c in enumerate(model.operatorCodes):
        if (c.builtinCode or c.deprecatedBuiltinCode) == code:
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 2
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1
