"""The parity gate passes honest variants, fails a damaged one (exit 1, naming it), and reports in four forms."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from amnet.core.errors import InputError

from amnet.cli.main import main
from benchmarks.parity import judge
from tests.conftest import copy_build


def damage_b2(build):
    """The b2 file's last decoder conv weights scaled by 1.05: runs fine, wrong by a few percent."""
    from amnet.core import artifacts

    entry = next(a for a in artifacts.read(build)["artifacts"] if a["batch"] == 2)
    path = build / entry["file"]
    proto = onnx.load(str(path))
    last_conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    init = next(t for t in proto.graph.initializer if t.name == last_conv.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.05, init.name))
    onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def damaged(small_build, tmp_path_factory):
    d, inputs = small_build
    build = copy_build(d, tmp_path_factory.mktemp("damaged") / "b")
    damage_b2(build)
    return build, inputs


def parity(checkpoint, build, inputs, report, *extra):
    return main(["parity", str(checkpoint), "--build", str(build), "--resolution", "32", "--inputs", str(inputs),
                 "--report", str(report), "--no-faces", "--quiet", *extra])


def test_a_damaged_variant_fails_by_its_sha256_and_by_its_numbers(damaged, checkpoint_file, tmp_path, capsys,
                                                                  limits):
    build, inputs = damaged
    assert parity(checkpoint_file, build, inputs, tmp_path / "a") == 1
    out = capsys.readouterr().out
    assert "FAILED: onnxruntime-fp32-b2-r32" in out and "does not match the sha256" in out
    # Run anyway (--no-verify): the numbers fail it too, against the product's own fp32 limit.
    assert parity(checkpoint_file, build, inputs, tmp_path / "b", "--no-verify") == 1
    report = json.loads((tmp_path / "b" / "parity.json").read_text())
    rows = {v["variant"]: v for v in report["variants"]}
    bad = rows["onnxruntime-fp32-b2-r32"]
    limit = limits.for_variant("onnxruntime", "fp32")["face.max_abs_max"]
    assert bad["metrics"]["face"]["max_abs"] > limit and any(f.startswith("face.max_abs") for f in bad["failures"])
    assert rows["onnxruntime-fp32-b1-r32"]["passed"]
    assert rows["onnxruntime-fp32-b1-r32"]["metrics"]["face"]["max_abs"] <= limit
    suite = ET.parse(tmp_path / "b" / "parity.junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert (tmp_path / "b" / "parity_onnxruntime-fp32-b2-r32.png").stat().st_size > 1000
    assert "FAIL" in (tmp_path / "b" / "parity.md").read_text()


def test_gate_passes_honest_variants_with_a_saved_reference(small_build, checkpoint_file, tmp_path):
    from amnet.checkpoint import load_checkpoint
    from runtimes.pytorch_runner import reference_outputs

    d, inputs = small_build
    ref = reference_outputs(load_checkpoint(checkpoint_file).model, dict(np.load(inputs)))
    np.savez(tmp_path / "ref.npz", **ref)
    assert main(["parity", "--build", str(d), "--resolution", "32", "--inputs", str(inputs), "--reference",
                 str(tmp_path / "ref.npz"), "--report", str(tmp_path / "r"), "--no-faces", "--quiet"]) == 0


def test_usage_errors_exit_2(small_build, checkpoint_file, tmp_path):
    d, inputs = small_build
    assert parity(checkpoint_file, d, inputs, tmp_path, "--threshold", "nonsense") == 2
    assert main(["parity", str(checkpoint_file), "--build", str(tmp_path / "nothing"), "--report", str(tmp_path)]) == 2


def test_judge_reads_min_and_max_rules_and_fails_closed():
    metrics = {"face": {"psnr": 31.0, "max_abs": 0.2, "ssim": float("nan")}, "landmarks": {"cosine": 0.999}}
    assert judge(metrics, {"face.psnr_min": 30, "landmarks.cosine_min": 0.99}) == ([], [])
    assert judge(metrics, {"face.psnr_min": 32})[0] == ["face.psnr 31 < 32"]
    assert judge(metrics, {"face.max_abs_max": 0.1})[0] == ["face.max_abs 0.2 > 0.1"]
    assert judge(metrics, {"face.ssim_min": 0.9})[0] == ["face.ssim unavailable (could not be computed)"]
    assert judge(metrics, {"face.detection_rate_min": 1.0})[0][0].startswith("face.detection_rate unavailable")
    assert judge(metrics, {"face.detection_rate_min": 1.0, "face.psnr_min": 30},
                 waived=("detection_rate",)) == ([], ["face.detection_rate"])
    # Limits that are all waived compare nothing: that is a failure, not a pass.
    failures, waived = judge(metrics, {"face.detection_rate_min": 1.0}, waived=("detection_rate",))
    assert waived == ["face.detection_rate"] and failures and "nothing was compared" in failures[0]


def test_bench_runs_in_child_processes(small_build, checkpoint_file):
    from benchmarks.bench import bench
    from benchmarks.parity import collect_variants

    d, _ = small_build
    variants = [v for v in collect_variants(d, 32) if v.batch == 1]
    report = bench(variants, str(checkpoint_file), 32, threads=1, iters=5, warmup=1, gflops=0.1, progress=False)
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"pytorch-fp32-eager", "onnxruntime-fp32-b1-r32"}
    eager, ort = rows["pytorch-fp32-eager"], rows["onnxruntime-fp32-b1-r32"]
    for r in rows.values():
        assert r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] and r["iters"] >= 5
        assert r["fps"] == pytest.approx(1000 / r["median_ms"])  # batch 1
    assert ort["ratio_vs_eager"] == pytest.approx(ort["fps"] / eager["fps"])
    assert ort["roofline_pct"] == pytest.approx(100 * 0.1 * ort["fps"] / report["gemm_peak_gflops"], rel=0.01)
    # Each child reports its own peak: the eager one carries torch, the ORT one does not.
    assert eager["peak_rss_mb"] > ort["peak_rss_mb"]
    assert report["paper"]["best_measured_fps"] == pytest.approx(max(r["fps"] for r in rows.values()), abs=0.1)


