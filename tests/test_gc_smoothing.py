"""GC smoothing (export/gc_smoothing.py): the same function, evener ranges; scopes measured on it stay with it."""
import copy

import numpy as np
import pytest


@pytest.fixture(scope="module")
def calib64():
    from amnet.realdata import load_inputs

    return load_inputs("calib", 64, 16)


def test_smoothing_keeps_the_function_and_evens_the_ranges(trained, calib64):
    from amnet.realdata import load_inputs
    from benchmarks.gc_ranges import spread
    from export.gc_smoothing import channel_absmax, smooth
    from runtimes.pytorch_runner import reference_outputs

    held = load_inputs("heldout", 64, 8)
    held.pop("target")
    model = copy.deepcopy(trained)
    before = channel_absmax(model, calib64)
    factors = smooth(model, calib64, alpha=0.5)
    assert sorted(factors) == list(range(9))  # every GC, residual cells included (skip_scale undoes the factor)
    for k in range(1, 6):
        cell = model.reenactor.cells[k]
        np.testing.assert_allclose(cell.skip_scale.reshape(-1).numpy(), factors[k - 1], rtol=1e-6)
    ref, got = reference_outputs(trained, held)["face"], reference_outputs(model, held)["face"]
    assert np.abs(ref - got).max() < 1e-4  # an exact fold, up to float rounding
    after = channel_absmax(model, calib64)
    for k, (a, b) in enumerate(zip(before, after)):
        assert spread(b) < spread(a), k  # what a per-tensor scale must hold shrinks at every GC
    assert trained.reenactor.cells[1].skip_scale is None  # the original is untouched


def test_smoothing_refuses_a_bad_alpha(trained, calib64):
    from amnet.core.errors import InputError
    from export.gc_smoothing import smooth

    with pytest.raises(InputError, match="α"):
        smooth(copy.deepcopy(trained), calib64, alpha=0.0)


def test_a_scope_measured_on_a_smoothed_export_needs_one(trained, tmp_path, calib64):
    """Export records its smoothing; a build with a scope that needs another refuses in one line."""
    from amnet.checkpoint import save_checkpoint
    from amnet.core.errors import InputError
    from export.int8_scope import write_scope
    from export.onnx_export import read_metadata
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint

    ckpt = save_checkpoint(tmp_path / "m.safetensors", trained)
    plain, smoothed = tmp_path / "plain", tmp_path / "smoothed"
    export_checkpoint(ckpt, plain, ExportOptions((1,), 64, check_parity=False, progress=False))
    m = export_checkpoint(ckpt, smoothed, ExportOptions((1,), 64, check_parity=True, progress=False, smooth_gc=0.5))
    entry = next(a for a in m["artifacts"] if a["part"] == "full")
    assert entry["gc_smoothing"] == 0.5 and entry["parity"]["passed"]  # ONNX of the smoothed model = PyTorch
    assert entry["name"] == "amnet_full_b1_r64_gcs.onnx"  # beside the plain export, never over it
    assert read_metadata(smoothed / entry["file"])["gc_smoothing"] == "0.5"
    scope = write_scope(tmp_path / "scope.json", ["/reenactor/decoder/decoder.6/"], {"smooth_gc": 0.5})
    with pytest.raises(InputError, match="smooth-gc 0.5"):
        build(plain, "openvino", plain, BuildOptions(("int8",), (1,), 64, 8, progress=False, int8_scope=scope))
    manifest = build(smoothed, "openvino", smoothed, BuildOptions(("int8",), (1,), 64, 8, progress=False,
                                                                  int8_scope=scope))
    int8 = next(a for a in manifest["artifacts"] if a["precision"] == "int8" and a["runtime"] == "openvino")
    assert int8["gc_smoothing"] == 0.5 and int8["name"] == "amnet_full_b1_r64_gcs_ov_int8.xml"
    from benchmarks.parity import collect_variants

    assert "openvino-int8-gcs-b1-r64" in {v.name for v in collect_variants(smoothed, 64)}
    ops = int8["actual_precision"]["ops"]["Convolution"]
    assert ops.get("u8", 0) + ops.get("i8", 0) > 13  # more convs in INT8 than the default scope's 13 at this size
