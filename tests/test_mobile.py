"""On-device backends: the mobile export form, LiteRT (.tflite) and ExecuTorch (.pte) builds of the small model at
32², their outputs against PyTorch within the product's own limits, their delegation, damaged files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, random_inputs

pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime: pip install 'amnet-deploy[mobile]'")
pytest.importorskip("litert_torch", reason="the .tflite converter: pip install 'amnet-deploy[mobile-build]'")
pytest.importorskip("executorch", reason="the ExecuTorch runtime: pip install 'amnet-deploy[mobile]'")

RES = 32


@pytest.mark.parametrize("k", [1, 3])
def test_mobile_form_agrees_with_loop_form(k):
    """The traced on-device module (mobile GC, mean/var norms, sub-pixel upsampling) is the loop form's function."""
    from amnet.model import AMNet, AMNetConfig
    from export.mobile import on_device_module

    torch.manual_seed(1)
    model = AMNet(AMNetConfig(kernel=k)).eval()
    args = (torch.rand(1, 3, 32, 24) * 2 - 1, torch.randn(1, 1, 64, 60), torch.randn(1, 3), torch.rand(1, 2))
    with torch.no_grad():
        ref_face, ref_lm = model(*args)
        face, lm = on_device_module(model)(*args)
    assert model.reenactor.gcs[0].form == "loop"  # a copy: the model itself is untouched
    # The tolerance of the other forms' whole-model test (tests/test_model.py): nine GCs and norms compound rounding.
    assert (face - ref_face).abs().max() < 5e-5
    assert (lm - ref_lm).abs().max() < 1e-5  # the fuser's layer_norm as mean/var: rounding only
    assert ref_face.abs().max() > 0.1


def _build(runtime, precisions, checkpoint_file, out):
    from export.pipeline import BuildOptions, build

    return build(checkpoint_file, runtime, out, BuildOptions(precisions, (1,), RES, progress=False))


