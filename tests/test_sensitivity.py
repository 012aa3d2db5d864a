"""diagnose --sensitivity: per-layer INT8 cost, a scope file, and a build that honours it."""
import json

import numpy as np

from amnet.core import artifacts


def test_scan_ranks_layers_and_its_scope_builds(small_build, checkpoint_file, tmp_path):
    import openvino as ov

    from amnet.checkpoint import load_checkpoint
    from benchmarks import sensitivity
    from export.int8_scope import load_scope
    from export.pipeline import BuildOptions, build
    from runtimes.pytorch_runner import reference_outputs

    d, inputs = small_build
    onnx_path = artifacts.resolve(d / "amnet_full_b1_r32.onnx")
    feeds = {k: v[:2] for k, v in np.load(inputs).items()}
    ref = reference_outputs(load_checkpoint(checkpoint_file).model, feeds)["face"]
    layers = ["/reenactor/encoder/encoder.0/", "/reenactor/cells.1/body/body.0/", "/reenactor/decoder/decoder.6/"]
    report = sensitivity.scan(onnx_path, feeds, ref, budget_db=200.0, calib_samples=2, progress=False, only=layers)
    costs = [r["alone_int8_psnr"] for r in report["layers"]]
    assert sorted(r["layer"] for r in report["layers"]) == sorted(layers) and costs == sorted(costs)  # most costly first
    assert all(r["alone_float_psnr"] >= report["all_int8"]["psnr"] - 0.5 for r in report["layers"])
    assert report["scope"] == [r["layer"] for r in report["layers"]] and not report["met"]  # 200 dB: all float
    scope_file = tmp_path / "scope.json"
    sensitivity.write_reports(report, tmp_path, scope_file)
    assert (tmp_path / "sensitivity.md").is_file() and json.loads(scope_file.read_text())["budget_db"] == 200.0
    scope = load_scope(scope_file)
    assert all(scope.nodes.search(x + "Conv") for x in layers)

    m = build(d, "openvino", tmp_path / "b", BuildOptions(("int8",), (1,), 32, 2, int8_scope=scope_file, progress=False))
    xml = tmp_path / "b" / next(a["file"] for a in m["artifacts"] if a["precision"] == "int8")
    model = ov.Core().read_model(str(xml))
    quantized = {t.get_node().get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() == "FakeQuantize" for t in op.output(0).get_target_inputs()}
    assert not any(scope.nodes.search(n) for n in quantized)  # the scope's convs see no FakeQuantize
    assert any("/cells.2/" in n for n in quantized)  # the rest is INT8


def test_a_bad_scope_file_is_one_line(small_build, tmp_path, capsys):
    from amnet.cli.main import main

    d, _ = small_build
    (tmp_path / "s.json").write_text('{"format": "x"}')
    assert main(["build", str(d), "--runtime", "openvino", "--precision", "int8", "--resolution", "32",
                 "--output", str(tmp_path / "b"), "--int8-scope", str(tmp_path / "s.json"), "--quiet"]) == 2
    assert "not an amnet-int8-scope/1 file" in capsys.readouterr().err
