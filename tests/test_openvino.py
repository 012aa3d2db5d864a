"""OpenVINO IR variants: build, read-back precision, runner modes, parity on held-out real inputs."""
import json
import os

import numpy as np
import pytest

from amnet.core.errors import ArtifactError, InputError
from amnet.core.metrics import compare

# What every test here expects depends on the CPU's ISA (bf16 float parts, INT8 kernels): `make test` runs this
# file as the CPU is and again under ONEDNN_MAX_CPU_ISA=AVX2 where the CPU has more, so one machine checks both.
pytestmark = pytest.mark.isa


@pytest.fixture(scope="module")
def heldout_ref(trained):
    from amnet.realdata import load_inputs
    from runtimes.pytorch_runner import reference_outputs

    feeds = load_inputs("heldout", 128, 8)
    return feeds, reference_outputs(trained, feeds)


def run(path, feeds, precision, **kw):
    from runtimes.openvino_runner import OpenVinoRunner

    with OpenVinoRunner(path, threads=2, precision=precision, **kw) as r:
        outs = [r.infer({k: feeds[k][i:i + 1] for k in ("source", "audio", "pose", "eye")}) for i in range(len(feeds["source"]))]
        compute = r.compute_precision
        ops = r.executed_precisions()
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, compute, ops


def cpu_flags() -> set[str]:
    from pathlib import Path

    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def ir_constant_types(xml) -> set[str]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return {op.get_output_element_type(0).get_type_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() == 4}