@pytest.fixture(scope="module")
def litert_build(checkpoint_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("litert")
    return out, _build("litert", ("fp32", "fp16"), checkpoint_file, out)


@pytest.fixture(scope="module")
def executorch_build(checkpoint_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("executorch")
    return out, _build("executorch", ("fp32",), checkpoint_file, out)


def _artifact(manifest, precision):
    return next(a for a in manifest["artifacts"] if a["precision"] == precision)


def _check_fp32(folder, entry, small_model, limits):
    from runtimes.registry import open_runner

    feeds = random_inputs(2, RES, seed=3)
    with torch.no_grad():
        ref_face, ref_lm = small_model(*(torch.from_numpy(feeds[k]) for k in ("source", "audio", "pose", "eye")))
    with open_runner(folder / entry["file"], threads=2) as runner:
        out = {k: np.concatenate([runner.infer({n: v[i:i + 1] for n, v in feeds.items()})[k] for i in range(2)])
               for k in ("face", "landmarks")}
        assert runner.metadata["gc_form"] == "mobile" and runner.metadata["audio_delta"] == "official"
    bars = limits.for_variant(entry["runtime"], "fp32")
    assert np.abs(out["face"] - ref_face.numpy()).max() <= bars["face.max_abs_max"]
    assert np.abs(out["landmarks"] - ref_lm.numpy()).max() <= bars["landmarks.max_abs_max"]
    assert np.abs(ref_face.numpy()).max() > 0.1


def _check_delegation(entry):
    d = entry["delegation"]
    assert d["convs"] >= 30 and d["conv_macs"] > 0  # the convs were found, not an empty count
    assert d["convs_off_delegate"] == 0 and d["conv_macs_delegated"] == 1.0
    assert entry["gc_form"] == "mobile"


def test_litert_fp32_matches_pytorch(litert_build, small_model, limits):
    folder, manifest = litert_build
    _check_fp32(folder, _artifact(manifest, "fp32"), small_model, limits)


def test_litert_delegates_every_op(litert_build):
    """One XNNPACK partition takes the whole graph, the GC's multiply-adds included; FP16 weights halve the file."""
    folder, manifest = litert_build
    for precision in ("fp32", "fp16"):
        entry = _artifact(manifest, precision)
        _check_delegation(entry)
        assert entry["delegation"]["partitions"] == 1 and entry["delegation"]["off_delegate"] == {}
    sizes = {p: (folder / _artifact(manifest, p)["file"]).stat().st_size for p in ("fp32", "fp16")}
    assert sizes["fp16"] < 0.55 * sizes["fp32"]


def test_litert_delegation_sees_ops_left_off(litert_build):
    """Without the delegate every conv counts as off it: the measure can fail, it does not assume."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from runtimes.litert_runner import LiteRTRunner

    folder, manifest = litert_build
    runner = LiteRTRunner(folder / _artifact(manifest, "fp32")["file"])
    runner.interpreter = Interpreter(model_path=str(runner.path),
                                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    d = runner.delegation()
    assert d["partitions"] == 0 and d["convs_off_delegate"] == d["convs"] > 0 and d["conv_macs_delegated"] == 0


def test_executorch_fp32_matches_pytorch(executorch_build, small_model, limits):
    folder, manifest = executorch_build
    _check_fp32(folder, _artifact(manifest, "fp32"), small_model, limits)


def test_executorch_delegates_every_conv(executorch_build):
    folder, manifest = executorch_build
    entry = _artifact(manifest, "fp32")
    _check_delegation(entry)
    assert entry["delegation"]["off_delegate"] == {}  # the norms as mean/var: nothing on the portable kernels


@pytest.mark.parametrize("suffix", [".tflite", ".pte"])
def test_damaged_model_is_one_line_exit_2(suffix, tmp_path):
    model = tmp_path / f"model{suffix}"
    model.write_bytes(b"not a model " * 400)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **random_inputs(1, RES))
    r = subprocess.run([sys.executable, "-m", "amnet.cli", "infer", str(model), "--inputs", str(inputs),
                        "--output", str(tmp_path / "out.npz")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 2, r.stderr
    # ExecuTorch's C++ loader logs its own reason too ("[program.cpp:…] Program identifier …"): not ours to drop.
    errors = [line for line in r.stderr.splitlines() if line.startswith("amnet-deploy")]
    assert len(errors) == 1 and "not a loadable" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out.npz").exists()


def test_manifest_records_the_mobile_form(litert_build, executorch_build):
    for folder, _ in (litert_build, executorch_build):
        for a in json.loads((folder / "manifest.json").read_text())["artifacts"]:
            assert (a["gc_form"], a["norm_form"], a["batch"], a["resolution"]) == ("mobile", "mean-var", 1, RES)


def _file_mb(folder, entry):
    return sum((folder / f).stat().st_size for f in entry["files"]) / 1e6


def test_bench_reports_file_size_and_delegation(litert_build, checkpoint_file, tmp_path, capsys):
    """bench's JSON and Markdown give each variant's files summed from disk, and the delegated conv MAC share."""
    from amnet.cli.main import main

    folder, manifest = litert_build
    assert main(["bench", str(checkpoint_file), "--build", str(folder), "--resolution", str(RES), "--iters", "2",
                 "--passes", "1", "--report", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    text = (tmp_path / "bench.md").read_text()
    assert "file MB" in text and "conv MACs on delegate %" in text
    assert "⚠" not in text and report["off_delegate"] == []
    rows = {r["name"]: r for r in report["rows"]}
    assert "file_mb" not in rows["pytorch-fp32-eager"]  # eager ships no artifact
    for precision in ("fp32", "fp16"):
        entry = _artifact(manifest, precision)
        row = rows[f"litert-{precision}-b1-r{RES}"]
        assert row["file_mb"] == pytest.approx(_file_mb(folder, entry)) and row["file_mb"] > 0
        assert row["conv_macs_delegated"] == entry["delegation"]["conv_macs_delegated"]
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row['name']} |"))
        assert f"| {row['file_mb']:.2f} |" in line and line.endswith(f"| {100 * row['conv_macs_delegated']:.1f} |")


def test_bench_flags_a_conv_off_the_delegate(litert_build):
    """A variant whose record (measured without the delegate) has convs off XNNPACK is marked, with a line under
    the table."""
    import dataclasses

    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from benchmarks.bench import OFF_DELEGATE_MARK, bench, markdown
    from benchmarks.parity import collect_variants
    from runtimes.litert_runner import LiteRTRunner

    folder, _ = litert_build
    variant = next(v for v in collect_variants(folder, RES) if v.precision == "fp32")
    runner = LiteRTRunner(variant.path)
    runner.interpreter = Interpreter(model_path=str(variant.path),
                                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    off = runner.delegation()
    variant = dataclasses.replace(variant, extra={**variant.extra, "delegation": off})
    report = bench([variant], None, RES, iters=1, passes=1, progress=False)
    assert report["off_delegate"] == [variant.name]
    text = markdown(report)
    assert f"| {variant.name} {OFF_DELEGATE_MARK} |" in text
    assert f"{OFF_DELEGATE_MARK} {variant.name}: {off['convs_off_delegate']} convolution(s) off XNNPACK" in text


@pytest.fixture(scope="module")
def phone_choice(litert_build, checkpoint_file, tmp_path_factory):
    """`choose` on the LiteRT build plus the FP32 ONNX (an off-phone variant to pass over): (folder, result, stdout)."""
    import contextlib
    import io
    import shutil

    from amnet.cli.main import main
    from export.pipeline import ExportOptions, export_checkpoint

    folder = tmp_path_factory.mktemp("phone") / "build"
    shutil.copytree(litert_build[0], folder)
    export_checkpoint(checkpoint_file, folder, ExportOptions((1,), RES, check_parity=False, progress=False))
    report = folder.parent / "report"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["choose", str(checkpoint_file), "--build", str(folder), "--resolution", str(RES), "--samples",
                     "2", "--no-faces", "--iters", "2", "--passes", "1", "--report", str(report), "--quiet"])
    assert code == 0
    return folder, json.loads((report / f"choose_{RES}.json").read_text()), out.getvalue()


def test_choose_picks_for_a_phone(phone_choice):
    """The fastest passing litert/executorch variant, with its file size, printed after the main recommendation."""
    from amnet.core import artifacts
    from amnet.cli.harness import PHONE_RUNTIMES

    folder, result, printed = phone_choice
    assert {r["runtime"] for r in result["ranked"]} >= {"onnxruntime", "litert"}  # there is something to pass over
    expected = next(r for r in result["ranked"] if r["runtime"] in PHONE_RUNTIMES)
    assert result["for_phone"] == expected
    entry = next(a for a in artifacts.read(folder)["artifacts"] if a["file"] == expected["file"])
    assert expected["file_mb"] == round(_file_mb(folder, entry), 2)
    line = f"**For a phone: {expected['runtime']} {expected['precision']}** (`{expected['variant']}`, " \
           f"{expected['file_mb']} MB)"
    assert line in printed and printed.index("**Recommended:") < printed.index(line)
    assert result["for_phone_note"].startswith(line)


def test_choose_says_when_no_phone_variant(phone_choice):
    """None built, or none passing: one line that says which, and no pick."""
    from amnet.cli.harness import PHONE_RUNTIMES, phone_pick

    _, result, _ = phone_choice
    off_phone = [r for r in result["ranked"] if r["runtime"] not in PHONE_RUNTIMES]
    gate = [{"variant": r["variant"], "runtime": r["runtime"]} for r in result["ranked"]]
    none_built = phone_pick(off_phone, [g for g in gate if g["runtime"] not in PHONE_RUNTIMES])
    none_passed = phone_pick(off_phone, gate)
    assert none_built[0] is None and "no on-device variant in this build" in none_built[1]
    phones = [g["variant"] for g in gate if g["runtime"] in PHONE_RUNTIMES]
    assert none_passed == (None, f"For a phone: none of the on-device variants passes ({', '.join(phones)}).")


def test_loose_tflite_says_what_it_is(litert_build, small_model, tmp_path, capsys):
    """A .tflite copied away from its manifest still carries its audio delta (and precision): `infer` refuses
    inputs with the other delta convention, as it does beside the manifest; reenact reads the same metadata."""
    import shutil

    from amnet.cli.main import main
    from runtimes.registry import open_runner

    folder, manifest = litert_build
    delta = small_model.config.audio_delta
    other = next(d for d in ("official", "time") if d != delta)
    for precision in ("fp32", "fp16"):
        loose = shutil.copy(folder / _artifact(manifest, precision)["file"], tmp_path / f"phone_{precision}.tflite")
        with open_runner(loose, threads=1) as runner:
            assert runner.metadata == {"audio_delta": delta, "gc_form": "mobile", "precision": precision}
            assert runner.precision == precision
    for given, code in ((other, 2), (delta, 0)):
        np.savez(tmp_path / "in.npz", **random_inputs(1, RES), audio_delta=np.array(given))
        out = tmp_path / f"out_{given}.npz"
        assert main(["infer", str(tmp_path / "phone_fp32.tflite"), "--inputs", str(tmp_path / "in.npz"),
                     "--output", str(out)]) == code
        assert out.exists() == (code == 0)
    assert f"'{other}' deltas but the model was trained with '{delta}'" in capsys.readouterr().err