def test_bench_centres_every_variant_on_the_same_moment_and_fails_closed(monkeypatch, checkpoint_file):
    """Two passes, the second in reverse order (every variant's runs symmetric about the run's middle); timings
    pooled over passes, shares adding up to --iters; a variant that fails in a pass is a failed row, not retried."""
    from types import SimpleNamespace

    from benchmarks import bench as bench_mod

    calls = []

    def child(spec):
        calls.append((spec["name"], spec["iters"]))
        k = sum(name == spec["name"] for name, _ in calls)  # pass k: timings k·10 ms …, a computable median
        if spec["name"] == "b":
            return {"error": "RuntimeError: lost the device"}
        if spec["name"] == "c" and k == 2:
            return {"times_ms": [float("nan")], "cold_start_s": 1.0, "peak_rss_mb": 1.0}
        return {"times_ms": [10.0 * k, 10.0 * k + 1], "cold_start_s": float(k), "peak_rss_mb": 100.0 + k,
                "throughput_fps": 5.0 * k, "gpu_memory_mb": 50.0 * k}

    monkeypatch.setattr(bench_mod, "run_child", child)
    variants = [SimpleNamespace(name=n, runtime="onnxruntime", precision="fp32", path=Path(n), batch=1, resolution=32)
                for n in ("a", "b", "c")]
    report = bench_mod.bench(variants, str(checkpoint_file), 32, iters=5, progress=False)
    eager = "pytorch-fp32-eager"
    assert [name for name, _ in calls] == [eager, "a", "b", "c", "c", "a", eager]  # b failed: not run again
    assert [n for name, n in calls if name == "a"] == [3, 2] and report["passes"] == 2
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["b"]["error"] == "RuntimeError: lost the device" and "fps" not in rows["b"]
    assert "non-finite" in rows["c"]["error"] and "fps" not in rows["c"]  # a NaN timing is a failed row
    a = rows["a"]
    pooled = [10.0, 11.0, 20.0, 21.0]
    assert a["median_ms"] == np.median(pooled) and a["iters"] == 4 and a["passes"] == 2
    assert a["fps"] == pytest.approx(1000 / np.median(pooled)) and a["ratio_vs_eager"] == pytest.approx(1.0)
    assert (a["cold_start_s"], a["peak_rss_mb"], a["throughput_fps"], a["gpu_memory_mb"]) == (1.5, 102.0, 7.5, 100.0)
    calls.clear()
    assert bench_mod.bench(variants[:1], None, 32, iters=5, progress=False, passes=3)["passes"] == 4  # even
    assert [name for name, _ in calls] == ["a"] * 4 and [n for _, n in calls] == [2, 1, 1, 1]


