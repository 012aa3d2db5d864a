"""The gate fails closed, the manifest stays true, and bad input is one line (issue: trust).

Every case here was a defect: a PASS without a check, a traceback, a lost or mixed build.
"""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from amnet.cli.main import main
from amnet.core import artifacts
from tests.conftest import ROOT, copy_build, random_inputs


def run(*args):
    """The real command in a child process: (exit code, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "amnet.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return r.returncode, r.stdout, r.stderr


def one_line(stderr: str) -> bool:
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("amnet-deploy: warning:")]
    return "Traceback" not in stderr and len(lines) == 1


def republish(build, name, proto):
    """Replace an artifact through the normal publish path, so its sha256 is right: a build that made bad numbers."""
    entry = next(a for a in artifacts.read(build)["artifacts"] if a["name"] == name)
    with artifacts.Stage(build) as stage:
        pending = stage.path(name)
        onnx.save(proto, str(pending))
        stage.add({k: v for k, v in entry.items() if k not in ("file", "files", "sha256")}, [pending])
        artifacts.publish(stage)


def gate(checkpoint, build, inputs, report, *extra):
    return main(["parity", str(checkpoint), "--build", str(build), "--resolution", "32", "--inputs", str(inputs),
                 "--report", str(report), "--quiet", "--only", "b1", *map(str, extra)])


# ---------------------------------------------------------------- the gate fails closed

def test_an_all_nan_variant_fails(small_build, checkpoint_file, tmp_path, capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    name = "amnet_full_b1_r32.onnx"
    proto = onnx.load(str(artifacts.resolve(build / name)))
    last = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    w = next(t for t in proto.graph.initializer if t.name == last.input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(w).shape, np.nan, np.float32), w.name))
    republish(build, name, proto)
    assert gate(checkpoint_file, build, inputs, tmp_path / "r", "--no-faces") == 1
    assert "output face holds" in capsys.readouterr().out


def test_a_nan_reference_fails_every_variant(small_build, checkpoint_file, tmp_path, capsys):
    d, inputs = small_build
    ref = {"face": np.full((5, 3, 32, 32), np.nan, np.float32), "landmarks": np.zeros((5, 136), np.float32)}
    np.savez(tmp_path / "ref.npz", **ref)
    assert gate(checkpoint_file, d, inputs, tmp_path / "r", "--no-faces", "--reference", tmp_path / "ref.npz") == 1
    assert "reference face holds 15360 NaN/Inf" in capsys.readouterr().out


def test_a_checkpoint_with_nan_weights_is_refused_by_every_command(small_model, small_build, tmp_path, capsys):
    import copy

    import torch

    from amnet.checkpoint import save_checkpoint

    broken = copy.deepcopy(small_model)
    with torch.no_grad():
        broken.reenactor.decoder[-2].weight.fill_(float("nan"))
    ckpt = save_checkpoint(tmp_path / "nan.safetensors", broken)
    d, inputs = small_build
    assert gate(ckpt, d, inputs, tmp_path / "r", "--no-faces") == 2
    assert "NaN/Inf weights (reenactor.decoder" in capsys.readouterr().err
    for argv in (["info", ckpt], ["export", ckpt, "--output", tmp_path / "x", "--resolution", "32", "--quiet"],
                 ["infer", ckpt, "--inputs", inputs, "--output", tmp_path / "o.npz"]):
        assert main(list(map(str, argv))) == 2
        assert "NaN/Inf weights" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("model_file", ["absent", "corrupt"])
def test_a_hidden_or_broken_dlib_model_fails_face_checks(small_build, checkpoint_file, tmp_path, capsys, monkeypatch,
                                                         model_file):
    d, inputs = small_build
    dat = tmp_path / "shape_predictor_68_face_landmarks.dat"
    if model_file == "corrupt":
        dat.write_bytes(b"\0" * 1000)
    monkeypatch.setenv("AMNET_DLIB_68", str(dat))
    code = gate(checkpoint_file, d, inputs, tmp_path / "r", "--threshold", "fp32.face.landmark_shift_px_max=0.01")
    out = capsys.readouterr().out
    assert code == 1 and "face.landmark_shift_px unavailable" in out
    assert ("does not exist" if model_file == "absent" else "not a dlib shape predictor") in out
    # Waiving the family is the one way past it.
    assert gate(checkpoint_file, d, inputs, tmp_path / "r2", "--no-faces",
                "--threshold", "fp32.face.landmark_shift_px_max=0.01") == 0


def test_face_checks_run_with_the_packaged_dlib_model():
    """No apt package: the 68-point model comes from the face-recognition-models wheel."""
    from amnet.signals import find_predictor

    assert "face_recognition_models" in find_predictor() and os.path.getsize(find_predictor()) > 90e6


@pytest.mark.parametrize("override", ["fp32.face.psnr_minn=3", "fp33.face.psnr_min=3", "fp32.face.psnr_min=nan",
                                      "fp32.face.psnr_min=abc", "fp32.lips.psnr_min=3", "fp32.landmarks.psnr_min=3",
                                      "warp-fp32.face.psnr_min=3", "fp32.face.psnr_mid=3"])
def test_unknown_or_non_numeric_limits_exit_2_naming_the_key(small_build, checkpoint_file, tmp_path, capsys, override):
    d, inputs = small_build
    assert gate(checkpoint_file, d, inputs, tmp_path, "--threshold", override) == 2
    err = capsys.readouterr().err
    assert one_line(err) and override.split("=")[0].split(".", 1)[1 if "fp33" not in override and "warp" not in
                                                                   override else 0] in err


@pytest.mark.parametrize("content", ['[1, 2]', '{"fp32": null}', '{"fp32": {"face.max_abs_max": null}}',
                                     '{"fp32": {"face.max_abs_max": true}}', '{"int9": {}}', "not json"])
def test_a_malformed_thresholds_file_exits_2(small_build, checkpoint_file, tmp_path, capsys, content):
    d, inputs = small_build
    (tmp_path / "t.json").write_text(content)
    assert gate(checkpoint_file, d, inputs, tmp_path / "r", "--thresholds", tmp_path / "t.json") == 2
    assert one_line(capsys.readouterr().err)


def test_the_command_line_beats_the_file(limits):
    from amnet.core.limits import load_limits

    file_bar = limits.for_variant("openvino", "int8")["face.psnr_min"]  # the file sets it per runtime
    cli = load_limits(overrides=["int8.face.psnr_min=99"]).for_variant("openvino", "int8")
    assert file_bar != 99 and cli["face.psnr_min"] == 99


def test_a_crash_inside_the_gate_is_exit_3_not_1(small_build, checkpoint_file, tmp_path, capsys, monkeypatch):
    import benchmarks.parity as parity

    monkeypatch.setattr(parity, "compare", lambda *a, **k: 1 / 0)
    d, inputs = small_build
    assert gate(checkpoint_file, d, inputs, tmp_path, "--no-faces") == 3
    err = capsys.readouterr().err
    assert one_line(err) and "internal error: ZeroDivisionError" in err



def test_a_runtime_error_without_words_is_a_failed_check_named_by_its_type(small_build, checkpoint_file, tmp_path,
                                                                          capsys, monkeypatch):
    import benchmarks.parity as parity
    from amnet.core.errors import ArtifactError

    def silent(*a, **k):
        raise ArtifactError("")

    monkeypatch.setattr(parity, "open_variant", silent)
    d, inputs = small_build
    assert gate(checkpoint_file, d, inputs, tmp_path, "--no-faces") == 1  # was an IndexError: exit 3
    assert "could not run: ArtifactError" in (tmp_path / "parity.md").read_text()


@pytest.mark.parametrize("error, expected", [
    (ValueError("first\nsecond"), "first"), (ValueError(""), "ValueError"), (ValueError(" \n "), "ValueError"),
    (FileNotFoundError(2, "No such file or directory", "x.wav"), "[Errno 2] No such file or directory: 'x.wav'"),
    (ValueError("x" * 300), "x" * 200)])
def test_a_library_error_is_quoted_as_its_first_line(error, expected):
    from amnet.core.errors import first_line

    assert first_line(error) == expected

# ---------------------------------------------------------------- the manifest stays true

def test_a_tampered_artifact_is_refused_by_infer_and_failed_by_the_gate(small_build, checkpoint_file, tmp_path,
                                                                        capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    f = artifacts.resolve(build / "amnet_full_b1_r32.onnx")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the weights
    f.write_bytes(bytes(data))
    assert main(["infer", str(f), "--inputs", str(inputs), "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "does not match the sha256" in err and not (tmp_path / "o.npz").exists()
    assert "pass --no-verify" in err  # the way to run it anyway, which infer has
    assert main(["infer", str(f), "--inputs", str(inputs), "--output", str(tmp_path / "o.npz"), "--no-verify"]) == 0
    assert gate(checkpoint_file, build, inputs, tmp_path / "r", "--no-faces") == 1
    assert "pass --no-verify" in (tmp_path / "r" / "parity.md").read_text()  # the gate's report says so too


@pytest.mark.parametrize("edit", ["no files", "main file left out", "absolute path", "parent path", "short sha256",
                                  "not listed at all"])
def test_a_tampered_artifact_cannot_escape_verification_by_its_manifest(small_build, tmp_path, capsys, edit):
    """Each edit, made by hand to the manifest of a tampered file, once let `infer` run it unverified."""
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    f = artifacts.resolve(build / "amnet_full_b1_r32.onnx")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    manifest = json.loads((build / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == f.name)
    if edit == "no files":
        entry["files"] = {}
    elif edit == "main file left out":
        entry["files"] = {"other.onnx": entry["files"][f.name]}
    elif edit in ("absolute path", "parent path"):
        entry["file"] = str(f) if edit == "absolute path" else f"../b/{f.name}"
        entry["files"] = {entry["file"]: entry["files"][f.name]}
    elif edit == "short sha256":
        entry["files"][f.name] = entry["files"][f.name][:12]
    else:
        manifest["artifacts"].remove(entry)
    (build / "manifest.json").write_text(json.dumps(manifest))
    assert main(["infer", str(f), "--inputs", str(inputs), "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and ("rebuild it" in err) and not (tmp_path / "o.npz").exists(), err


def test_an_ir_whose_bin_has_no_sha256_is_refused(ov_build, tmp_path):
    import shutil

    from amnet.core.errors import IntegrityError
    from runtimes.registry import open_runner

    d, arts = ov_build
    build = tmp_path / "ov"
    build.mkdir()
    manifest = json.loads((d / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == arts["fp32"]["file"])
    for name in entry["files"]:
        shutil.copy(d / name, build / name)
    binary = next(n for n in entry["files"] if n.endswith(".bin"))
    del entry["files"][binary]  # the weights: what a tamperer would change
    (build / "manifest.json").write_text(json.dumps({**manifest, "artifacts": [entry]}))
    with pytest.raises(IntegrityError, match=binary.replace(".", r"\.")):
        open_runner(build / entry["file"])
    open_runner(build / entry["file"], verify=False).activate().close()  # --no-verify still runs it


def _publisher(folder, tag, rounds, big):
    """A child: publish an artifact of two files (like an IR's .xml + .bin) again and again."""
    import random

    from amnet.core import artifacts as a

    rng = random.Random(tag)
    for i in range(rounds):
        with a.Stage(folder) as stage:
            xml, binf = stage.path("amnet_x_ov_fp32.xml"), stage.path("amnet_x_ov_fp32.bin")
            payload = f"{tag}-{i}-{rng.random()}".encode()
            xml.write_bytes(payload * 10)
            binf.write_bytes(payload * big)
            stage.add({"name": "amnet_x_ov_fp32.xml", "runtime": "openvino", "part": "full", "precision": "fp32",
                       "batch": 1, "resolution": 32, "source": tag}, [xml, binf])
            a.publish(stage)


def one_generation_left(folder, data) -> bool:
    """Besides the manifest's files, at most the previous generation of the artifact (same token), nothing else."""
    extra = [p.name for p in folder.iterdir() if p.name not in
             {*data["artifacts"][0]["files"], "manifest.json", ".manifest.lock"}]
    return len(extra) in (0, 2) and len({name.split(".")[1] for name in extra}) <= 1


def _check_folder(folder):
    data = artifacts.read(folder)
    for entry in data["artifacts"]:
        artifacts.verify(folder, entry)  # every file present, every sha256 right
        xml = folder / entry["file"]
        assert (folder / entry["file"]).with_suffix(".bin").name in entry["files"]  # the pair stays a pair
        assert xml.read_bytes()[:20] == (folder / xml.with_suffix(".bin").name).read_bytes()[:20]
    return data


def test_two_publishers_into_one_folder_never_mix(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for round_ in range(10):
        folder = tmp_path / f"r{round_}"
        procs = [ctx.Process(target=_publisher, args=(folder, tag, 5, 2000)) for tag in ("A", "B")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        data = _check_folder(folder)
        assert len(data["artifacts"]) == 1  # one logical artifact, from one publisher, whole
        assert one_generation_left(folder, data)


def test_sigkill_at_any_point_leaves_a_loadable_build(tmp_path):
    import multiprocessing as mp
    import random
    import signal
    import time

    ctx = mp.get_context("fork")
    folder = tmp_path / "b"
    _publisher(folder, "first", 1, 50_000)
    rng = random.Random(0)
    for _ in range(15):
        p = ctx.Process(target=_publisher, args=(folder, "next", 1000, 200_000))
        p.start()
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        data = _check_folder(folder)  # whatever moment the kill hit
        assert len(data["artifacts"]) == 1
    _publisher(folder, "after", 1, 10)  # the next publish sweeps what the killed ones left
    assert one_generation_left(folder, artifacts.read(folder))


def test_two_concurrent_exports_keep_every_sha256_true(small_model, tmp_path):
    import copy

    import torch

    from amnet.checkpoint import save_checkpoint

    other = copy.deepcopy(small_model)
    with torch.no_grad():
        other.reenactor.decoder[-2].weight.mul_(0.5)
    ckpts = [save_checkpoint(tmp_path / "a.safetensors", small_model), save_checkpoint(tmp_path / "b.safetensors", other)]
    folder = tmp_path / "b"
    for _ in range(2):
        procs = [subprocess.Popen([sys.executable, "-m", "amnet.cli", "export", str(c), "--output", str(folder),
                                   "--batch", "1,2", "--resolution", "32", "--no-parity", "--quiet"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in ckpts]
        assert all(p.wait(120) == 0 for p in procs)
        data = artifacts.read(folder)
        assert {a["name"] for a in data["artifacts"]} == {"amnet_full_b1_r32.onnx", "amnet_full_b2_r32.onnx"}
        for a in data["artifacts"]:
            artifacts.verify(folder, a)
            meta = {p.key: p.value for p in onnx.load(str(folder / a["file"])).metadata_props}
            assert meta["source_checkpoint_sha256"] == a["provenance"]["source_sha256"]  # provenance of this file


def test_a_malformed_manifest_is_one_line(small_build, checkpoint_file, tmp_path, capsys):
    d, inputs = small_build
    for content in ("[]", '{"artifacts": null}', '{"schema": 2, "artifacts": [{"name": 3}]}', "{"):
        build = tmp_path / f"m{len(content)}"
        build.mkdir()
        (build / "manifest.json").write_text(content)
        assert gate(checkpoint_file, build, inputs, tmp_path / "r", "--no-faces") == 2
        assert one_line(capsys.readouterr().err)


# ---------------------------------------------------------------- inputs, outputs, resources

@pytest.mark.parametrize("target", ["/dev/null", "fifo", "folder"])
def test_output_onto_a_device_fifo_or_folder_is_refused(small_build, tmp_path, capsys, target):
    d, inputs = small_build
    if target == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    elif target == "folder":
        target = tmp_path
    code = main(["infer", str(d / "amnet_full_b1_r32.onnx"), "--inputs", str(inputs), "--output", str(target)])
    assert code == 2 and "refusing to write" in capsys.readouterr().err
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_openvino_metadata_is_read_as_text(small_build, tmp_path, capsys):
    """An IR accepts inputs that carry the audio_delta that `signals` writes, and refuses the other one."""
    from export.pipeline import BuildOptions, build

    d, inputs = small_build
    b = copy_build(d, tmp_path / "b")
    build(b, "openvino", b, BuildOptions(("fp32",), (1,), 32, progress=False))
    feeds = dict(np.load(inputs))
    for delta, code in (("official", 0), ("time", 2)):
        np.savez(tmp_path / "in.npz", audio_delta=np.array(delta), **feeds)
        assert main(["infer", str(b / "amnet_full_b1_r32_ov_fp32.xml"), "--inputs", str(tmp_path / "in.npz"),
                     "--output", str(tmp_path / "o.npz")]) == code
    assert "'time' deltas but the model was trained with 'official'" in capsys.readouterr().err


@pytest.mark.parametrize("mutate,message", [
    (lambda f: f.__setitem__("source", ((f["source"] + 1) * 127.5).astype(np.uint8)), "integer dtype uint8"),
    (lambda f: f.update({k: v[:0] for k, v in f.items()}), "no samples"),
    (lambda f: f.__setitem__("audio", np.full_like(f["audio"], 3e38)), "produced"),
])
def test_bad_values_are_one_line_and_write_nothing(checkpoint_file, tmp_path, capsys, mutate, message):
    feeds = random_inputs(2, 32)
    mutate(feeds)
    np.savez(tmp_path / "in.npz", **feeds)
    assert main(["infer", str(checkpoint_file), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "o.npz").exists()


def test_out_of_range_inputs_are_warned(checkpoint_file, tmp_path, capsys):
    feeds = random_inputs(1, 32)
    feeds["source"] *= 3
    np.savez(tmp_path / "in.npz", **feeds)
    assert main(["infer", str(checkpoint_file), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 0
    assert "warning: input 'source' spans" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["parity", "--build", "B", "--threads", "100000"], ["parity", "--build", "B", "--threads", "-1"],
    ["parity", "--build", "B", "--samples", "0"], ["parity", "--build", "B", "--samples", "-3"],
    ["infer", "M", "--inputs", "I", "--output", "O", "--resolution", "4096"],
    ["export", "--output", "O", "--batch", "0"],
    ["train", "D", "--output", "O", "--lr", "nan"], ["train", "D", "--output", "O", "--lr", "inf"],
    ["train", "D", "--output", "O", "--lr", "-1"], ["train", "D", "--output", "O", "--minutes", "nan"],
    ["train", "D", "--output", "O", "--decay-from", "-5"],
    ["diagnose", "--build", "B", "--variant", "V", "--snr-min", "nan"],
    ["diagnose", "--build", "B", "--variant", "V", "--budget-db", "inf"],
    ["build", "M", "--runtime", "openvino", "--output", "O", "--max-drop", "nan"],
    ["nosuchcommand"], ["infer"],
])
def test_out_of_bounds_arguments_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "--help" in err, err  # one line that points at --help, not the usage block


def test_files_of_the_wrong_kind_are_one_line(checkpoint_file, small_build, tmp_path):
    """Each of these ended in an internal error (exit 3) or a line of a C library before ours."""
    import zipfile

    from safetensors.torch import load_file, save_file

    d, inputs = small_build
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with zipfile.ZipFile(tmp_path / "text.npz", "w") as z:
        z.writestr("source.txt", "not an array")
    tensors = load_file(str(checkpoint_file))
    from safetensors import safe_open
    with safe_open(str(checkpoint_file), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["amnet_config"])
    save_file(tensors, str(tmp_path / "neg.safetensors"),
              metadata={**meta, "amnet_config": json.dumps({**config, "landmarks": -5})})
    (tmp_path / "g.xml").write_text("garbage")
    (tmp_path / "g.bin").write_bytes(b"garbage")
    (tmp_path / "trunc.png").write_bytes((ROOT / "amnet" / "default" / "heldout_grid.png").read_bytes()[:3000])
    speech = next((ROOT / "calibration_data" / "speech").iterdir())
    cases = [
        (["infer", checkpoint_file, "--inputs", tmp_path / "plain.npy", "--output", tmp_path / "o.npz"], "one array"),
        (["infer", checkpoint_file, "--inputs", tmp_path / "text.npz", "--output", tmp_path / "o.npz"], "not .npy"),
        (["info", tmp_path / "neg.safetensors"], "landmarks must be a positive integer"),
        (["infer", tmp_path / "g.xml", "--inputs", inputs, "--output", tmp_path / "o.npz"], "not a readable OpenVINO"),
        (["reenact", "--source", tmp_path / "trunc.png", "--audio", speech, "--output",
          tmp_path / "o.mp4"], "cannot decode image"),
    ]
    for argv, needle in cases:
        rc, _, err = run(*argv)  # a child process: what C libraries write to descriptor 2 is seen too
        assert rc == 2 and one_line(err) and needle in err, (argv, rc, err)
    assert not (tmp_path / "o.npz").exists()


def test_train_refuses_a_batch_larger_than_the_data(tmp_path, capsys):
    np.savez(tmp_path / "t.npz", **_training_set(3))
    assert main(["train", str(tmp_path / "t.npz"), "--output", str(tmp_path / "run"), "--batch", "4",
                 "--resolution", "32"]) == 2
    assert "more than the 3 pairs" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_evaluate_refuses_broken_weights_and_a_foreign_training_set(small_model, tmp_path, capsys):
    import torch

    from amnet.checkpoint import save_checkpoint

    np.savez(tmp_path / "t.npz", x=np.zeros(3))
    good = save_checkpoint(tmp_path / "good.safetensors", small_model)
    (tmp_path / "grid.png").mkdir()
    assert main(["evaluate", str(good), "--resolution", "32", "--grid", str(tmp_path / "grid.png")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["evaluate", str(good), "--resolution", "32", "--train", str(tmp_path / "t.npz")]) == 2
    assert "not a training set" in capsys.readouterr().err
    broken = __import__("copy").deepcopy(small_model)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    bad = save_checkpoint(tmp_path / "nan.safetensors", broken)
    assert main(["evaluate", str(bad), "--resolution", "32"]) == 2
    out, err = capsys.readouterr()
    assert "NaN/Inf weights" in err and "NaN" not in out


def test_build_refuses_an_export_that_failed_its_parity_check(small_build, tmp_path, capsys):
    d, _ = small_build
    build = copy_build(d, tmp_path / "b")
    manifest = json.loads((build / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == "amnet_full_b1_r32.onnx")
    entry["parity"] = {"passed": False, "outputs": {"face": {"max_abs": float("nan")}}}
    (build / "manifest.json").write_text(json.dumps(manifest))
    for model in (build, build / entry["file"]):  # the folder, or the file itself
        assert main(["build", str(model), "--runtime", "openvino", "--precision", "fp32", "--resolution", "32",
                     "--batch", "1", "--output", str(tmp_path / "ov"), "--quiet"]) == 2
        assert "failed the ONNX parity check" in capsys.readouterr().err
    assert not any(p.suffix == ".xml" for p in (tmp_path / "ov").glob("*")) if (tmp_path / "ov").exists() else True


def test_a_report_that_cannot_be_written_whole_leaves_no_new_or_stale_verdict(small_build, checkpoint_file, tmp_path,
                                                                              capsys, monkeypatch):
    from benchmarks import parity

    d, inputs = small_build
    report = tmp_path / "r"
    (report / "parity.md").mkdir(parents=True)  # one of the report's names is taken by a folder
    (report / "parity.json").write_text('{"passed": true}')  # an old verdict
    assert gate(checkpoint_file, d, inputs, report, "--no-faces") == 2
    assert "parity.md" in capsys.readouterr().err  # refused before anything was written: the old files untouched
    assert (report / "parity.json").read_text() == '{"passed": true}'
    (report / "parity.md").rmdir()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parity, "diff_png", disk_full)  # a write that fails midway
    assert gate(checkpoint_file, d, inputs, report, "--no-faces") == 2
    assert "No space left" in capsys.readouterr().err and not (report / "parity.json").exists()


def test_signals_refuses_silent_audio(tmp_path, capsys):
    import soundfile as sf

    from amnet.reenact.media import Mp4Writer

    sf.write(tmp_path / "quiet.wav", np.zeros(44100, np.float32), 44100)
    video = tmp_path / "v.mp4"
    with Mp4Writer(video, 25, 64, 64) as out:
        for _ in range(3):
            out.add_frame(np.full((64, 64, 3), 128, np.uint8))
    assert main(["signals", str(video), "--audio", str(tmp_path / "quiet.wav"), "--output", str(tmp_path / "s")]) == 2
    assert "silent" in capsys.readouterr().err


def test_a_frame_above_the_maximum_is_refused_with_its_memory(checkpoint_file, tmp_path, capsys):
    from amnet.cli.args import MAX_RESOLUTION

    side = MAX_RESOLUTION + 4
    np.savez(tmp_path / "in.npz", **{**random_inputs(1, 8), "source": np.zeros((1, 3, side, side), np.float32)})
    assert main(["infer", str(checkpoint_file), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    assert f"above the {MAX_RESOLUTION}² maximum" in capsys.readouterr().err


def test_infer_on_many_samples_runs_in_bounded_memory(checkpoint_file, tmp_path):
    """Peak RSS for 192 samples stays near that for 8: the reference runs 8 at a time."""
    code = ("import resource, sys; from amnet.cli.main import main; rc = main(sys.argv[1:]); "
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    peaks = {}
    for n in (8, 192):
        np.savez(tmp_path / f"in{n}.npz", **random_inputs(n, 64))
        r = subprocess.run([sys.executable, "-c", code, "infer", str(checkpoint_file), "--inputs",
                            str(tmp_path / f"in{n}.npz"), "--output", str(tmp_path / f"o{n}.npz")],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        peaks[n] = int(r.stdout.split()[-1]) / 1024
    # Inputs + outputs of 184 more samples are ~12 MB; unchunked activations would add ~1.8 GB.
    assert peaks[192] < peaks[8] + 150, peaks
    assert np.load(tmp_path / "o192.npz")["face"].shape == (192, 3, 64, 64)


def test_a_folder_with_two_resolutions_is_not_silently_halved(small_model, small_build, tmp_path, capsys):
    from export.onnx_export import export_file

    d, inputs = small_build
    b = copy_build(d, tmp_path / "b")
    export_file(small_model, b, "full", 1, 64)
    assert main(["infer", str(b), "--inputs", str(inputs), "--output", str(tmp_path / "o.npz")]) == 2
    assert "several resolutions" in capsys.readouterr().err


def test_building_from_a_foreign_onnx_is_one_line(small_build, tmp_path):
    d, _ = small_build
    proto = onnx.load(str(artifacts.resolve(d / "amnet_full_b1_r32.onnx")))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    code, _, err = run("build", tmp_path / "foreign.onnx", "--runtime", "openvino", "--precision", "fp32",
                       "--output", tmp_path / "out", "--resolution", "32")
    assert code == 2 and one_line(err) and "not exported by amnet-deploy" in err
    meta = {p.key: p for p in onnx.load(str(artifacts.resolve(d / "amnet_full_b1_r32.onnx"))).metadata_props}
    proto = onnx.load(str(artifacts.resolve(d / "amnet_full_b1_r32.onnx")))
    next(p for p in proto.metadata_props if p.key == "landmarks").value = "-1"
    onnx.save(proto, str(tmp_path / "bad_meta.onnx"))
    assert "landmarks" in meta
    code, _, err = run("build", tmp_path / "bad_meta.onnx", "--runtime", "openvino", "--precision", "fp32",
                       "--output", tmp_path / "out", "--resolution", "32")
    assert code == 2 and one_line(err) and "landmarks='-1'" in err


def test_a_model_with_no_inputs_is_one_line(tmp_path, capsys):
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("face", TensorProto.FLOAT, [1])
    const = helper.make_node("Constant", [], ["face"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    onnx.save(helper.make_model(helper.make_graph([const], "g", [], [out]), opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "empty.onnx"))
    np.savez(tmp_path / "in.npz", **random_inputs(1, 8))
    assert main(["infer", str(tmp_path / "empty.onnx"), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    assert "declares no inputs" in capsys.readouterr().err


def test_an_unwritable_output_is_one_line(small_build, tmp_path):
    d, inputs = small_build
    code, _, err = run("infer", d / "amnet_full_b1_r32.onnx", "--inputs", inputs, "--output", "/proc/amnet/o.npz")
    assert code == 2 and one_line(err)


def test_a_full_disk_is_one_line(small_build, tmp_path, capsys, monkeypatch):
    import amnet.core.fileio as fileio

    def full(path, arrays, compressed=False):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "save_npz", full)
    d, inputs = small_build
    assert main(["infer", str(d / "amnet_full_b1_r32.onnx"), "--inputs", str(inputs),
                 "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "No space left on device" in err


def test_bench_with_a_relative_build_folder_measures_every_variant(small_build, tmp_path, monkeypatch, capsys):
    d, _ = small_build
    monkeypatch.chdir(d.parent)
    assert main(["bench", "--build", d.name, "--resolution", "32", "--only", "b1", "--iters", "3", "--quiet",
                 "--report", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows and all("fps" in r for r in rows)


# ---------------------------------------------------------------- found in review

def test_export_parity_runs_for_a_batch_larger_than_its_samples(checkpoint_file, tmp_path, capsys):
    assert main(["export", str(checkpoint_file), "--output", str(tmp_path), "--batch", "16", "--resolution", "32",
                 "--quiet"]) == 0
    entry = artifacts.read(tmp_path)["artifacts"][0]
    assert entry["parity"]["passed"] and entry["batch"] == 16


def test_export_parity_keeps_nan(small_model, tmp_path):
    """A NaN anywhere in the outputs makes max_abs NaN, which fails `<= limit` (Python's max() would drop it)."""
    import copy

    import torch

    from export.onnx_export import export_file, parity

    path = export_file(small_model, tmp_path, "full", 1, 32)
    broken = copy.deepcopy(small_model)
    feeds = random_inputs(3, 32)
    with torch.no_grad():
        broken.reenactor.decoder[-2].weight.fill_(float("nan"))
    errs = parity(broken, path, "full", feeds, 1)
    assert np.isnan(errs["face"]["max_abs"]) and not errs["face"]["max_abs"] <= 1e-4


def test_a_reader_of_the_previous_manifest_still_finds_its_files(tmp_path):
    folder = tmp_path / "b"
    _publisher(folder, "one", 1, 10)
    first = artifacts.read(folder)["artifacts"][0]["files"]
    _publisher(folder, "two", 1, 10)
    assert all((folder / f).is_file() for f in first)  # kept for one generation
    _publisher(folder, "three", 1, 10)
    assert not any((folder / f).exists() for f in first)  # then swept


def test_a_runtime_failure_inside_a_runner_is_an_artifact_error(tmp_path):
    from amnet.core.errors import ArtifactError
    from amnet.core.runner import Runner, TensorSpec

    class Broken(Runner):
        name = "broken"

        def _activate(self):
            self.inputs, self.outputs = [TensorSpec("eye", (1, 2))], ["x"]

        def _run(self, feeds):
            raise RuntimeError("out of memory\nmore lines")

    with Broken(tmp_path / "m.bin") as r, pytest.raises(ArtifactError, match="broken failed to run m.bin: out of memory$"):
        r.infer({"eye": np.zeros((1, 2), np.float32)})


def test_inputs_at_another_resolution_are_a_usage_error(small_build, checkpoint_file, tmp_path, capsys):
    d, _ = small_build
    np.savez(tmp_path / "in64.npz", **random_inputs(2, 64))
    assert gate(checkpoint_file, d, tmp_path / "in64.npz", tmp_path / "r", "--no-faces") == 2
    assert "run at 32²" in capsys.readouterr().err


def test_an_empty_image_is_one_line(checkpoint_file, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", **{**random_inputs(1, 8), "source": np.zeros((1, 3, 0, 0), np.float32)})
    assert main(["infer", str(checkpoint_file), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    assert "no values" in capsys.readouterr().err


def test_quiet_drops_what_third_party_steps_print_and_keeps_errors(capfd):
    """--quiet builds: NNCF draws rich progress bars and ONNX Runtime prints and logs while calibrating."""
    import logging

    from rich.progress import track

    from amnet.core.progress import quiet_output

    def noisy_step():
        print("Collecting tensor data")
        logging.warning("Please consider pre-processing")
        for _ in track(range(3), description="Statistics collection"):
            pass

    with quiet_output(True):
        noisy_step()
    assert capfd.readouterr() == ("", "")
    with pytest.raises(ValueError), quiet_output(True):
        raise ValueError("a failure is still raised")
    assert logging.root.manager.disable == logging.NOTSET  # logging comes back after the block
    with quiet_output(False):
        noisy_step()
    out = capfd.readouterr()
    assert "Collecting tensor data" in out.out and "Statistics collection" in out.out + out.err


@pytest.mark.parametrize("content", ["{}", "[]", '[{"identity": "a"}]'])
def test_a_clips_file_that_lists_no_clip_is_refused_not_replaced_by_the_shipped_ones(tmp_path, content):
    from amnet.core.errors import InputError
    from amnet.realdata import read_clips

    (tmp_path / "clips.json").write_text(content)
    with pytest.raises(InputError, match="expected a JSON list"):
        read_clips(tmp_path / "clips.json")


# ---------------------------------------------------------------- second fuzzing pass

def _flip_byte(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_a_tampered_export_is_never_built_from_nor_diagnosed(small_build, checkpoint_file, tmp_path, capsys):
    d, _ = small_build
    build = copy_build(d, tmp_path / "b")
    assert main(["build", str(build), "--runtime", "openvino", "--precision", "fp32", "--resolution", "32",
                 "--output", str(build), "--quiet"]) == 0
    capsys.readouterr()
    onnx_file = artifacts.resolve(build / "amnet_full_b1_r32.onnx")
    _flip_byte(onnx_file)
    for source in (build, onnx_file):  # the folder, or the file itself
        assert main(["build", str(source), "--runtime", "openvino", "--precision", "fp16", "--resolution", "32",
                     "--output", str(tmp_path / "ov"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "does not match the sha256" in err and "--no-verify" not in err  # build has no such option
    assert main(["diagnose", str(checkpoint_file), "--build", str(build), "--variant", "openvino-fp32-b1-r32",
                 "--samples", "2", "--report", str(tmp_path / "diag")]) == 2  # its tensor names come from that ONNX
    assert "does not match the sha256" in capsys.readouterr().err


def test_pipeline_refuses_bad_options_before_it_writes(checkpoint_file, tmp_path, capsys):
    for extra in (["--inputs", tmp_path / "none.npz"], ["--reference", tmp_path / "none.npz"],
                  ["--thresholds", tmp_path / "none.json"], ["--threshold", "bogus"]):
        out = tmp_path / "pl"
        assert main(["pipeline", str(checkpoint_file), "--output", str(out), "--resolutions", "32", "--quiet",
                     *map(str, extra)]) == 2, extra
        assert one_line(capsys.readouterr().err) and not out.exists(), extra


def test_bench_measures_what_it_was_asked_or_refuses(small_build, checkpoint_file, tmp_path, capsys):
    from amnet.core import cpu

    d, _ = small_build
    report = tmp_path / "r"

    def bench(*extra, checkpoint=checkpoint_file, build=d):
        return main(["bench", str(checkpoint), "--build", str(build), "--resolution", "32", "--iters", "2",
                     "--only", "onnxruntime-fp32-b1", "--report", str(report), "--quiet", *map(str, extra)])

    assert bench(checkpoint=tmp_path / "none.safetensors") == 2  # eager was silently dropped
    assert bench("--resolution", "64") == 2 and "no variant at 64²" in capsys.readouterr().err
    lacking = [cap for cap, needs in cpu.CAPS.items() if not all(cpu.isa()["native"][f] for f in needs)]
    if lacking:  # on a CPU that has every feature, no cap can be refused
        assert bench("--isa", lacking[0]) == 2 and "can only take features away" in capsys.readouterr().err
    tampered = copy_build(d, tmp_path / "t")
    _flip_byte(artifacts.resolve(tampered / "amnet_full_b1_r32.onnx"))
    assert bench(build=tampered) == 1 and "does not match the sha256" in capsys.readouterr().out
    assert bench("--no-verify", build=tampered) == 0  # the children honour it
    capsys.readouterr()
    (report / "bench.md").unlink()
    (report / "bench.md").mkdir()  # a name taken by a folder: refused before anything is measured or replaced
    before = (report / "bench.json").read_bytes()
    assert bench() == 2 and (report / "bench.json").read_bytes() == before


def test_refused_reports_replace_nothing(small_build, checkpoint_file, tmp_path, capsys):
    d, _ = small_build
    for name, argv in (("diagnose.png", ["diagnose", checkpoint_file, "--build", d, "--variant",
                                         "onnxruntime-fp32-b1-r32", "--samples", "2", "--report"]),
                       ("report.json", ["signals", tmp_path / "v.mp4", "--audio", tmp_path / "a.wav", "--output"])):
        report = tmp_path / name.split(".")[0]
        (report / name).mkdir(parents=True)
        (report / "keep.json").write_text("old")
        assert main([*map(str, argv), str(report)]) == 2, name
        assert "is a folder" in capsys.readouterr().err
        assert [p.name for p in sorted(report.iterdir())] == sorted([name, "keep.json"])


def test_an_empty_output_name_does_not_mean_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--resolution", "32", "--output", "", "--quiet"]) == 2
    assert "--output is empty" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scope", [{"float_op_types": 5}, {"float_op_types": [1, None]}, {"float_op_types": "Add"},
                                   {"float_nodes": [5]}])
def test_a_malformed_int8_scope_is_one_line(tmp_path, scope):
    from amnet.core.errors import InputError
    from export.int8_scope import SCOPE_FORMAT, load_scope

    (tmp_path / "s.json").write_text(json.dumps({"format": SCOPE_FORMAT, "float_nodes": ["/x/"], **scope}))
    with pytest.raises(InputError, match="must be a list of non-empty strings"):
        load_scope(tmp_path / "s.json")


def test_a_checkpoint_runs_in_fp32_only_and_an_artifact_in_its_own_precision(checkpoint_file, small_build):
    from amnet.core.errors import InputError
    from runtimes.registry import open_runner

    d, _ = small_build
    with pytest.raises(InputError, match="runs in fp32"):
        open_runner(checkpoint_file, precision="int8")
    with pytest.raises(InputError, match="is the fp32 onnxruntime artifact, not int8"):
        open_runner(d / "amnet_full_b1_r32.onnx", precision="int8")


def test_a_folder_with_two_models_of_one_batch_names_them(small_build, tmp_path):
    from amnet.core.errors import InputError
    from runtimes.registry import open_runner

    d, _ = small_build
    build = copy_build(d, tmp_path / "b")
    manifest = json.loads((build / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["name"] == "amnet_full_b1_r32.onnx")
    twin = entry["file"].replace("amnet_full_b1_r32.", "amnet_full_b1_r32_gcs.")  # a file of its own (one owner)
    (build / twin).write_bytes((build / entry["file"]).read_bytes())
    manifest["artifacts"].append({**entry, "name": "amnet_full_b1_r32_gcs.onnx", "file": twin,  # as `make run`
                                  "files": {twin: entry["sha256"]}})  # leaves two INT8
    (build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"amnet_full_b1_r32\.onnx, amnet_full_b1_r32_gcs\.onnx\): pass one of them"):
        open_runner(build, runtime="onnxruntime", precision="fp32")


# ---------------------------------------------------------------- third fuzzing pass

def _training_set(n=4, res=32, **edits):
    rng = np.random.default_rng(0)
    data = {"face": rng.integers(0, 256, (n, res, res, 3), np.uint8),
            "audio": rng.normal(0, 1, (n, 64, 60)).astype(np.float32),
            "pose": rng.normal(0, .2, (n, 3)).astype(np.float32), "eye": np.full((n, 2), .3, np.float32),
            "landmarks": rng.uniform(0, 1, (n, 136)).astype(np.float32), "identity": np.array([0, 0, 1, 1][:n])}
    return {**data, **edits}


@pytest.mark.parametrize("edit, needle", [
    ({"audio": np.full((4, 64, 60), np.nan, np.float32)}, "audio holds NaN"),
    ({"pose": np.zeros((3, 3), np.float32)}, "pose must be"),
    ({"face": np.zeros((4, 32, 32, 3), np.float32)}, "face must be"),
    ({"landmarks": np.zeros(4, np.float32)}, "landmarks must be"),
    ({"audio": np.zeros((4, 32, 60), np.float32)}, "audio N×64×60"),
])
def test_training_data_that_would_train_nan_or_crash_midway_is_one_line(tmp_path, capsys, edit, needle):
    np.savez(tmp_path / "t.npz", **_training_set(**edit))
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "t.npz"), "--output", str(out), "--batch", "2", "--epochs", "1",
                 "--resolution", "32"]) == 2
    assert needle in capsys.readouterr().err and not out.exists()  # no folder left behind either


def test_resume_refuses_what_it_cannot_resume(tmp_path, capsys):
    np.savez(tmp_path / "t.npz", **_training_set())
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "t.npz"), "--output", str(run), "--batch", "2", "--epochs", "1",
            "--resolution", "32", "--threads", "1"]
    assert main(argv) == 0
    model = (run / "amnet.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume", "--kernel", "3"]) == 2  # another config
    assert "another --output" in capsys.readouterr().err
    state = (run / "train_state.pt").read_bytes()
    for damaged in (state[:1000], b"not a torch file"):
        (run / "train_state.pt").write_bytes(damaged)
        assert main([*argv, "--epochs", "2", "--resume"]) == 2
        assert "damaged or from another run" in capsys.readouterr().err
    (run / "train_state.pt").unlink()  # a model without its state: resuming "from scratch" would replace it
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and (run / "amnet.safetensors").read_bytes() == model


def test_a_manifest_entry_whose_files_are_gone_is_dropped_at_the_next_publish(small_build, checkpoint_file, tmp_path,
                                                                               capsys):
    d, _ = small_build
    build = copy_build(d, tmp_path / "b")
    gone = artifacts.resolve(build / "amnet_full_b1_r32.onnx")
    gone.unlink()
    assert main(["export", str(checkpoint_file), "--output", str(build), "--resolution", "32", "--batch", "2",
                 "--no-parity", "--quiet"]) == 0
    assert "amnet_full_b1_r32.onnx whose files are gone: dropped" in capsys.readouterr().err
    names = {a["name"] for a in artifacts.read(build)["artifacts"]}
    assert "amnet_full_b1_r32.onnx" not in names and "amnet_full_b2_r32.onnx" in names


def test_a_file_name_with_a_newline_is_still_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "a\nb.safetensors")]) == 2
    assert one_line(capsys.readouterr().err)


def test_lazy_import_reads_package_metadata_once_and_never_remembers_a_failure(monkeypatch):
    """A live stream asks for PyAV twice a frame: the metadata read (~1 ms) happens once per process."""
    from importlib import metadata

    from amnet.core import fileio
    from amnet.core.errors import RuntimeMissing

    fileio.lazy_import.cache_clear()  # (a test that fakes a missing module after a real import must do this too)
    reads, imports = [], []
    real_version, real_import = metadata.version, fileio.importlib.import_module
    monkeypatch.setattr(fileio.metadata, "version", lambda dist: reads.append(dist) or real_version("numpy"))
    monkeypatch.setattr(fileio.importlib, "import_module", lambda name: imports.append(name) or real_import(name))
    first = fileio.lazy_import("json", "hint", "1.0", "amnet-test-once")
    assert fileio.lazy_import("json", "hint", "1.0", "amnet-test-once") is first
    assert reads == ["amnet-test-once"] and imports == ["json"]
    for _ in range(2):  # each try imports again: a package installed meanwhile is found
        with pytest.raises(RuntimeMissing, match="amnet_no_such_module is not installed: pip install it"):
            fileio.lazy_import("amnet_no_such_module", "pip install it")
    assert imports == ["json", "amnet_no_such_module", "amnet_no_such_module"]
