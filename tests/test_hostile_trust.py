"""Issue 26, the hostile-user sweep: the manifest's owner deletes only its own files, vouches for every file an
artifact reads, refuses a manifest that says two things, and no command writes over what it reads."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from amnet.cli.main import main
from amnet.core import artifacts, fileio
from amnet.core.errors import ArtifactError
from tests.conftest import copy_build

B1 = "amnet_full_b1_r32.onnx"  # small_build's batch-1 export


def one_line(err: str) -> bool:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("amnet-deploy: warning:")]
    return "Traceback" not in err and len(lines) == 1


def infer(model, inputs, output, *extra):
    return main(["infer", str(model), "--inputs", str(inputs), "--output", str(output), *map(str, extra)])


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def manifest_of(folder):
    return json.loads((folder / artifacts.MANIFEST).read_text())


def current(folder, name):
    """The file an artifact's logical name stands for, read from the manifest itself."""
    return folder / next(a["file"] for a in manifest_of(folder)["artifacts"] if a["name"] == name)


def write_manifest(folder, data):
    (folder / artifacts.MANIFEST).write_text(json.dumps(data))


# ---------------------------------------------------------------- 1. the sweep deletes only our files

USER_FILES = ("taxes.2024010100.csv", "IMG.20231225ab.jpg", "thesis.deadbeef00.tex", ".draft.12345.tmp", "notes.txt")


def test_a_build_into_a_users_folder_deletes_none_of_their_files(small_build, tmp_path, capsys):
    d, _ = small_build
    src = current(d, B1)  # the export's own (tokened) file, verified
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in USER_FILES:
        (folder / name).write_text(name)
    assert main(["build", str(src), "--runtime", "onnxruntime", "--precision", "fp16", "--output", str(folder),
                 "--quiet"]) == 0
    assert all((folder / n).read_text() == n for n in USER_FILES)