def test_bench_per_isa_cap(small_build, checkpoint_file):
    """One row per (variant, ISA cap) a child really ran under; caps above this CPU are named, not faked."""
    from amnet.core import cpu
    from benchmarks.bench import bench
    from benchmarks.parity import collect_variants

    d, _ = small_build
    variants = [v for v in collect_variants(d, 32) if v.batch == 1]
    native = cpu.isa()["native"]
    report = bench(variants, str(checkpoint_file), 32, threads=1, iters=5, warmup=1, progress=False,
                   isas=("native", "AVX2", "AVX512_CORE"), passes=1)
    expected = ["native"] + (["AVX2"] if native["AVX2"] else []) + (["AVX512_CORE"] if native["AVX-512"] else [])
    assert report["isas"] == expected
    if not native["AVX-512"]:
        assert any("AVX512_CORE" in n and "AVX-512" in n for n in report["notes"])
    for r in report["rows"]:
        assert r["onednn_max_cpu_isa"] == (None if r["isa"] == "native" else r["isa"])
        eager = next(e for e in report["rows"] if e["runtime"] == "pytorch" and e["isa"] == r["isa"])
        assert r["ratio_vs_eager"] == pytest.approx(r["fps"] / eager["fps"])  # within one cap
    with pytest.raises(InputError, match="AVX1024"):
        bench(variants, None, 32, isas=("AVX1024",), progress=False)


def test_the_cpu_is_named_with_its_family_model_and_core():
    from amnet.core.cpu import describe_cpu

    def info(vendor, name, family, model, flags="fpu avx2"):
        return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
                f"model name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: other\n")

    assert describe_cpu(info("AuthenticAMD", "AMD EPYC", 25, 1)) == \
        ("AMD EPYC (family 25, model 1: Zen 3)", {"fpu", "avx2"})
    assert describe_cpu(info("AuthenticAMD", "AMD EPYC", 25, 17))[0] == "AMD EPYC (family 25, model 17: Zen 4)"
    assert describe_cpu(info("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", 6, 143))[0] == \
        "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143)"  # no guess where no table is kept
    assert describe_cpu("model name\t: Some CPU\nflags\t: sse2\n") == ("Some CPU", {"sse2"})


def test_the_recommendation_quotes_the_ratio_of_the_fps_it_quotes():
    """A pick that wins in throughput mode: its sentence gives that FPS over eager's, not the batch-1 ratio."""
    from amnet.cli.harness import choose_markdown, rank

    parity = [{"variant": v, "passed": ok, "runtime": "openvino", "precision": "int8", "actual_precision": "int8",
               "batch": 1, "metrics": {"face": {"psnr": 45.0}}} for v, ok in (("fast", True), ("slow", True),
                                                                                ("broken", False))]
    bench = [{"name": "fast", "fps": 10.0, "throughput_fps": 20.0, "ratio_vs_eager": 2.0, "median_ms": 100.0},
             {"name": "slow", "fps": 12.0, "ratio_vs_eager": 2.4, "median_ms": 83.3},
             {"name": "broken", "fps": 50.0, "throughput_fps": 60.0, "ratio_vs_eager": 10.0, "median_ms": 20.0}]
    ranked = rank(parity, bench)
    assert [r["variant"] for r in ranked] == ["fast", "slow"]  # best of the modes; a failed variant never ranks
    assert (ranked[0]["ratio_vs_eager"], ranked[0]["best_vs_eager"]) == (2.0, 20.0 / (10.0 / 2.0))
    text = choose_markdown(ranked, 128, 2, ["broken"])
    assert "throughput mode (async streams): 20.0 FPS (4.0× PyTorch eager at batch 1)" in text
    assert "| 1 | fast | int8 | 10.0 | 20.0 | 2.0 | 4.0 | 100.0 | 45.0 |" in text


