"""TensorRT: the precision-carrying ONNX files are verified on CPU; engines need a GPU and TensorRT."""
import importlib.util

import numpy as np
import onnx
import pytest

from amnet.core.errors import RuntimeMissing

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT is not installed (no NVIDIA GPU here): run benchmarks/gpu_smoke.sh on a GPU machine"


@pytest.fixture(scope="module")
def fp32_onnx(trained, tmp_path_factory):
    from export.onnx_export import export_one

    d = tmp_path_factory.mktemp("trt")
    art, _ = export_one(trained, d, "full", 1, 128, "x")
    return d / art.file


@pytest.fixture(scope="module")
def heldout(trained):
    from amnet.realdata import load_inputs
    from runtimes.pytorch_runner import reference_outputs

    feeds = load_inputs("heldout", 128, 8)
    return feeds, reference_outputs(trained, feeds)


def _run_ort(path, feeds):
    from benchmarks.parity import run_in_batches
    from runtimes.onnxruntime_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, threads=2) as r:
        return run_in_batches(r, feeds, 1)


def test_fp16_onnx_keeps_fp32_io_and_fidelity(fp32_onnx, heldout):
    from amnet.core.metrics import psnr
    from export.tensorrt_build import precision_onnx

    path = precision_onnx(fp32_onnx, "fp16", fp32_onnx.parent, 128, 1, 32)
    proto = onnx.load(str(path))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in proto.graph.input)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    gc = [n for n in proto.graph.node if "/gcs." in n.name and n.op_type == "Conv"]
    assert gc and all(n.input[0] and "Cast" not in n.input[0] for n in gc)  # GC convs kept in float32
    feeds, ref = heldout
    assert psnr(ref["face"], _run_ort(path, feeds)["face"]) >= 40


def test_int8_qdq_onnx_is_symmetric_per_channel_and_excludes_gc(fp32_onnx, heldout):
    from amnet.core.metrics import psnr
    from export.tensorrt_build import precision_onnx

    path = precision_onnx(fp32_onnx, "int8", fp32_onnx.parent, 128, 1, 32)
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert q, "no Q/DQ nodes"
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in q if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all((z == 0).all() and z.dtype == np.int8 for z in zero_points)  # symmetric int8
    dq_axes = [a.i for n in proto.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert dq_axes, "no per-channel weight scales"
    from export.int8_scope import FLOAT_NODES

    # GC path, fuser and the GC-reading convs (e.g. cells.2's first conv) see no dequantized input.
    assert any(FLOAT_NODES.search(n.name) and n.op_type == "Conv" and "/cells.2/body/body.0/" in n.name
               for n in proto.graph.node)
    consumers = {i for n in proto.graph.node if FLOAT_NODES.search(n.name) for i in n.input}
    producers = {n.output[0]: n for n in proto.graph.node}
    assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in consumers)
    feeds, ref = heldout
    assert psnr(ref["face"], _run_ort(path, feeds)["face"]) >= 30


@pytest.mark.skipif(HAS_TRT, reason="TensorRT present: the absent-runtime message is not reachable")
def test_missing_tensorrt_is_one_clear_line(tmp_path):
    from export.tensorrt_build import build_tensorrt
    from runtimes.tensorrt_runner import TensorRTRunner

    for call in (lambda: build_tensorrt(tmp_path, ["fp16"], tmp_path), lambda: TensorRTRunner(tmp_path / "x.engine")):
        with pytest.raises(RuntimeMissing, match="TensorRT is not installed: .*pip install tensorrt") as e:
            call()
        assert "\n" not in str(e.value)


def test_stale_engine_is_refused_by_its_sidecar(tmp_path):
    import json

    from amnet.core.errors import ArtifactError
    from runtimes.tensorrt_runner import check_engine_matches, sidecar_path

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError, match="no m.engine.json manifest"):
        check_engine_matches(engine, "10.9.0", "NVIDIA H100")
    sidecar_path(engine).write_text(json.dumps({"tensorrt": "10.3.0", "gpu": "NVIDIA T4"}))
    with pytest.raises(ArtifactError, match="built with TensorRT 10.3.0 on NVIDIA T4.*rebuild"):
        check_engine_matches(engine, "10.9.0", "NVIDIA H100")
    assert check_engine_matches(engine, "10.3.0", "NVIDIA T4")["gpu"] == "NVIDIA T4"
    assert engine.read_bytes() == b"\0" * 64  # the sidecar, not bytes prepended to the engine


@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)
def test_engine_parity_on_gpu(fp32_onnx, heldout, tmp_path):
    from amnet.core.metrics import psnr
    from benchmarks.parity import run_in_batches
    from export.tensorrt_build import build_engine, precision_onnx
    from runtimes.tensorrt_runner import TensorRTRunner

    feeds, ref = heldout
    for precision, bound in (("fp16", 40), ("int8", 30)):
        engine, _ = build_engine(precision_onnx(fp32_onnx, precision, tmp_path, 128, 1, 32), tmp_path, precision)
        with TensorRTRunner(engine, cuda_graph=True) as r:
            assert psnr(ref["face"], run_in_batches(r, feeds, 1)["face"]) >= bound
