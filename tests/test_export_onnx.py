"""ONNX export: graph structure, metadata, ORT parity on held-out real inputs, bad input."""
import subprocess
import sys

import numpy as np
import onnx
import pytest

from amnet.core.errors import ArtifactError, InputError
from export.onnx_export import export_file, parity, to_onnx
from export.pipeline import PARITY_MAX_ABS
from tests.conftest import ROOT, random_inputs


def conv_nodes(proto):
    inits = {i.name for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            yield n, group, n.input[1] in inits


@pytest.mark.parametrize("batch", [1, 3])
def test_grouped_export_holds_batch_folded_convs(small_model, batch):
    proto = to_onnx(small_model, "full", batch, 32)
    grouped = [(n, g) for n, g, const_w in conv_nodes(proto) if not const_w]
    # Nine GC modules, each one grouped Conv over N·C channels with a weight computed in the graph.
    assert sorted(g for _, g in grouped) == sorted([batch * 152] * 8 + [batch * 128])
    assert proto.opset_import[0].version == 17


def test_dynamic_export_has_symbolic_batch_and_no_dynamic_convs(small_model):
    proto = to_onnx(small_model, "full", None, 32)
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "N", value.name
    assert all(const_w for _, _, const_w in conv_nodes(proto))  # GC became elementwise


def test_subpixel_conv_is_the_transpose_conv():
    import torch
    from torch import nn

    from export.subpixel import SubPixelConvTranspose, convertible

    torch.manual_seed(0)
    convt = nn.ConvTranspose2d(5, 7, 3, 2, 1, output_padding=1, bias=True)
    x = torch.randn(2, 5, 6, 9)  # not square: rows and columns map alike but separately
    with torch.no_grad():
        got, want = SubPixelConvTranspose(convt)(x), convt(x)
    assert got.shape == want.shape == (2, 7, 12, 18)
    assert (got - want).abs().max() < 1e-5
    assert not convertible(nn.ConvTranspose2d(5, 7, 3, 2, 1))  # no output padding: another shape, stays as is
    with pytest.raises(ValueError):
        SubPixelConvTranspose(nn.ConvTranspose2d(5, 7, 4, 2, 1))


def test_export_has_no_transpose_conv_and_leaves_the_model_alone(small_model):
    from torch import nn

    proto = to_onnx(small_model, "full", 1, 32)
    ops = [n.op_type for n in proto.graph.node]
    assert "ConvTranspose" not in ops and ops.count("DepthToSpace") == 2
    assert [type(m) for m in small_model.reenactor.decoder if isinstance(m, nn.ConvTranspose2d)] == \
        [nn.ConvTranspose2d] * 2


def test_metadata_and_checker(small_model, tmp_path):
    path = export_file(small_model, tmp_path, "full", 2, 32, "abc123")
    onnx.checker.check_model(str(path))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["source_checkpoint_sha256"] == "abc123" and meta["gc_form"] == "grouped"
    assert meta["batch"] == "2" and meta["resolution"] == "32" and meta["gc_kernel"] == "1"
    assert meta["producer"].startswith("amnet-deploy") and meta["simplified"] == "true"
    assert meta["upsampling"] == "subpixel" and meta["gc_heads"] == "fused"


@pytest.mark.parametrize("batch", [1, None])
def test_the_gc_mlps_are_exported_as_one_gemm_and_two_batched_matmuls(small_model, batch):
    proto = to_onnx(small_model, "full", batch, 32)
    products = sorted(n.name for n in proto.graph.node
                      if n.op_type in ("Gemm", "MatMul") and n.name.startswith("/reenactor/"))
    assert products == ["/reenactor/gc_heads/Gemm", "/reenactor/gc_heads/MatMul", "/reenactor/gc_heads/MatMul_1"]
    assert small_model.reenactor.gc_heads is None  # the model is left as it was


def test_fp16_keeps_the_gc_heads_in_float32(small_model):
    from export.onnx_precision import to_fp16

    proto = to_fp16(to_onnx(small_model, "full", 1, 32, simplify=False))  # initializers as traced
    types = {i.name: i.data_type for i in proto.graph.initializer}
    weight = {n.name: types.get(n.input[1]) for n in proto.graph.node if len(n.input) > 1}
    assert weight["/reenactor/gc_heads/Gemm"] == weight["/reenactor/gc_heads/MatMul_1"] == onnx.TensorProto.FLOAT
    assert weight["/reenactor/cells.1/body/body.3/Conv"] == onnx.TensorProto.FLOAT16


def test_a_scope_written_before_the_fused_heads_keeps_them_float(tmp_path):
    import json

    from export.int8_scope import SCOPE_FORMAT, load_scope

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": SCOPE_FORMAT, "float_nodes": [r"/gcs\.\d+/", "/fuser/"]}))
    nodes = load_scope(old).nodes
    assert nodes.search("/reenactor/gc_heads/MatMul_1") and nodes.search("/reenactor/gcs.3/Conv")
    assert not nodes.search("/reenactor/cells.1/body/body.3/Conv")
    partial = tmp_path / "partial.json"  # one that names the GC convs only would put their MLPs in INT8
    partial.write_text(json.dumps({"format": SCOPE_FORMAT, "float_nodes": [r"/gcs\.\d+/Conv", "/fuser/"]}))
    with pytest.raises(InputError, match="must keep the GC path float"):
        load_scope(partial)
    partial.write_text(json.dumps({"format": SCOPE_FORMAT, "float_nodes": [r"/gcs\.\d+/", "(unclosed"]}))
    with pytest.raises(InputError, match="not a valid pattern"):  # one line, before any pattern is used
        load_scope(partial)


@pytest.mark.parametrize("resolution", [128, 256])
def test_ort_parity_on_heldout_real_inputs(trained, tmp_path, resolution):
    from amnet.realdata import parity_feeds

    feeds = parity_feeds(trained, resolution, limit=4)
    for part, batch in (("full", 1), ("full", 2), ("full", None), ("fuser", 1), ("reenactor", 2)):
        path = export_file(trained, tmp_path, part, batch, resolution, "x")
        errs = parity(trained, path, part, feeds, batch, threads=2)
        for out, e in errs.items():
            assert e["max_abs"] <= PARITY_MAX_ABS, (path.name, out, e)


def test_bucketed_runner_pads_and_trims(small_model, tmp_path):
    import torch

    from amnet.core.runner import BucketedRunner
    from runtimes.onnxruntime_runner import OnnxRuntimeRunner

    runners = {}
    for b in (1, 2):
        runners[b] = OnnxRuntimeRunner(export_file(small_model, tmp_path, "full", b, 32, "x"))
    feeds = random_inputs(5, 32)
    with BucketedRunner(runners) as r:
        assert r.bucket_for(1) == 1 and r.bucket_for(2) == 2 and r.bucket_for(7) == 2
        out = r.infer(feeds)
    with torch.no_grad():
        ref, _ = small_model(*(torch.from_numpy(feeds[k]) for k in ("source", "audio", "pose", "eye")))
    assert out["face"].shape == (5, 3, 32, 32)
    np.testing.assert_allclose(out["face"], ref.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def b1_onnx(small_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return export_file(small_model, d, "full", 1, 32, "x")


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f.pop("pose"), "missing input.*pose"),
    (lambda f: f.__setitem__("audio", f["audio"][:, :, :32]), "input 'audio' has shape"),
    (lambda f: f.__setitem__("eye", f["eye"].astype(np.complex64)), "input 'eye' has dtype"),
    (lambda f: f["source"].__setitem__((0, 0, 0, 0), np.nan), "input 'source' holds 1 NaN/Inf"),
    (lambda f: f["pose"].__setitem__((0, 1), np.inf), "input 'pose' holds 1 NaN/Inf"),
    (lambda f: f.__setitem__("source", np.zeros((2, 3, 32, 32), np.float32)), "input 'audio' has batch 1 but"),
    (lambda f: f.update({k: np.repeat(v, 2, 0) for k, v in f.items()}), "built for batch 1, got 2"),
])
def test_bad_feeds_name_the_input(b1_onnx, mutate, match):
    from runtimes.onnxruntime_runner import OnnxRuntimeRunner

    feeds = random_inputs(1, 32)
    mutate(feeds)
    with OnnxRuntimeRunner(b1_onnx) as r, pytest.raises(InputError, match=match):
        r.infer(feeds)