def expected_float_compute() -> str:
    """What the float parts of FP16/INT8 variants compute in on this CPU, computed here from /proc/cpuinfo and
    ONEDNN_MAX_CPU_ISA, not read from the product (amnet.core.cpu): bf16 where the CPU multiplies bf16 natively
    (AVX512-BF16 or AMX) and no cap below AVX512_CORE_BF16 hides it, else f32."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    hides_bf16 = cap not in ("", "ALL", "DEFAULT") and not any(k in cap for k in ("BF16", "FP16", "AMX", "AVX10"))
    return "bf16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() and not hides_bf16 else "f32"


def test_manifest_records_the_precision_that_ran(ov_build):
    from runtimes.openvino_runner import OpenVinoRunner

    d, arts = ov_build
    # The policy (amnet.core.cpu): FP32 computes f32; the float parts of FP16/INT8 compute bf16 where the CPU
    # has native bf16, else f32 (test_cpu_isa_cap covers the policy under every ONEDNN_MAX_CPU_ISA).
    floats = expected_float_compute()
    assert arts["fp32"]["actual_precision"]["compute"] == "f32"
    assert arts["fp16"]["actual_precision"]["compute"] == floats
    assert arts["int8"]["actual_precision"]["compute"] == floats
    assert "f16" in ir_constant_types(d / arts["fp16"]["file"])  # conv weights stored as f16
    assert "f16" not in ir_constant_types(d / arts["fp32"]["file"])
    int8_ops = arts["int8"]["actual_precision"]["ops"]["Convolution"]
    assert int8_ops.get("i8", 0) + int8_ops.get("u8", 0) > 0  # really quantized
    # The GC path stays out of INT8 and computes in the float parts' precision: f32 on AVX2, bf16 on AMX
    # (seen there: {'bf16': 29, 'u8': 14} for the whole IR). Nine GCs, each one grouped conv.
    for p in ("fp16", "int8"):
        gc_path = arts[p]["actual_precision"]["gc_path"]
        assert gc_path["Convolution"] == {floats: 9}, (p, gc_path)
        # The fused heads (one GEMM, two batched matmuls): never INT8 (the FP16 IR's store f16 weights, which
        # its FullyConnected kernels report as f16).
        heads = gc_path["FullyConnected"]
        assert sum(heads.values()) == 3 and set(heads) <= {"f32", floats, *(("f16",) if p == "fp16" else ())}, heads
    # ...as the execution graph shows it, counted here by the original layer names each fused node keeps.
    import re
    from collections import Counter

    from export.int8_scope import GC_PATH

    with OpenVinoRunner(d / arts["int8"]["file"], threads=2, precision="int8") as r:
        gc = Counter(rt["runtimePrecision"].astype(str) for rt in (op.get_rt_info() for op in
                     r.compiled.get_runtime_model().get_ordered_ops())
                     if rt["layerType"].astype(str) == "Convolution"
                     and re.search(GC_PATH, rt["originalLayersNames"].astype(str)))
    assert gc == {floats: 9}, gc


def test_cpu_isa_cap(monkeypatch):
    """ONEDNN_MAX_CPU_ISA caps what the policy sees, as oneDNN caps what it runs; a bad value is one clear error."""
    from amnet.core import cpu
    from amnet.core.errors import InputError

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Zen 4", {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu.isa_name() == "AVX512-BF16" and cpu.float_precision("int8") == "bf16"
    assert cpu.float_precision("fp32") == "f32" and cpu.float_precision("int8", "f32") == "f32"
    for cap, name, floats in (("AVX2", "AVX2", "f32"), ("avx512_core", "AVX-512", "f32"),
                              ("AVX512_CORE_VNNI", "AVX512-VNNI", "f32"), ("AVX512_CORE_BF16", "AVX512-BF16", "bf16")):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert (cpu.isa_name(), cpu.float_precision("int8")) == (name, floats), cap
    # A Xeon with AMX and AVX512-FP16: FP16 variants compute bf16 too (f16 ran at half the FP32 IR's speed there).
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Xeon", {"avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                                          "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}))
    assert cpu.isa_name() == "AMX" and cpu.float_precision("fp16") == cpu.float_precision("int8") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_FP16")
    assert cpu.float_precision("fp16") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.float_precision("fp16") == "f32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "DEFAULT")  # oneDNN's word for no cap
    assert cpu.isa()["cap"] is None and cpu.isa_name() == "AMX"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI")  # AVX-VNNI (Alder Lake) is not AVX512-VNNI
    assert cpu.isa_name() == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX1024")
    with pytest.raises(InputError, match="ONEDNN_MAX_CPU_ISA"):
        cpu.isa()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    with pytest.raises(InputError, match="float precision"):
        cpu.float_precision("int8", "f8")


def test_fp32_ir_parity(ov_build, heldout_ref, limits):
    d, arts = ov_build
    feeds, ref = heldout_ref
    out, compute, _ = run(d / arts["fp32"]["file"], feeds, "fp32")
    assert compute == "f32"
    bars = limits.for_variant("openvino", "fp32")
    for k in ("face", "landmarks"):
        assert np.abs(out[k] - ref[k]).max() <= bars[f"{k}.max_abs_max"], k


def test_fp16_weights_fidelity(ov_build, heldout_ref, limits):
    d, arts = ov_build
    feeds, ref = heldout_ref
    out, _, _ = run(d / arts["fp16"]["file"], feeds, "fp16", compute="f32")  # FP16 weights, f32 compute
    assert compare(ref["face"], out["face"], True)["psnr"] >= limits.for_variant("openvino", "fp16")["face.psnr_min"]


def test_int8_fidelity(ov_build, heldout_ref, limits):
    d, arts = ov_build
    feeds, ref = heldout_ref
    out, _, _ = run(d / arts["int8"]["file"], feeds, "int8")
    m = compare(ref["face"], out["face"], True)
    bars = limits.for_variant("openvino", "int8")  # the gate's own INT8 bars, on 8 held-out samples at 128²
    assert m["psnr"] >= bars["face.psnr_min"] and m["ssim"] >= bars["face.ssim_min"], m


def test_int8_keeps_gc_readers_add_and_instancenorm_float(ov_build):
    """No FakeQuantize in front of a GC conv, a conv reading a GC output, a residual Add or an MVN."""
    import openvino as ov

    from export.int8_scope import FLOAT_NODES

    d, arts = ov_build
    model = ov.Core().read_model(str(d / arts["int8"]["file"]))
    quantized = {t.get_node().get_friendly_name(): t.get_node().get_type_name()
                 for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                 for t in op.output(0).get_target_inputs()}
    assert not {n for n, kind in quantized.items() if kind in ("Add", "MVN") or FLOAT_NODES.search(n)}
    assert any("/gc_heads/" in op.get_friendly_name() for op in model.get_ordered_ops())  # the fused GC MLPs are there
    # ...while the heavy second conv of every residual cell is INT8.
    assert all(any(f"/cells.{i}/body/body.3/" in n for n in quantized) for i in range(1, 5))


def test_throughput_mode_matches_latency_mode(ov_build, heldout_ref):
    from runtimes.openvino_runner import OpenVinoRunner

    d, arts = ov_build
    feeds, _ = heldout_ref
    items = [{k: feeds[k][i:i + 1] for k in ("source", "audio", "pose", "eye")} for i in range(4)]
    with OpenVinoRunner(d / arts["fp32"]["file"], threads=2, mode="throughput", precision="fp32") as tp, \
            OpenVinoRunner(d / arts["fp32"]["file"], threads=2, precision="fp32", cache_dir=d / "cache") as lat:
        many = tp.infer_many(items)
        for item, got in zip(items, many):
            np.testing.assert_allclose(got["face"], lat.infer(item)["face"], atol=1e-5)
    assert any((d / "cache").iterdir())  # the compiled-model cache was written


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_hold_source_runs_the_encoder_once_per_face_and_changes_nothing(ov_build, heldout_ref, limits, mode,
                                                                        monkeypatch):
    from runtimes.openvino_runner import OpenVinoRunner

    d, arts = ov_build
    feeds, _ = heldout_ref
    one = {k: feeds[k][:1] for k in ("source", "audio", "pose", "eye")}
    items = [one, {**one, "audio": feeds["audio"][1:2]}, {**one, "source": feeds["source"][2:3]}, one]
    path = d / arts["int8"]["file"]
    run_all = lambda r: r.infer_many(items) if mode == "throughput" else [r.infer(i) for i in items]  # noqa: E731
    with OpenVinoRunner(path, threads=2, mode=mode) as plain, \
            OpenVinoRunner(path, threads=2, mode=mode, hold_source=True) as held:
        assert [s.name for s in held.inputs] == [s.name for s in plain.inputs]  # the same contract outside
        source_runs = []
        infer = held.source_request.infer
        monkeypatch.setattr(held.source_request, "infer", lambda f: source_runs.append(1) or infer(f), raising=False)
        want, got = run_all(plain), run_all(held)
        assert held.holds_source and not plain.holds_source
        floats = held.compute_precision
    assert floats == expected_float_compute()
    assert len(source_runs) == 3  # face A, face B, face A again: once per change of face
    if floats == "f32":  # the same kernels on the same numbers: bit for bit
        for w, g in zip(want, got):
            for out in ("face", "landmarks"):
                np.testing.assert_array_equal(g[out], w[out])
        return
    # bf16 float parts round the cut tensor where the whole graph would have fused it (seen on AMX: 191 of 49,152
    # elements, up to 0.047). The bound is measured here, not guessed: holding the source may move the output
    # less than bf16 itself moves it from the f32 computation of the same IR, and stays within the gate's own
    # INT8 PSNR floor (thresholds.json) of the plain output.
    with OpenVinoRunner(path, threads=2, mode=mode, compute="f32") as exact:
        f32 = run_all(exact)
    mse = lambda a, b: float(np.mean((np.asarray(a, np.float64) - b) ** 2))  # noqa: E731
    for out in ("face", "landmarks"):
        moved = mse(np.concatenate([g[out] for g in got]), np.concatenate([w[out] for w in want]))
        rounding = mse(np.concatenate([w[out] for w in want]), np.concatenate([f[out] for f in f32]))
        assert moved <= rounding, (out, moved, rounding)
    floor = limits.for_variant("openvino", "int8")["face.psnr_min"]
    for w, g in zip(want, got):
        assert compare(w["face"], g["face"], True)["psnr"] >= floor


def test_bad_ir_and_bad_mode(ov_build, tmp_path):
    from runtimes.openvino_runner import OpenVinoRunner

    d, arts = ov_build
    xml = tmp_path / "broken.xml"
    xml.write_text("<net><layers>")
    xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ArtifactError, match="not a readable OpenVINO IR"):
        OpenVinoRunner(xml).activate()
    with pytest.raises(ArtifactError, match="needs both"):
        OpenVinoRunner(tmp_path / "absent.xml").activate()
    with pytest.raises(InputError, match="mode"):
        OpenVinoRunner(d / arts["fp32"]["file"], mode="fast")


def test_accuracy_controlled_int8_meets_its_psnr_floor(trained, tmp_path):
    """quantize_with_accuracy_control reverts layers until the face PSNR (capped at 50 dB) drops ≤ max_drop."""
    from amnet.realdata import load_inputs
    from export.onnx_export import export_file
    from export.openvino_build import PSNR_CAP
    from export.pipeline import BuildOptions, build
    from runtimes.pytorch_runner import reference_outputs

    onnx_file = export_file(trained, tmp_path, "full", 1, 64, "x")
    m = build(onnx_file, "openvino", tmp_path, BuildOptions(("int8",), (1,), 64, calib_samples=16,
                                                           accuracy_control=True, max_drop=10.0, progress=False))
    xml = next(a for a in m["artifacts"] if a["precision"] == "int8")
    feeds = load_inputs("heldout", 64, 8)
    ref = reference_outputs(trained, feeds)
    out, _, _ = run(tmp_path / xml["file"], feeds, "int8")
    # The floor holds on calibration inputs by construction; on held-out inputs allow a 3 dB margin.
    assert compare(ref["face"], out["face"], True)["psnr"] >= PSNR_CAP - 10.0 - 3.0


def test_layer_profile_shows_what_ran_int8(ov_build):
    """benchmarks.profile_layers: GC readers run f32 kernels, some other convs run INT8 kernels."""
    from benchmarks.profile_layers import main, profile

    d, arts = ov_build
    totals, wall_ms, work, how = profile(d / arts["int8"]["file"], threads=2, runs=3)
    # Compiled as the product runs it (was f32 always: on a bf16 CPU it profiled a model the product never runs).
    assert how["compute"] == expected_float_compute() and how["mode"] == "latency" and how["precision"] == "int8"
    kernels = {}
    for (name, kernel), ms in totals.items():
        kernels.setdefault(name, set()).add(kernel)
    # One request runs its layers one after another: their times add up to most of the wall time (loose bounds:
    # a loaded 2-core machine stretches both; a unit slip, s for ms, would be off by 1000×).
    assert 0.2 * wall_ms < sum(totals.values()) < 2.0 * wall_ms
    assert {"GC conv", "conv reading a GC output", "other conv", "MVN"} <= set(kernels)
    assert not any("I8" in k for k in kernels["conv reading a GC output"])
    assert any("I8" in k for k in kernels["other conv"])
    out = d.parent / f"{d.name}_profile.json"
    assert main([str(d / arts["int8"]["name"]), "--runs", "1", "--json", str(out)]) == 0  # the logical name resolves
    saved = json.loads(out.read_text())
    assert saved["compute"] == how["compute"] and saved["rows"] and saved["layers_ms"] > 0
    assert sum(r["share"] for r in saved["rows"]) == pytest.approx(1.0, abs=1e-3)
    assert main([str(d / arts["int8"]["file"]), "--runs", "1", "--float-precision", "f32"]) == 0
    # GOP from the IR's shapes: the last conv (24 → 3, 7×7) at R², and every conv counted once in the rows.
    import openvino as ov

    from benchmarks.profile_layers import conv_gop

    model = ov.Core().read_model(str(d / arts["int8"]["file"]))
    r = model.inputs[0].get_partial_shape()[-1].get_length()
    gop = conv_gop(model)
    assert gop["/reenactor/decoder/decoder.6/Conv"] == pytest.approx(2 * r * r * 3 * 24 * 7 * 7 / 1e9)
    assert sum(work.values()) == pytest.approx(sum(gop.values()), rel=1e-6)


def test_conv_gop_counts_each_conv_kind_per_frame():
    """2 × multiply-adds per frame for the three conv kinds, from shapes alone, at batch 2 (halved per frame)."""
    import openvino as ov
    import openvino.opset13 as ops

    from benchmarks.profile_layers import conv_gop

    x = ops.parameter([2, 8, 16, 16], np.float32)  # batch 2, 8 channels, 16²
    ones = lambda *shape: ops.constant(np.ones(shape, np.float32))  # noqa: E731
    conv = ops.convolution(x, ones(4, 8, 3, 3), [1, 1], [1, 1], [1, 1], [1, 1])  # 4 outputs, each 8 × 3 × 3
    group = ops.group_convolution(x, ones(2, 2, 4, 3, 3), [1, 1], [1, 1], [1, 1], [1, 1])  # 4 outputs, each 4 × 3 × 3
    deconv = ops.convolution_backprop_data(x, ones(8, 4, 3, 3), strides=[2, 2], pads_begin=[1, 1], pads_end=[1, 1],
                                           dilations=[1, 1], output_padding=[1, 1])  # each input over 4 × 3 × 3
    for name, op in (("conv", conv), ("group", group), ("deconv", deconv)):
        op.set_friendly_name(name)
    assert deconv.get_output_partial_shape(0).to_shape() == [2, 4, 32, 32]
    gop = conv_gop(ov.Model([conv, group, deconv], [x]))
    assert gop == pytest.approx({"conv": 2 * 16 * 16 * 4 * 8 * 9 / 1e9, "group": 2 * 16 * 16 * 4 * 4 * 9 / 1e9,
                                 "deconv": 2 * 16 * 16 * 8 * 4 * 9 / 1e9})


def test_the_gate_checks_throughput_mode_too(ov_build, heldout_ref, limits, monkeypatch):
    """INT8 kernels round by thread layout, so throughput mode (which `choose` may recommend) is gated too."""
    from benchmarks import parity

    d, arts = ov_build
    feeds, ref = heldout_ref
    feeds = {k: feeds[k] for k in ("source", "audio", "pose", "eye")}
    int8 = [v for v in parity.collect_variants(d, 128) if v.runtime == "openvino" and v.precision == "int8"]
    [row] = parity.evaluate(int8, feeds, ref, limits, threads=2, faces=False, progress=False)
    assert set(row["modes"]) == {"latency", "throughput"} and row["passed"], row["failures"]
    assert row["modes"]["throughput"]["psnr"] >= limits.for_variant("openvino", "int8")["face.psnr_min"]

    real = parity.run_throughput  # now throughput mode alone drifts: the variant must fail, naming the mode

    def drifting(runner, f, batch):
        out = real(runner, f, batch)
        return {**out, "face": out["face"] + np.float32(0.1)}

    monkeypatch.setattr(parity, "run_throughput", drifting)
    [row] = parity.evaluate(int8, feeds, ref, limits, threads=2, faces=False, progress=False)
    assert not row["passed"] and row["modes"]["latency"]["passed"] and not row["modes"]["throughput"]["passed"]
    assert row["failures"] and all(f.startswith("throughput mode: ") for f in row["failures"])