def test_without_a_checkpoint_each_command_compares_with_the_shipped_model_of_its_size(monkeypatch, tmp_path):
    """A 256² build comes from the 256² fine-tune: parity, bench, choose and diagnose left without a checkpoint
    take the shipped model of the size they run at (the 128² one gave 19 dB against a 256² build: a false FAIL),
    and a checkpoint given is used at every size."""
    from amnet import default_checkpoint
    from amnet.cli import harness
    from benchmarks import parity

    seen = []

    def record(args, resolution, *rest):
        seen.append((args.command, resolution, Path(args.checkpoint).name))
        raise InputError("recorded")  # stop before any work: one line, exit 2

    monkeypatch.setattr(harness, "run_parity", record)
    monkeypatch.setattr(harness, "run_bench", record)
    monkeypatch.setattr(harness, "choose", record)
    variant = parity.Variant("openvino-int8-b1-r256", "openvino", "int8", tmp_path / "x.xml", 1, 256)
    monkeypatch.setattr(parity, "collect_variants", lambda build, resolution=None: [variant])
    monkeypatch.setattr(harness, "_inputs", lambda args, r: record(args, r))
    build, report = str(tmp_path / "build"), str(tmp_path / "report")
    for r in (128, 256):
        for command in ("parity", "bench", "choose"):
            assert main([command, "--build", build, "--resolution", str(r), "--report", report]) == 2
    assert main(["diagnose", "--build", build, "--variant", variant.name, "--report", report]) == 2
    mine = str(default_checkpoint(128))
    assert main(["parity", mine, "--build", build, "--resolution", "256", "--report", report]) == 2
    # export and evaluate too: `export --resolution 256` then `parity --resolution 256`, both without a
    # checkpoint, must agree on the model (else the parity refuses the build as another checkpoint's)
    import benchmarks.evaluate
    import export.pipeline

    monkeypatch.setattr(export.pipeline, "export_checkpoint",
                        lambda checkpoint, out, opts: record(SimpleNamespace(command="export", checkpoint=checkpoint),
                                                             opts.resolution))
    import amnet.checkpoint

    seen_file, load = [], amnet.checkpoint.load_checkpoint  # the file evaluate loads
    monkeypatch.setattr(amnet.checkpoint, "load_checkpoint", lambda path, *a, **k: seen_file.append(path) or load(path))
    monkeypatch.setattr(benchmarks.evaluate, "evaluate", lambda model, r, *rest: record(
        SimpleNamespace(command="evaluate", checkpoint=seen_file[0]), r))
    for r in (128, 256):
        assert main(["export", "--output", str(tmp_path / "x"), "--resolution", str(r), "--quiet"]) == 2
        seen_file.clear()
        assert main(["evaluate", "--resolution", str(r)]) == 2
    small, big = default_checkpoint(128).name, default_checkpoint(256).name
    assert small != big
    assert seen == [("parity", 128, small), ("bench", 128, small), ("choose", 128, small),
                    ("parity", 256, big), ("bench", 256, big), ("choose", 256, big),
                    ("diagnose", 256, big), ("parity", 256, small),
                    ("export", 128, small), ("evaluate", 128, small), ("export", 256, big), ("evaluate", 256, big)]