def test_corrupt_and_truncated_onnx(b1_onnx, tmp_path):
    from runtimes.onnxruntime_runner import OnnxRuntimeRunner

    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(b1_onnx.read_bytes()[:20000])
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 50)
    for f in (truncated, garbage):
        with pytest.raises(ArtifactError, match="not a loadable ONNX model") as e:
            OnnxRuntimeRunner(f).activate()
        assert "\n" not in str(e.value)


def test_cli_infer_on_onnx_and_bad_inputs(b1_onnx, tmp_path):
    np.savez(tmp_path / "in.npz", **random_inputs(1, 32))
    bad = random_inputs(1, 32)
    bad["eye"][0, 0] = np.nan
    np.savez(tmp_path / "bad.npz", **bad)
    run = lambda *a: subprocess.run([sys.executable, "-m", "amnet.cli", "infer", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT)
    ok = run(b1_onnx, "--inputs", tmp_path / "in.npz", "--output", tmp_path / "out.npz")
    assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "out.npz")["face"].shape == (1, 3, 32, 32)
    r = run(b1_onnx, "--inputs", tmp_path / "bad.npz", "--output", tmp_path / "out2.npz")
    assert r.returncode == 2 and "input 'eye' holds 1 NaN/Inf" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out2.npz").exists()


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path, monkeypatch):
    """atomic_write: half the bytes written, then the disk fills: the old file is intact, no temp file is left."""
    from amnet.core.fileio import atomic_write

    target = tmp_path / "model.onnx"
    target.write_bytes(b"old" * 1000)

    def half_then_full(tmp):
        with open(tmp, "wb") as f:
            f.write(b"new" * 500)  # a real partial file exists when the error comes
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_full)
    assert target.read_bytes() == b"old" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_an_export_that_fails_midway_keeps_the_previous_build(small_model, tmp_path, monkeypatch):
    """The second of two files fails to serialise: the folder still holds exactly the first build, verified."""
    import export.onnx_export as ox
    from amnet.core import artifacts
    from export.pipeline import ExportOptions, export_checkpoint
    from amnet.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.safetensors", small_model)
    build = tmp_path / "b"
    before = export_checkpoint(ckpt, build, ExportOptions((1,), 32, check_parity=False, progress=False))
    calls = []
    real = ox.save_onnx

    def fail_second(proto, path):
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real(proto, path)

    monkeypatch.setattr(ox, "save_onnx", fail_second)
    with pytest.raises(OSError):
        export_checkpoint(ckpt, build, ExportOptions((1, 2), 32, check_parity=False, progress=False))
    after = artifacts.read(build)
    assert after["artifacts"] == before["artifacts"]
    for a in after["artifacts"]:
        artifacts.verify(build, a)
    assert sorted(p.name for p in build.iterdir() if not p.name.startswith(".manifest")) == sorted(
        [a["file"] for a in after["artifacts"]] + ["manifest.json"])


def test_runtimes_package_does_not_import_torch():
    code = ("import sys, runtimes, runtimes.registry, runtimes.onnxruntime_runner, runtimes.openvino_runner, "
            "runtimes.tensorrt_runner, amnet.core.runner; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
