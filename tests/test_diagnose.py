"""`amnet-deploy diagnose`: the first tensor where a variant parts from PyTorch, named by module."""
import json

import numpy as np
import onnx
import pytest

from amnet.cli.main import main
from amnet.core import artifacts
from tests.conftest import copy_build

DAMAGED = "/reenactor/cells.3/body/body.3/Conv"


@pytest.fixture(scope="module")
def damaged_build(small_build, tmp_path_factory):
    """The b1 export with one conv's weights scaled ×1.5, republished so its sha256 is right."""
    from tests.test_trust import republish

    d, inputs = small_build
    build = copy_build(d, tmp_path_factory.mktemp("diag") / "b")
    proto = onnx.load(str(artifacts.resolve(build / "amnet_full_b1_r32.onnx")))
    conv = next(n for n in proto.graph.node if n.name == DAMAGED)
    w = next(t for t in proto.graph.initializer if t.name == conv.input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 1.5, w.name))
    republish(build, "amnet_full_b1_r32.onnx", proto)
    return build, inputs


def test_a_damaged_conv_is_named_as_the_first_diverging_tensor(damaged_build, checkpoint_file, tmp_path, capsys):
    build, inputs = damaged_build
    assert main(["diagnose", str(checkpoint_file), "--build", str(build), "--variant", "onnxruntime-fp32-b1-r32",
                 "--inputs", str(inputs), "--report", str(tmp_path)]) == 0
    assert "first below 80 dB is reenactor.cells.3.body.3" in capsys.readouterr().out
    report = json.loads((tmp_path / "diagnose.json").read_text())
    rows = {r["module"]: r for r in report["probes"]}
    assert report["first_below"]["tensor"].startswith(DAMAGED)
    # Everything before it is exact; the damaged conv's own output carries 1.5× of its convolution term.
    first = rows["reenactor.cells.3.body.3"]["depth"]
    assert all(r["snr_db"] > 100 for r in report["probes"] if r["depth"] < first)
    assert rows["reenactor.cells.3.body.3"]["snr_db"] < 20
    assert len(report["probes"]) > 40 and (tmp_path / "diagnose.png").stat().st_size > 5000


def test_a_failing_gate_points_at_diagnose(small_build, checkpoint_file, tmp_path, capsys):
    from tests.test_harness import damage_b2

    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    damage_b2(build)  # the last conv ×1.05: nothing normalises it away before the face
    assert main(["parity", str(checkpoint_file), "--build", str(build), "--resolution", "32", "--inputs", str(inputs),
                 "--report", str(tmp_path / "p"), "--no-faces", "--quiet", "--no-verify"]) == 1
    out = capsys.readouterr().out
    assert f"where it breaks: amnet-deploy diagnose {checkpoint_file} --build {build} --variant " \
           "onnxruntime-fp32-b2-r32" in out and "variant onnxruntime-fp32-b1-r32" not in out


def test_an_honest_openvino_ir_keeps_every_probe(small_build, checkpoint_file, tmp_path, capsys):
    from export.pipeline import BuildOptions, build

    d, inputs = small_build
    b = copy_build(d, tmp_path / "b")
    build(b, "openvino", b, BuildOptions(("fp32",), (1,), 32, progress=False))
    assert main(["diagnose", str(checkpoint_file), "--build", str(b), "--variant", "openvino-fp32-b1-r32",
                 "--inputs", str(inputs), "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "diagnose.json").read_text())
    measured = [r for r in report["probes"] if r["snr_db"] is not None]
    assert report["first_below"] is None and len(measured) > 40
    assert "every probe keeps ≥ 80 dB" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--variant", "openvino-int9-b1-r32"], "no variant 'openvino-int9-b1-r32'"),
    (["--variant", "onnxruntime-fp32-b1-r32", "--inputs", "WRONG"], "is 1×3×64×64"),
])
def test_bad_diagnose_input_is_one_line(small_build, checkpoint_file, tmp_path, capsys, args, message):
    from tests.conftest import random_inputs

    d, _ = small_build
    np.savez(tmp_path / "in64.npz", **random_inputs(1, 64))
    args = [a if a != "WRONG" else str(tmp_path / "in64.npz") for a in args]
    assert main(["diagnose", str(checkpoint_file), "--build", str(d), *args, "--report", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert main(["diagnose", str(checkpoint_file), "--build", str(tmp_path / "none"), "--variant", "x"]) == 2


def test_a_tensorrt_variant_without_tensorrt_is_one_line(small_build, checkpoint_file, tmp_path, capsys):
    """The TensorRT probe path (engine rebuilt with the probes marked) needs TensorRT: here it says so."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT present: the refusal is not reachable")
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    with artifacts.Stage(build) as stage:
        engine = stage.path("amnet_full_b1_r32_trt_fp16.engine")
        engine.write_bytes(b"\0" * 64)
        engine.with_name(engine.name + ".json").write_text("{}")
        stage.add({"name": "amnet_full_b1_r32_trt_fp16.engine", "runtime": "tensorrt", "part": "full",
                   "precision": "fp16", "batch": 1, "resolution": 32, "from": "amnet_full_b1_r32.onnx"},
                  [engine, engine.with_name(engine.name + ".json")])
        artifacts.publish(stage)
    assert main(["diagnose", str(checkpoint_file), "--build", str(build), "--variant", "tensorrt-fp16-b1-r32",
                 "--inputs", str(inputs), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "tensorrt is not installed" in err and err.count("\n") == 1


def test_a_tensorrt_variant_is_probed_only_on_the_onnx_it_was_built_from(small_build, tmp_path):
    """TensorRT cannot run here; what its probes are built from is checked on the CPU: the file whose sha256 the
    engine's sidecar records, and a refusal when that file is gone (an engine built with another scope)."""
    from amnet.core.errors import ArtifactError
    from amnet.core.fileio import file_sha256
    from benchmarks.diagnose import engine_source
    from benchmarks.parity import Variant

    d, _ = small_build
    build = copy_build(d, tmp_path / "b")
    assert main(["build", str(build), "--runtime", "onnxruntime", "--precision", "fp16", "--resolution", "32",
                 "--output", str(build), "--quiet"]) == 0
    export, fp16 = (artifacts.resolve(build / n) for n in ("amnet_full_b1_r32.onnx", "amnet_full_b1_r32_fp16.onnx"))

    def variant(precision, sha):
        return Variant(f"tensorrt-{precision}-b1-r32", "tensorrt", precision, build / "x.engine", 1, 32,
                       {"from": "amnet_full_b1_r32.onnx", "tensorrt": {"onnx": "its.onnx", "onnx_sha256": sha}})

    assert engine_source(variant("fp32", file_sha256(export)), tmp_path) == export
    assert engine_source(variant("fp16", file_sha256(fp16)), tmp_path) == fp16
    with pytest.raises(ArtifactError, match="neither in"):
        engine_source(variant("fp16", "0" * 64), tmp_path)
