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

    data = save_npz(tmp_path / "train.npz", tiny_data())
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