def test_a_reference_from_another_checkpoint_is_refused(small_build, checkpoint_file, small_model, tmp_path, capsys):
    """The manifest records the checkpoint each variant was exported from: a reference from another one is one
    line and exit 2, before any work; the right one runs."""
    import torch

    from amnet.checkpoint import save_checkpoint

    d, inputs = small_build
    other = type(small_model)(small_model.config)
    with torch.no_grad():
        for p, q in zip(other.parameters(), small_model.parameters()):
            p.copy_(q + 1e-3)  # the same architecture, other weights
    other_file = save_checkpoint(tmp_path / "other.safetensors", other)
    assert parity(other_file, d, inputs, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exported from model.safetensors" in err and "not from other.safetensors" in err
    assert not (tmp_path / "a" / "parity.json").exists()
    assert main(["diagnose", str(other_file), "--build", str(d), "--variant", "onnxruntime-fp32-b1-r32",
                 "--inputs", str(inputs), "--report", str(tmp_path / "b")]) == 2
    assert "exported from model.safetensors" in capsys.readouterr().err
    assert parity(checkpoint_file, d, inputs, tmp_path / "c") == 0


def test_the_source_of_a_variant_is_followed_through_links_that_still_hold(tmp_path):
    """An IR records the ONNX it came from (from, from_sha256) and the ONNX the checkpoint: the IR's source is
    the checkpoint, unless that ONNX has been replaced since (its sha256 is no longer the IR's from_sha256)."""
    from amnet.core import artifacts
    from benchmarks.parity import built_from, check_reference_source, collect_variants

    def entry(name, runtime, precision, **extra):
        return {"name": name, "file": name, "files": {name: "a" * 64}, "runtime": runtime, "precision": precision,
                "part": "full", "batch": 1, "resolution": 32, "sha256": extra.pop("sha256", "a" * 64), **extra}

    source = {"source_checkpoint": "model.safetensors", "source_sha256": "c" * 64}
    onnx_entry = entry("m.onnx", "onnxruntime", "fp32", provenance=source, sha256="b" * 64)
    ir = entry("m_ov_int8.xml", "openvino", "int8", **{"from": "m.onnx", "from_sha256": "b" * 64})
    loop = entry("x_ov_int8.xml", "openvino", "int8", **{"from": "x_ov_int8.xml", "from_sha256": "a" * 64})
    loop["batch"] = 2  # its own variant name: openvino-int8-b2-r32
    for broken_link in (False, True):
        if broken_link:
            onnx_entry["sha256"] = "d" * 64  # exported again since the IR was built
        (tmp_path / artifacts.MANIFEST).write_text(json.dumps({"schema": artifacts.SCHEMA,
                                                                "artifacts": [onnx_entry, ir, loop]}))
        found = built_from(tmp_path, collect_variants(tmp_path))
        assert found.get("onnxruntime-fp32-b1-r32") == source
        assert found.get("openvino-int8-b1-r32") == ({"replaced": "m.onnx"} if broken_link else source)
        if broken_link:  # the IR's origin is unknown: its parity would compare it with a model it may not be
            with pytest.raises(InputError, match="built from a m.onnx that has been replaced since"):
                check_reference_source(tmp_path, collect_variants(tmp_path), tmp_path / artifacts.MANIFEST)
        assert "openvino-int8-b2-r32" not in found  # the self-loop ends without a source, and without hanging
        assert len(collect_variants(tmp_path)) == 3


def test_nan_inputs_and_too_many_samples_are_refused_by_every_harness_command(small_build, checkpoint_file,
                                                                            tmp_path, capsys):
    """diagnose reported 'nan dB' on NaN inputs with exit 0 (a CLI fuzz pass): the inputs are checked where every
    harness command reads them. Asking for more held-out samples than the file holds is refused, not clamped."""
    d, inputs = small_build
    feeds = dict(np.load(inputs))
    feeds["audio"][1, 0, 3, 4] = np.nan
    np.savez(tmp_path / "nan.npz", **feeds)
    for argv in (["parity", "--no-faces"], ["choose", "--no-faces", "--iters", "2"],
                 ["diagnose", "--variant", "onnxruntime-fp32-b1-r32"]):
        argv = [argv[0], str(checkpoint_file), "--build", str(d), "--inputs", str(tmp_path / "nan.npz"),
                "--report", str(tmp_path / argv[0]), *argv[1:]]
        if argv[0] != "diagnose":
            argv += ["--resolution", "32"]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "input 'audio' holds 1 NaN/Inf value(s)" in err, err
        assert not any((tmp_path / argv[0]).glob("*.json"))
    from amnet.core.fileio import load_npz

    held = len(load_npz(Path(__file__).resolve().parents[1] / "calibration_data" / "heldout.npz")["source_idx"])
    assert main(["parity", str(checkpoint_file), "--build", str(d), "--resolution", "32", "--no-faces",
                 "--samples", str(held + 1), "--report", str(tmp_path / "s")]) == 2
    assert f"holds {held} samples" in capsys.readouterr().err
