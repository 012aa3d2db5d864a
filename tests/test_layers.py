"""One-way layers and the runtime registry: enforced, extensible from one place, torch-free where promised."""
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amnet.cli.main import main
from tests.conftest import ROOT, copy_build

LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(cwd)})


def test_import_contracts_hold_and_catch_an_upward_import(tmp_path):
    assert lint(ROOT).returncode == 0
    copy = tmp_path / "repo"
    for name in ("amnet", "export", "runtimes", "benchmarks"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    model = copy / "amnet" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _leak():\n    from benchmarks.parity import judge  # noqa\n")
    r = lint(copy)
    assert r.returncode == 1 and "amnet.model -> benchmarks.parity" in r.stdout, r.stdout[-2000:]


def test_runners_and_the_reference_less_gate_load_no_torch():
    code = ("import sys; import runtimes.openvino_runner, runtimes.onnxruntime_runner, runtimes.tensorrt_runner, "
            "runtimes.registry, benchmarks.parity, amnet.cli.main; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'onnx', 'nncf')))")
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.strip() == "[]"
    assert not any(line.rstrip().endswith((" torch", " torch._C")) for line in r.stderr.splitlines())


def test_parity_with_a_saved_reference_runs_where_torch_cannot_be_imported(tmp_path):
    """The edge-box gate: torch made unimportable; parity --reference passes, bench runs without an eager column."""
    golden = ROOT / "tests" / "data" / "golden"
    code = ("import sys; sys.modules['torch'] = None; from amnet.cli.main import main; "
            f"a = ['--build', {str(golden / 'models')!r}, '--resolution', '128', '--quiet', '--report', "
            f"{str(tmp_path)!r}]; "
            f"rc = main(['parity', *a, '--inputs', {str(golden / 'inputs.npz')!r}, '--reference', "
            f"{str(golden / 'reference.npz')!r}]); "
            "rb = main(['bench', *a, '--iters', '3']); print(rc, rb)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split()[-2:] == ["0", "0"], r.stderr[-800:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [row["runtime"] for row in bench["rows"]] == ["openvino"]
    assert any("no PyTorch eager column" in n for n in bench["notes"])
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; "
                        "from amnet.cli.main import main; sys.exit(main(['info']))"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 2 and "torch" in r.stderr and "Traceback" not in r.stderr


def test_every_buildable_variant_has_limits(limits):
    from runtimes import registry

    for name, backend in registry.backends().items():
        for precision in backend.precisions:
            assert limits.has(name, str(precision)), (name, precision)


def test_a_build_without_limits_is_refused(small_build, tmp_path, monkeypatch):
    import amnet.core.limits as lim
    from amnet.core.errors import InputError
    from export.pipeline import BuildOptions, build

    data = json.loads(lim.THRESHOLDS_FILE.read_text())
    data.pop("fp16")
    data.pop("openvino-fp16")
    (tmp_path / "t.json").write_text(json.dumps(data))
    monkeypatch.setattr(lim, "THRESHOLDS_FILE", tmp_path / "t.json")
    d, _ = small_build
    with pytest.raises(InputError, match="no parity limits for openvino-fp16"):
        build(d, "openvino", tmp_path / "out", BuildOptions(("fp16",), (1,), 32))
    assert not (tmp_path / "out").exists()


def test_runners_share_one_lifecycle_and_keywords(tmp_path):
    from amnet.core.errors import AmnetError
    from runtimes import registry

    for backend in registry.backends().values():
        cls = backend.load_runner()
        params = inspect.signature(cls).parameters
        assert list(params)[0] == "path", backend.name
        assert {"threads", "precision"} <= {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}, backend.name
        assert set(backend.options) <= set(params), backend.name
    runner = registry.backends()["onnxruntime"].load_runner()(tmp_path / "absent.onnx", threads=1)  # cheap: no I/O
    with pytest.raises(AmnetError, match="before activate"):
        runner.infer({})


def test_the_reference_runner_leaves_a_shared_model_as_it_was(small_model):
    from tests.conftest import random_inputs
    from runtimes.pytorch_runner import TorchRunner

    assert small_model.reenactor.gcs[0].form == "loop"
    with TorchRunner(small_model, gc_form="elementwise") as r:
        r.infer(random_inputs(2, 32))
    assert all(gc.form == "loop" for gc in small_model.reenactor.gcs)


@pytest.fixture
def identity_backend(monkeypatch):
    from runtimes import registry

    monkeypatch.setenv("AMNET_BACKENDS", "tests.toy_backend")
    yield
    registry.unregister("identity")
    registry._PLUGINS_LOADED.discard("tests.toy_backend")


def test_a_backend_registered_from_a_test_appears_everywhere(identity_backend, small_build, checkpoint_file, tmp_path,
                                                            capsys):
    d, inputs = small_build
    build = copy_build(d, tmp_path / "b")
    common = ["--build", str(build), "--resolution", "32", "--quiet", "--only", "b1"]
    gate, timed = ["--inputs", str(inputs), "--no-faces"], ["--iters", "3"]
    assert main(["build", str(build), "--runtime", "identity", "--output", str(build), "--resolution", "32",
                 "--batch", "1", "--quiet"]) == 0
    made = build / "amnet_full_b1_r32_copy.identity"
    assert main(["infer", str(made), "--inputs", str(inputs), "--output", str(tmp_path / "o.npz")]) == 0
    assert "identity (fp32)" in capsys.readouterr().out
    assert main(["parity", str(checkpoint_file), *common, *gate, "--report", str(tmp_path / "p")]) == 0
    rows = {v["variant"]: v for v in json.loads((tmp_path / "p" / "parity.json").read_text())["variants"]}
    assert rows["identity-fp32-b1-r32"]["passed"]
    assert main(["bench", str(checkpoint_file), *common, *timed, "--report", str(tmp_path / "bn")]) == 0
    bench = {r["name"]: r for r in json.loads((tmp_path / "bn" / "bench.json").read_text())["rows"]}
    assert bench["identity-fp32-b1-r32"]["fps"] > 0  # measured in its own child process
    assert main(["choose", str(checkpoint_file), *common, *gate, *timed, "--report", str(tmp_path / "c"),
                 "--json"]) == 0
    ranked = json.loads((tmp_path / "c" / "choose_32.json").read_text())["ranked"]
    assert "identity-fp32-b1-r32" in {r["variant"] for r in ranked}
