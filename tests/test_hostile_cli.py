"""Hostile-user inputs to the CLI (issue 26): each is one line on stderr, exit 2, nothing lost, nothing left."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amnet.cli.main import main
from amnet.core.errors import EXIT_USAGE

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv) -> tuple[int, str]:
    """In-process: the exit code and stderr."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, err)


def subprocess_cli(*argv, env_extra=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amnet.cli", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})})


# ---------------------------------------------------------------- 1. train --output over a run

def test_train_refuses_to_replace_a_run_without_resume_or_overwrite(tmp_path, capsys, checkpoint_file):
    import shutil

    from amnet.core.fileio import file_sha256, save_npz
    from tests.test_train import tiny_data

    data = save_npz(tmp_path / "train.npz", tiny_data(n=4))  # one step of 4
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(checkpoint_file, run / "amnet.safetensors")  # a trained run's model
    base = ["train", data, "--output", run, "--epochs", "1", "--batch", "4", "--resolution", "32"]
    before = {p.name: file_sha256(p) for p in run.iterdir()}
    code, err = run_cli(capsys, *base)
    assert code == EXIT_USAGE
    one_line_error(err, str(run), "--resume", "--overwrite")
    assert {p.name: file_sha256(p) for p in run.iterdir()} == before  # the trained run is untouched
    assert run_cli(capsys, *base, "--overwrite")[0] == 0
    assert file_sha256(run / "amnet.safetensors") != before["amnet.safetensors"]


# ---------------------------------------------------------------- 2. AMNET_BACKENDS plugins that exit or raise

@pytest.mark.parametrize("body, said", [("import sys\nsys.exit(0)\n", "sys.exit(0)"),
                                        ("raise RuntimeError('plugin broke')\n", "raised RuntimeError while being imported: plugin broke")])
@pytest.mark.parametrize("argv", [["parity", "--help"], ["info"]])
def test_a_plugin_that_exits_or_raises_is_one_line_naming_it(tmp_path, body, said, argv):
    (tmp_path / "hostile_plugin.py").write_text(body)
    r = subprocess_cli(*argv, env_extra={"AMNET_BACKENDS": "hostile_plugin",
                                         "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert r.returncode == EXIT_USAGE, (r.returncode, r.stdout, r.stderr)
    one_line_error(r.stderr, "'hostile_plugin'", said)
    assert "internal error" not in r.stderr and not r.stdout


# ---------------------------------------------------------------- 3. INT8 scope files: hostile patterns, smooth_gc

def scope_file(tmp_path, extra_patterns=(), **fields) -> Path:
    import json

    from export.int8_scope import ALWAYS_FLOAT, SCOPE_FORMAT

    path = tmp_path / "scope.json"
    path.write_text(json.dumps({"format": SCOPE_FORMAT, "float_nodes": [*ALWAYS_FLOAT, *extra_patterns], **fields}))
    return path


def build_with_scope(capsys, tmp_path, scope) -> tuple[int, str]:
    """The scope is read before the model: a missing model is refused only after the scope passed."""
    return run_cli(capsys, "build", tmp_path / "no-export", "--runtime", "onnxruntime", "--precision", "int8",
                   "--int8-scope", scope, "--output", tmp_path / "out")


@pytest.mark.parametrize("pattern", [r"([a-z./_0-9A-Z]+)+!", r"(\w)\1", r"(?<=cells)\.1", r"a+b+c+d+"])
def test_a_scope_pattern_that_could_backtrack_for_ever_is_refused(tmp_path, capsys, pattern):
    scope = scope_file(tmp_path, [pattern])
    code, err = build_with_scope(capsys, tmp_path, scope)
    assert code == EXIT_USAGE
    one_line_error(err, str(scope), repr(pattern))
    assert not (tmp_path / "out").exists()


def test_the_shipped_and_generated_scopes_stay_within_the_safe_subset(tmp_path):
    from export.int8_scope import FLOAT_FRAGMENTS, SCOPES_DIR, load_scope, write_scope

    for path in SCOPES_DIR.glob("*.json"):
        load_scope(path)
    assert load_scope(scope_file(tmp_path, FLOAT_FRAGMENTS)).fragments
    written = write_scope(tmp_path / "gen.json", ["/reenactor/cells.1/body/body.0/"], {})
    assert load_scope(written).fragments[-1] == r"/reenactor/cells\.1/body/body\.0/"


@pytest.mark.parametrize("raw", ["NaN", "true", "1e999", "-0.5", "0", "2", '"0.5"'])
def test_a_scope_smooth_gc_that_is_no_alpha_is_refused_at_load(tmp_path, capsys, raw):
    scope = scope_file(tmp_path)
    scope.write_text(scope.read_text()[:-1] + f', "smooth_gc": {raw}}}')  # NaN and 1e999: what json.dumps won't write
    code, err = build_with_scope(capsys, tmp_path, scope)
    assert code == EXIT_USAGE
    one_line_error(err, str(scope), "smooth_gc", "(0, 1]")
    assert "--smooth-gc nan" not in err and "--smooth-gc inf" not in err


# ---------------------------------------------------------------- 4. deep JSON and FIFOs as thresholds and scopes

def deep_json(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def test_a_100k_deep_thresholds_file_is_one_line(tmp_path, capsys):
    deep = deep_json(tmp_path / "limits.json")
    code, err = run_cli(capsys, "parity", "--build", tmp_path / "no-build", "--thresholds", deep,
                        "--report", tmp_path / "report")
    assert code == EXIT_USAGE
    one_line_error(err, str(deep), "deep")


def test_a_fifo_as_thresholds_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "limits.fifo"
    os.mkfifo(fifo)
    r = subprocess_cli("parity", "--build", tmp_path / "no-build", "--thresholds", fifo,
                       "--report", tmp_path / "report", timeout=60)  # the old code blocked in open() for ever
    assert r.returncode == EXIT_USAGE
    one_line_error(r.stderr, str(fifo), "FIFO")


def test_a_100k_deep_scope_file_is_one_line(tmp_path, capsys):
    deep = deep_json(tmp_path / "scope.json")
    code, err = build_with_scope(capsys, tmp_path, deep)
    assert code == EXIT_USAGE
    one_line_error(err, str(deep), "deep")


# ---------------------------------------------------------------- 5. malformed AMNET_CALIB_DIR sets

def small_heldout(n=2, side=8) -> dict:
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 255, (2 * n, side, side, 3), dtype=np.uint8),
            "source_idx": np.arange(n), "target_idx": np.arange(n, 2 * n), "identity": np.zeros(n, np.int64),
            "audio": rng.normal(0, 1, (n, 64, 60)).astype(np.float32),
            "pose": np.zeros((n, 3), np.float32), "eye": np.full((n, 2), 0.3, np.float32),
            "landmarks": np.zeros((n, 136), np.float32)}


def test_a_set_as_dataset_writes_it_loads(tmp_path):
    from amnet.realdata import load_inputs

    np.savez(tmp_path / "heldout.npz", **small_heldout())
    assert load_inputs("heldout", 16, directory=tmp_path)["source"].shape == (2, 3, 16, 16)


MALFORMED_SETS = {
    "a key missing": lambda d: d.pop("pose"),
    "empty lists": lambda d: d.update({k: v[:0] for k, v in d.items() if k != "images"}),
    "audio of the wrong shape": lambda d: d.update(audio=d["audio"][:, :10]),
    "float images": lambda d: d.update(images=d["images"].astype(np.float32)),
    "float indices": lambda d: d.update(source_idx=d["source_idx"].astype(np.float32)),
    "an index past the images": lambda d: d.update(source_idx=np.array([0, 99])),
    "NaN in pose": lambda d: d["pose"].__setitem__((0, 0), np.nan),
    "fewer pose rows than samples": lambda d: d.update(pose=d["pose"][:1]),
}


@pytest.mark.parametrize("defect", MALFORMED_SETS)
def test_a_malformed_calibration_set_is_one_line_naming_it(tmp_path, capsys, monkeypatch, defect):
    d = small_heldout()
    MALFORMED_SETS[defect](d)
    np.savez(tmp_path / "heldout.npz", **d)
    monkeypatch.setenv("AMNET_CALIB_DIR", str(tmp_path))
    code, err = run_cli(capsys, "evaluate", "--resolution", "16")
    assert code == EXIT_USAGE, err
    one_line_error(err, str(tmp_path / "heldout.npz"))


# ---------------------------------------------------------------- 6. diagnose --inputs checked as parity checks them

def test_diagnose_words_a_wrong_audio_shape_as_parity_does(tmp_path, capsys, small_build, checkpoint_file):
    from benchmarks.parity import collect_variants
    from tests.conftest import random_inputs

    build, _ = small_build
    variant = next(v.name for v in collect_variants(build) if v.runtime == "onnxruntime" and v.batch == 1)
    feeds = random_inputs(2, 32)
    feeds["audio"] = feeds["audio"][:, :, :10]  # N×1×10×60
    bad = tmp_path / "bad.npz"
    np.savez(bad, **feeds)
    common = [checkpoint_file, "--build", build, "--inputs", bad, "--report", tmp_path / "report"]
    code, err = run_cli(capsys, "diagnose", *common, "--variant", variant)
    assert code == EXIT_USAGE
    one_line_error(err, "input 'audio'", "(2, 1, 10, 60)", "N×1×64×60")
    parity_code, parity_err = run_cli(capsys, "parity", *common, "--resolution", "32", "--no-faces")
    assert parity_code == EXIT_USAGE and parity_err.split("error: ")[1] == err.split("error: ")[1]
    assert not (tmp_path / "report").exists()


# ---------------------------------------------------------------- 7. an unwritable report folder, before any work

UNWRITABLE = Path("/sys/amnet-report")  # sysfs: no file can be created there, not even by root


@pytest.mark.parametrize("argv", [["parity", "--report"], ["bench", "--report"], ["choose", "--report"],
                                  ["diagnose", "--variant", "any", "--report"]])
def test_an_unwritable_report_folder_is_refused_before_any_work(tmp_path, capsys, argv):
    code, err = run_cli(capsys, *argv, UNWRITABLE / "r", "--build", tmp_path / "no-build")
    assert code == EXIT_USAGE
    one_line_error(err, str(UNWRITABLE / "r"), "not writable")  # not the missing build: that is work begun


def test_an_unwritable_pipeline_output_is_refused_before_any_export(capsys):
    code, err = run_cli(capsys, "pipeline", "--output", UNWRITABLE, "--resolutions", "32")
    assert code == EXIT_USAGE
    one_line_error(err, str(UNWRITABLE), "not writable")


def test_a_report_folder_that_does_not_exist_yet_is_fine_and_not_created_by_the_check(tmp_path):
    from amnet.cli.harness import report_dir

    assert report_dir(tmp_path / "a" / "b", "x.json") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder made


# ---------------------------------------------------------------- 8. a read-only HOME: no telemetry or cache warnings

def test_a_read_only_home_gives_no_library_warnings(tmp_path, small_build, checkpoint_file):
    build, inputs = small_build
    env = {"HOME": "/sys/amnet-home", "TMPDIR": str(tmp_path)}  # sysfs: nothing can be made there
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "ORT_DISABLE_TELEMETRY"):
        env[var] = ""  # as if unset
    r = subprocess_cli("parity", checkpoint_file, "--build", build, "--resolution", "32", "--inputs", inputs,
                       "--no-faces", "--quiet", "--report", tmp_path / "report", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # ONNX Runtime's telemetry device id, matplotlib's config folder: nothing said
    assert (tmp_path / "report" / "parity.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the process's config folder went with it


# ---------------------------------------------------------------- 9. bench under one ISA cap: the summary's FPS

def test_the_summary_reads_the_rows_of_the_isa_benched_not_absent_native_ones():
    from benchmarks.bench import REAL_TIME_FPS, markdown, paper_comparison

    cap = "AVX512_CORE_AMX_FP16"  # `bench --isa CAP` alone: every row is under the cap, none native
    fps = 43.0
    row = {"name": "openvino-int8-b1-r128", "runtime": "openvino", "isa": cap, "median_ms": 1000 / fps,
           "p90_ms": 24.0, "p99_ms": 25.0, "fps": fps, "peak_rss_mb": 300.0, "cold_start_s": 0.5}
    paper = paper_comparison([row], 100.0, 128, cap)
    assert paper["best_measured_fps"] == fps and paper["real_time"] == (fps >= REAL_TIME_FPS)
    text = markdown({"resolution": 128, "threads": 2, "gemm_peak_gflops": 100.0, "gflops_per_frame": 1.0,
                     "rows": [row], "notes": [], "paper": paper})
    assert f"under the {cap} cap: {fps} FPS — real time" in text and ": 0 FPS" not in text


# ---------------------------------------------------------------- 10. an output file in a folder that does not exist

def test_evaluate_grid_in_a_missing_folder_is_refused_not_created(tmp_path, capsys):
    grid = tmp_path / "nope" / "dir" / "g.png"
    code, err = run_cli(capsys, "evaluate", "--grid", grid, "--train", tmp_path / "no-train.npz")
    assert code == EXIT_USAGE
    one_line_error(err, "--grid", str(grid.parent), "does not exist")  # before anything else is looked at
    assert not (tmp_path / "nope").exists()


def test_diagnose_scope_out_in_a_missing_folder_is_refused(tmp_path, capsys):
    scope = tmp_path / "nope" / "scope.json"
    code, err = run_cli(capsys, "diagnose", "--build", tmp_path / "no-build", "--variant", "any", "--sensitivity",
                        "--scope-out", scope, "--report", tmp_path / "report")
    assert code == EXIT_USAGE
    one_line_error(err, "--scope-out", str(scope.parent), "does not exist")
    assert not (tmp_path / "nope").exists()


# ---------------------------------------------------------------- 11. a broken dlib model: no diagnose advice

def test_a_broken_dlib_model_is_named_and_diagnose_not_advised(tmp_path, capsys, monkeypatch, small_build,
                                                               checkpoint_file):
    build, inputs = small_build
    broken = tmp_path / "shape_predictor_68_face_landmarks.dat"
    broken.write_bytes(b"not a dlib model")
    monkeypatch.setenv("AMNET_DLIB_68", str(broken))
    code = main([str(a) for a in ("parity", checkpoint_file, "--build", build, "--resolution", "32",
                                  "--inputs", inputs, "--only", "b1", "--quiet", "--report", tmp_path / "report",
                                  "--threshold", "fp32.face.detection_rate_min=1")])  # a face check on this variant
    out = capsys.readouterr().out
    assert code == 1
    assert "amnet-deploy diagnose" not in out
    advice = [line for line in out.splitlines() if "face checks could not run" in line]
    assert len(advice) == 1 and str(broken) in advice[0] and "--no-faces" in advice[0]


@pytest.mark.parametrize("manifest", ["[]", '{"clips": {}}', '{"clips": [{"video": "a.mp4"}]}', "[" * 100_000])
def test_a_malformed_calibration_manifest_is_one_line_naming_it(tmp_path, manifest):
    from amnet.core.errors import InputError
    from amnet.realdata import clip_identities

    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(InputError, match=str(tmp_path / "manifest.json")):
        clip_identities(tmp_path)


def test_the_shipped_calibration_manifest_names_its_people():
    from amnet.realdata import clip_identities, default_dir, heldout_identity

    assert len(clip_identities(default_dir())) == len(np.unique(heldout_identity()))
    assert clip_identities(ROOT / "no-such-dir") == []
