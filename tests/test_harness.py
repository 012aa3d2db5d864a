"""The parity gate passes honest variants, fails a damaged one (exit 1, naming it), and reports in four forms."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest

from benchmarks.parity import judge
from amnet.cli.main import main
from tests.conftest import random_inputs


@pytest.fixture(scope="module")
def build(checkpoint_file, tmp_path_factory):
    from export.pipeline import export_checkpoint

    d = tmp_path_factory.mktemp("build")
    m = export_checkpoint(checkpoint_file, d, [1, 2], 32, check_parity=False, progress=False)
    b2 = next(a for a in m["artifacts"] if a["batch"] == 2)
    # A damaged variant: the b2 file's last decoder conv weights perturbed by 5 %.
    proto = onnx.load(str(d / b2["file"]))
    last_conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    init = next(t for t in proto.graph.initializer if t.name == last_conv.input[1])
    w = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(w * 1.05, init.name))
    onnx.save(proto, str(d / b2["file"]))
    inputs = d / "in.npz"
    np.savez(inputs, **random_inputs(5, 32))
    return d, inputs


def test_gate_fails_on_the_damaged_variant_and_names_it(build, checkpoint_file, tmp_path, capsys):
    d, inputs = build
    code = main(["parity", str(checkpoint_file), "--build", str(d), "--resolution", "32", "--inputs", str(inputs),
                 "--report", str(tmp_path), "--no-faces", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED: onnxruntime-fp32-b2-r32" in out and "face.max_abs" in out
    report = json.loads((tmp_path / "parity.json").read_text())
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["onnxruntime-fp32-b1-r32"]["passed"]
    assert not by_name["onnxruntime-fp32-b2-r32"]["passed"]
    suite = ET.parse(tmp_path / "parity.junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert (tmp_path / "parity_onnxruntime-fp32-b2-r32.png").stat().st_size > 1000
    assert "FAIL" in (tmp_path / "parity.md").read_text()


def test_gate_passes_without_the_damaged_variant_and_with_saved_reference(build, checkpoint_file, tmp_path):
    from amnet.checkpoint import load_checkpoint
    from runtimes.pytorch_runner import reference_outputs

    d, inputs = build
    ref = reference_outputs(load_checkpoint(checkpoint_file).model, dict(np.load(inputs)))
    np.savez(tmp_path / "ref.npz", **ref)
    code = main(["parity", "--build", str(d), "--resolution", "32", "--inputs", str(inputs), "--reference",
                 str(tmp_path / "ref.npz"), "--only", "b1", "--report", str(tmp_path / "r"), "--no-faces", "--quiet"])
    assert code == 0


def test_usage_errors_exit_2(build, checkpoint_file, tmp_path):
    d, inputs = build
    assert main(["parity", str(checkpoint_file), "--build", str(d), "--resolution", "32", "--inputs", str(inputs),
                 "--threshold", "nonsense", "--report", str(tmp_path)]) == 2
    assert main(["parity", str(checkpoint_file), "--build", str(tmp_path / "nothing"), "--report", str(tmp_path)]) == 2


def test_judge_reads_min_and_max_rules():
    metrics = {"face": {"psnr": 31.0, "max_abs": 0.2}, "landmarks": {"cosine": 0.999}}
    assert judge(metrics, {"face.psnr_min": 30, "landmarks.cosine_min": 0.99}) == []
    assert judge(metrics, {"face.psnr_min": 32}) == ["face.psnr 31 < 32"]
    assert judge(metrics, {"face.max_abs_max": 0.1}) == ["face.max_abs 0.2 > 0.1"]


def test_bench_runs_in_child_processes(build, checkpoint_file):
    from benchmarks.bench import bench
    from benchmarks.parity import collect_variants

    d, _ = build
    variants = [v for v in collect_variants(d, 32) if v.batch == 1]
    report = bench(variants, str(checkpoint_file), 32, threads=1, iters=5, warmup=1, gflops=0.1, progress=False)
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"pytorch-fp32-eager", "onnxruntime-fp32-b1-r32"}
    for r in rows.values():
        assert r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] and r["peak_rss_mb"] > 10
    assert rows["pytorch-fp32-eager"]["ratio_vs_eager"] == 1.0
    assert rows["pytorch-fp32-eager"]["peak_rss_mb"] > rows["onnxruntime-fp32-b1-r32"]["peak_rss_mb"]  # torch is big
    assert report["paper"]["paper_cpu_fps"] == 33.8
