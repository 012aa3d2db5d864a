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
    from export.onnx_export import export_file

    return export_file(trained, tmp_path_factory.mktemp("trt"), "full", 1, 128, "x")


@pytest.fixture(scope="module")
def precision_files(fp32_onnx):
    """The onnxruntime backend's FP16 and Q/DQ INT8 files: what TensorRT builds from."""
    from export.pipeline import BuildOptions, build

    m = build(fp32_onnx, "onnxruntime", fp32_onnx.parent, BuildOptions(("fp16", "int8"), (1,), 128, calib_samples=32,
                                                                       progress=False))
    return {a["precision"]: fp32_onnx.parent / a["file"] for a in m["artifacts"] if a["precision"] != "fp32"}


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


def tensor_types(proto) -> dict[str, int]:
    """Element type of every tensor in the graph (inputs, initializers, inferred intermediates)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.input, *inferred.graph.value_info,
                                                            *inferred.graph.output]}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    return types


def test_fp16_onnx_keeps_fp32_io_and_fidelity(precision_files, heldout, limits):
    from amnet.core.metrics import psnr

    proto = onnx.load(str(precision_files["fp16"]))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in proto.graph.input)
    types = tensor_types(proto)
    assert sum(t == onnx.TensorProto.FLOAT16 for t in types.values()) > 50  # the bulk really is fp16
    gc = [n for n in proto.graph.node if "/gcs." in n.name and n.op_type == "Conv"]
    assert len(gc) == 9
    for n in gc:  # every input of every GC conv (feature map, per-sample weight, bias) is float32
        assert all(types[i] == onnx.TensorProto.FLOAT for i in n.input if i), n.name
    feeds, ref = heldout
    assert psnr(ref["face"], _run_ort(precision_files["fp16"], feeds)["face"]) >= limits.for_variant(
        "onnxruntime", "fp16")["face.psnr_min"]


def test_int8_qdq_onnx_is_symmetric_per_channel_and_excludes_gc(precision_files, heldout, limits):
    from amnet.core.metrics import psnr

    path = precision_files["int8"]
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
    # No Q/DQ on a conv's output: each feeds an InstanceNorm, which stays float.
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert not [n.name for n in q if made_by.get(n.input[0]) in ("Conv", "ConvTranspose")]
    consumers = {i for n in proto.graph.node if FLOAT_NODES.search(n.name) for i in n.input}
    producers = {n.output[0]: n for n in proto.graph.node}
    assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in consumers)
    feeds, ref = heldout
    assert psnr(ref["face"], _run_ort(path, feeds)["face"]) >= limits.for_variant("onnxruntime", "int8")["face.psnr_min"]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT present: the absent-runtime message is not reachable")
def test_missing_tensorrt_is_one_clear_line(tmp_path):
    from amnet.cli.main import main
    from export.pipeline import BuildOptions, build
    from runtimes.tensorrt_runner import TensorRTRunner

    for call in (lambda: build(tmp_path, "tensorrt", tmp_path, BuildOptions(("fp16",))),
                 lambda: TensorRTRunner(tmp_path / "x.engine").activate()):
        with pytest.raises(RuntimeMissing, match="tensorrt is not installed: .*pip install tensorrt") as e:
            call()
        assert "\n" not in str(e.value)
    assert main(["build", str(tmp_path), "--runtime", "tensorrt", "--output", str(tmp_path)]) == 2


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


def test_engine_cache_key_covers_every_build_setting():
    from export.tensorrt_build import cache_key

    base = cache_key("sha", "10.16", "NVIDIA H100", "fp16")
    assert base == cache_key("sha", "10.16", "NVIDIA H100", "fp16", False, 2 << 30)
    others = [cache_key("sha2", "10.16", "NVIDIA H100", "fp16"), cache_key("sha", "11.4", "NVIDIA H100", "fp16"),
              cache_key("sha", "10.16", "NVIDIA H200", "fp16"), cache_key("sha", "10.16", "NVIDIA H100", "int8"),
              cache_key("sha", "10.16", "NVIDIA H100", "fp16", version_compatible=True),
              cache_key("sha", "10.16", "NVIDIA H100", "fp16", workspace=1 << 30)]
    assert len({base, *others}) == 7


def test_fp32_engines_turn_tf32_off():
    from types import SimpleNamespace

    from export.tensorrt_build import builder_flags

    trt = SimpleNamespace(BuilderFlag=SimpleNamespace(TF32="TF32", VERSION_COMPATIBLE="VC"))
    assert builder_flags(trt, "fp32", False) == ([], ["TF32"])
    assert builder_flags(trt, "fp16", True) == (["VC"], [])
    assert builder_flags(trt, "int8", False) == ([], [])


def test_a_dynamic_batch_onnx_is_refused_in_one_line(small_model, tmp_path):
    from amnet.core.errors import InputError
    from export.onnx_export import export_file
    from export.pipeline import BuildOptions, fp32_onnx_inputs

    dyn = export_file(small_model, tmp_path, "full", None, 32, "x")
    with pytest.raises(InputError, match="dynamic batch: builds need a fixed-batch export"):
        fp32_onnx_inputs(dyn, tmp_path, BuildOptions(("fp16",)))


@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)
def test_engine_parity_on_gpu(fp32_onnx, precision_files, heldout, limits):
    from amnet.core.metrics import psnr
    from benchmarks.parity import run_in_batches
    from export.pipeline import BuildOptions, build
    from runtimes.registry import open_runner

    feeds, ref = heldout
    m = build(fp32_onnx.parent, "tensorrt", fp32_onnx.parent, BuildOptions(("fp16", "int8"), (1,), 128, 32, progress=False))
    for a in (a for a in m["artifacts"] if a["runtime"] == "tensorrt"):
        with open_runner(fp32_onnx.parent / a["file"], cuda_graph=True) as r:
            bound = limits.for_variant("tensorrt", a["precision"])["face.psnr_min"]
            assert psnr(ref["face"], run_in_batches(r, feeds, 1)["face"]) >= bound
