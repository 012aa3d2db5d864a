"""benchmarks/arm64_check.py: the comparison against the product's limits on synthetic outputs, its one-line exit 2
on bad input and on a failed download (no network needed), and the emulated run where the cache is populated."""
import numpy as np
import pytest

from benchmarks import arm64_check
from amnet.core.limits import load_limits

FP32 = load_limits().for_variant("litert", "fp32")


def _outputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"face": rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32),
            "landmarks": rng.normal(0, 1, (2, 136)).astype(np.float32)}


def test_judge_passes_within_and_fails_past_the_fp32_limit():
    x86 = _outputs()
    limit = FP32["face.max_abs_max"]
    near = {k: v.copy() for k, v in x86.items()}
    near["face"][0, 0, 0, 0] += limit / 2
    assert arm64_check.judge(x86, near, FP32)["passed"]
    far = {k: v.copy() for k, v in x86.items()}
    far["face"][0, 0, 0, 0] += limit * 4
    verdict = arm64_check.judge(x86, far, FP32)
    failed = [c["key"] for c in verdict["checks"] if not c["passed"]]
    assert not verdict["passed"] and failed == ["face.max_abs_max"]


def test_no_model_is_one_line_exit_2(tmp_path, capsys):
    assert arm64_check.main(["--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tflite" in err[0]


def test_failed_download_is_one_line_exit_2(tmp_path, capsys):
    """A mirror that refuses connections: apt-get update fails, one line naming it, no report written."""
    with pytest.raises(arm64_check.RuntimeMissing, match="apt-get update from http://127.0.0.1:9"):
        arm64_check.ensure_sysroot(tmp_path / "cache", "http://127.0.0.1:9/debian")
    assert not (tmp_path / "cache" / "root").exists()


@pytest.mark.skipif(not arm64_check.ready(arm64_check.CACHE.expanduser(), "litert"),
                    reason="the arm64 cache is not populated (run benchmarks/arm64_check.py once, with network)")
def test_emulated_litert_matches_x86(checkpoint_file, tmp_path):
    """The small model's .tflite at 32² on aarch64 (qemu) gives x86's outputs within the FP32 limits."""
    pytest.importorskip("litert_torch", reason="the .tflite converter: pip install 'amnet-deploy[mobile-build]'")
    from export.pipeline import BuildOptions, build

    manifest = build(checkpoint_file, "litert", tmp_path / "b", BuildOptions(("fp32",), (1,), 32, progress=False))
    model = tmp_path / "b" / manifest["artifacts"][0]["file"]
    report = arm64_check.check({"litert": model}, 1, arm64_check.CACHE.expanduser(), "cortex-a76", 1, 600)
    row = report["rows"][0]
    assert row["arm64"]["machine"] == "aarch64" and row["arm64"]["xnnpack_partitions"] == 1
    assert {c["key"] for c in row["checks"]} == set(FP32) and report["passed"]