def test_the_sweep_still_deletes_its_own_old_generations_and_dead_pending_files(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    for name in USER_FILES:
        (folder / name).write_text(name)
    pid = dead_pid()
    ours_pending = folder / f".pending-{pid}-1-x.onnx"  # a SIGKILLed build of ours: its logical name is ours
    theirs_pending = folder / f".pending-{pid}-1-someone_else.onnx"
    generations = []
    for content in ("one", "two", "three"):
        with artifacts.Stage(folder) as stage:
            pending = stage.path("x.onnx")
            pending.write_text(content)
            stage.add({"name": "x.onnx", "runtime": "onnxruntime", "part": "full", "precision": "fp32"}, [pending])
            ours_pending.write_text("left by a dead build")
            theirs_pending.write_text("a user's")
            generations.append(artifacts.publish(stage)["artifacts"][0]["file"])
    on_disk = {p.name for p in folder.iterdir()}
    assert generations[0] not in on_disk  # two publishes ago: deleted
    assert {generations[1], generations[2]} <= on_disk  # the current one and the one readers may still hold
    assert ours_pending.name not in on_disk
    assert {*USER_FILES, theirs_pending.name} <= on_disk


# ---------------------------------------------------------------- 2. ONNX external data is verified

def test_onnx_external_data_the_manifest_does_not_list_is_refused(small_build, tmp_path, capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    entry = next(a for a in manifest_of(build)["artifacts"] if a["name"] == B1)
    proto = onnx.load(str(current(build, B1)))
    with artifacts.Stage(build) as stage:  # re-saved with its weights in w.data, published like any build
        pending = stage.path(B1)
        onnx.save(proto, str(pending), save_as_external_data=True, location="w.data")
        stage.add({k: v for k, v in entry.items() if k not in ("file", "files", "sha256")}, [pending])
        artifacts.publish(stage)
    assert (build / "w.data").is_file()
    capsys.readouterr()
    assert infer(build / B1, inputs, tmp_path / "out.npz") == 2
    err = capsys.readouterr().err
    assert one_line(err) and "w.data" in err and not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------- 3. a manifest that says two things

def test_duplicate_or_mismatched_manifest_entries_are_refused(small_build, tmp_path, capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    good = manifest_of(build)
    b1 = next(a for a in good["artifacts"] if a["name"] == B1)
    b2 = next(a for a in good["artifacts"] if a["name"] != B1)
    ir = {**b1, "file": "amnet_full_b1_r32_ov_fp32.0123456789.xml", "runtime": "openvino",
          "files": {"amnet_full_b1_r32_ov_fp32.0123456789.xml": "a" * 64}}
    cases = {"exact duplicate": good["artifacts"] + [b1],
             "one file, two entries": good["artifacts"] + [{**b2, "name": "amnet_full_b2_r32_again.onnx"}],
             "an ONNX name for an IR's file": [a for a in good["artifacts"] if a is not b1] + [ir]}
    for case, arts in cases.items():
        write_manifest(build, {**good, "artifacts": arts})
        with pytest.raises(ArtifactError):
            artifacts.read(build)
        capsys.readouterr()
        assert infer(build / B1, inputs, tmp_path / "out.npz") == 2, case
        assert one_line(capsys.readouterr().err), case


def test_an_entry_whose_runtime_does_not_run_its_file_is_refused(small_build, tmp_path, capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    data = manifest_of(build)
    next(a for a in data["artifacts"] if a["name"] == B1)["runtime"] = "openvino"
    write_manifest(build, data)
    assert infer(build / B1, inputs, tmp_path / "out.npz") == 2
    err = capsys.readouterr().err
    assert one_line(err) and "openvino" in err


# ---------------------------------------------------------------- 5. no output over an input

def test_infer_refuses_to_write_over_its_inputs_model_or_manifest(small_build, tmp_path, capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    same = tmp_path / "same.npz"
    same.write_bytes(inputs.read_bytes())
    loose = tmp_path / "loose.onnx"
    loose.write_bytes(current(build, B1).read_bytes())
    manifest = build / artifacts.MANIFEST
    for model, given, output in ((build / B1, same, same), (loose, inputs, loose), (build / B1, inputs, manifest)):
        before = output.read_bytes()
        capsys.readouterr()
        assert infer(model, given, output) == 2, output
        assert one_line(capsys.readouterr().err) and output.read_bytes() == before


def test_build_refuses_an_output_folder_holding_its_unlisted_input(small_build, tmp_path, capsys):
    d, _ = small_build
    loose = tmp_path / "loose.onnx"
    loose.write_bytes(current(d, B1).read_bytes())
    assert main(["build", str(loose), "--runtime", "onnxruntime", "--precision", "fp16", "--output", str(tmp_path),
                 "--quiet"]) == 2
    assert one_line(capsys.readouterr().err) and not (tmp_path / artifacts.MANIFEST).exists()


# ---------------------------------------------------------------- 6. logical names in build

def test_build_takes_a_logical_name_as_infer_does(small_build, tmp_path, capsys):
    d, _ = small_build
    build = copy_build(d, tmp_path / "b")
    assert not (build / B1).exists()  # only the tokened file is on disk
    assert main(["build", str(build / B1), "--runtime", "onnxruntime", "--precision", "fp16", "--output", str(build),
                 "--quiet"]) == 0
    assert any(a["precision"] == "fp16" for a in artifacts.read(build)["artifacts"])


# ---------------------------------------------------------------- 7. a hostile manifest

def test_a_deeply_nested_manifest_is_one_artifact_error(small_build, tmp_path, capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    (build / artifacts.MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="deep"):
        artifacts.read(build)
    assert infer(build / B1, inputs, tmp_path / "out.npz") == 2
    assert one_line(capsys.readouterr().err)


# ---------------------------------------------------------------- 8. errors name the user's file

def test_a_failed_write_names_the_output_not_the_temp_file(small_build, tmp_path, monkeypatch, capsys):
    d, inputs = small_build
    out = tmp_path / "out.npz"

    def full_disk(path, mode="r", *args, **kwargs):  # what open() of a new file says when the disk is full
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", full_disk, raising=False)  # the name save_npz's writer looks up
    assert infer(d / B1, inputs, out) == 2
    err = capsys.readouterr().err
    assert one_line(err) and f"({out})" in err and ".tmp" not in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 9. an interrupted export leaves no folder

@pytest.mark.parametrize("signal_name", ["KeyboardInterrupt", "Terminated"])
def test_an_interrupted_export_removes_the_folder_it_created(checkpoint_file, tmp_path, monkeypatch, signal_name):
    import export.onnx_export
    from amnet.cli import main as cli

    interrupt = {"KeyboardInterrupt": KeyboardInterrupt, "Terminated": cli.Terminated}[signal_name]

    def interrupted(*args, **kwargs):
        raise interrupt()

    monkeypatch.setattr(export.onnx_export, "export_one", interrupted)
    out = tmp_path / "new" / "export"
    code = main(["export", str(checkpoint_file), "--output", str(out), "--resolution", "32", "--quiet"])
    assert code == (130 if interrupt is KeyboardInterrupt else 143)
    assert list(tmp_path.iterdir()) == []  # both folders it made, gone
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main(["export", str(checkpoint_file), "--output", str(kept), "--resolution", "32", "--quiet"]) == code
    assert kept.is_dir()  # the user's own (empty) folder stays
