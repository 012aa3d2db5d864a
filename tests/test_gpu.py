"""The GPU half, checked here on the CPU: what a GPU run consumes and reports, and one-line refusals without CUDA.

The runs themselves are `benchmarks/gpu_check.sh` on a GPU machine (its table is in the closing notes).
"""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from amnet.cli.main import main
from amnet.core.errors import ArtifactError, RuntimeMissing

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:
    HAS_CUDA = False


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present: the refusal is not reachable")
def test_pytorch_cuda_without_cuda_is_one_line(checkpoint_file, tmp_path, capsys):
    from runtimes.registry import open_runner

    assert main(["build", str(checkpoint_file), "--runtime", "pytorch-cuda", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pytorch-cuda cannot run here (a CPU-only torch build" in err and err.count("\n") == 1
    plan = tmp_path / "p.cudaplan"
    plan.write_text("{}")
    with pytest.raises(RuntimeMissing, match="pytorch-cuda cannot run here"):
        open_runner(plan).activate()


def test_pytorch_cuda_builds_from_a_checkpoint_only(small_build, tmp_path, capsys, monkeypatch):
    import runtimes.pytorch_cuda_runner as cuda

    monkeypatch.setattr(cuda, "missing_cuda", lambda: None)  # pretend: the check under test is the input kind
    d, _ = small_build
    assert main(["build", str(d), "--runtime", "pytorch-cuda", "--output", str(tmp_path)]) == 2
    assert "builds from a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("plan,message", [
    ("not json", "not a readable CUDA plan"), ('{"format": "x"}', "not an amnet-cuda-plan/1"),
    ('{"format": "amnet-cuda-plan/1", "precision": "fp8", "batch": 1, "resolution": 64, "weights": "w"}', "malformed"),
    ('{"format": "amnet-cuda-plan/1", "precision": "fp16", "batch": 0, "resolution": 64, "weights": "w"}', "batch"),
    ('{"format": "amnet-cuda-plan/1", "precision": "fp16", "batch": 1, "resolution": 64, "weights": "w", '
     '"compile": "tensorrt"}', "compile must be one of inductor, eager"),
    ('{"format": "amnet-cuda-plan/1", "precision": "fp16", "batch": 1, "resolution": 64, "weights": "w", '
     '"gc_heads": 3}', "gc_heads must be one of"),
])
def test_cuda_plans_are_validated(tmp_path, plan, message):
    from runtimes.pytorch_cuda_runner import read_plan

    (tmp_path / "a.cudaplan").write_text(plan)
    with pytest.raises(ArtifactError, match=message):
        read_plan(tmp_path / "a.cudaplan")


def test_gpu_report_tables_and_bars():
    """The report code of gpu_check, on a report shaped like a real run (figures invented for the layout)."""
    from benchmarks.gpu_check import bars, card_peaks, markdown

    def row(precision, batch, fps, psnr, max_abs):
        m = {"face": {"max_abs": max_abs, "psnr": psnr}, "landmarks": {"max_abs": max_abs}}
        return {"variant": f"pytorch-cuda-{precision}-b{batch}-r128", "runtime": "pytorch-cuda",
                "precision": precision, "batch": batch, "median_ms": batch * 1e3 / fps, "p99_ms": 1.0, "fps": fps,
                "x_plain_fp16_replay": 1.1, "gpu_memory_mb": 300, "pct_fp16_peak": 1.0, "pct_bandwidth": 2.0,
                "vs_gpu": m, "vs_cpu": m, "passed": True, "failures": [], "compile": "inductor", "load_s": 21.0}

    broken = {"variant": "pytorch-cuda-fp32-b64-r128", "runtime": "pytorch-cuda", "precision": "fp32", "batch": 64,
              "compile": "eager", "error": "OutOfMemoryError: CUDA out of memory", "passed": False,
              "failures": ["could not run: OutOfMemoryError"]}
    rows = [row("fp16", 1, 1100, 60, 1e-3), row("fp16", 64, 5000, 59, 1e-3), row("fp32", 1, 400, 120, 5e-5), broken]
    report = {"gpu": "NVIDIA H200", "peaks": {"fp16_tflops": 989, "bandwidth_gbs": 4800}, "torch": "2.11",
              "cuda": "13.0", "cudnn": 91900, "checkpoint": "amnet.safetensors", "samples": 24, "minutes": 3,
              "tensorrt": "not importable", "resolutions": {"128": {
                  "rows": rows, "plain_fp16_replay": {"1": {"fps": 1000, "replay_only": {"fps": 1200}},
                                                      "64": {"fps": 5000, "replay_only": {"fps": 9000}}},
                  "gpu_reference_vs_cpu_reference": {"face": {"max_abs": 2e-6, "psnr": 130.0}},
                  "gflops_per_frame": 5.2}}}
    report["bars"] = bars(report)
    assert report["bars"]["fp16 128² b1 ≥ 1000 FPS"] == {"value": 1100, "met": True}
    assert report["bars"]["fp16 128² b64 ≥ 6000 FPS"]["met"] is False
    assert report["bars"]["fp32 128² b1 max abs ≤ 1e-4 vs CPU"]["met"] is True
    text = markdown(report)
    assert report["bars"]["fp32 128² b64 runs"]["met"] is False  # a variant that could not run fails a bar
    report["resolutions"]["256"] = {"rows": []}  # a size whose rows never came: its bars fail, not vanish
    assert not any(v["met"] for k, v in bars(report).items() if "256²" in k) and "fp16 256² b1 ≥ 650 FPS" in bars(report)
    del report["resolutions"]["256"]
    assert "| pytorch-cuda-fp32-b64-r128 | eager |" in text and "FAIL: OutOfMemoryError" in text
    assert "| pytorch-cuda-fp16-b1-r128 | inductor (21.0) | 0.91 |" in text and "b64: 5000 FPS (9000 replay only)" in text and "| fp16 128² b64 ≥ 6000 FPS | 5e+03 | NO |" in text
    assert card_peaks("NVIDIA H100 80GB HBM3") == (989.0, 3350.0) and card_peaks("NVIDIA GeForce RTX 2080 Ti")


def test_gpu_check_reports_a_variant_that_cannot_run(monkeypatch, tmp_path):
    """A plan that fails to open (here: no CUDA) is a failed row with its reason; the check goes on."""
    import benchmarks.gpu_check as gc
    import benchmarks.parity as parity
    from amnet.core.limits import load_limits
    from benchmarks.parity import Variant

    variants = [Variant(f"pytorch-cuda-{p}-b1-r128", "pytorch-cuda", p, tmp_path / f"{p}.cudaplan", 1, 128, {})
                for p in ("fp16", "fp32")]
    monkeypatch.setattr(parity, "collect_variants", lambda build, r: variants)
    monkeypatch.setattr(gc, "_reset_peak_memory", lambda: None)
    for v in variants:
        v.path.write_text("{}")
    rows = gc.check_variants(tmp_path, 128, {}, {}, load_limits(), None, None, "pytorch-cuda")
    assert [r["passed"] for r in rows] == [False, False]
    assert all(r["failures"][0].startswith("could not run: ") and r["error"] for r in rows)


# ---------------------------------------------------------------- TensorRT runner behind a fake CUDA seam

class FakeCudart:
    """Counts allocations; fails the n-th cudaMalloc when asked to."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeGlobal = 0

    def __init__(self, fail_malloc_at=None):
        self.live, self.n_malloc, self.fail_at = {}, 0, fail_malloc_at
        self.host = []

    def _new(self, kind):
        handle = len(self.live) + 1000 + sum(1 for _ in self.host)
        self.live[handle] = kind
        return handle

    def cudaMallocHost(self, nbytes):
        buf = (np.zeros(nbytes, np.uint8))
        self.host.append(buf)
        handle = buf.ctypes.data
        self.live[handle] = "host"
        return 0, handle

    def cudaMalloc(self, nbytes):
        self.n_malloc += 1
        if self.n_malloc == self.fail_at:
            return 2, None  # cudaErrorMemoryAllocation
        return 0, self._new("device")

    def cudaFree(self, h):
        self.live.pop(h)
        return (0,)

    def cudaFreeHost(self, h):
        self.live.pop(h)
        return (0,)

    def cudaStreamCreate(self):
        return 0, self._new("stream")

    def cudaStreamDestroy(self, h):
        self.live.pop(h)
        return (0,)

    def cudaMemcpyAsync(self, *a):
        return (0,)

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaStreamBeginCapture(self, s, mode):
        return (0,)

    def cudaStreamEndCapture(self, s):
        return 0, self._new("graph")

    def cudaGraphInstantiate(self, g, flags):
        return 0, self._new("graph_exec")

    def cudaGraphDestroy(self, h):
        self.live.pop(h)
        return (0,)

    def cudaGraphExecDestroy(self, h):
        self.live.pop(h)
        return (0,)

    def cudaGraphLaunch(self, g, s):
        return (0,)

    def cudaGetDeviceProperties(self, i):
        return 0, SimpleNamespace(name=b"Fake GPU")


def fake_trt():
    class Engine:
        num_io_tensors = 3
        names = ["source", "face", "landmarks"]

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_shape(self, n):
            return (1, 3, 8, 8) if n != "landmarks" else (1, 136)

        def get_tensor_dtype(self, n):
            return "float32"

        def get_tensor_mode(self, n):
            return "in" if n == "source" else "out"

        def create_execution_context(self):
            return SimpleNamespace(set_tensor_address=lambda n, p: None, execute_async_v3=lambda s: True)

    return SimpleNamespace(__version__="10.16", Logger=SimpleNamespace(WARNING=1), TensorIOMode=SimpleNamespace(
        INPUT="in"), nptype=lambda t: np.float32, Runtime=lambda logger: SimpleNamespace(
        deserialize_cuda_engine=lambda data: Engine()))


@pytest.mark.parametrize("fail_at", [None, 2, 3])
def test_tensorrt_runner_frees_everything_it_allocated(tmp_path, monkeypatch, fail_at):
    import runtimes.tensorrt_runner as trr

    cudart = FakeCudart(fail_malloc_at=fail_at)
    monkeypatch.setattr(trr, "import_tensorrt", fake_trt)
    monkeypatch.setattr(trr, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trr, "logger", lambda: None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    trr.write_sidecar(engine, {"tensorrt": "10.16", "gpu": "Fake GPU", "precision": "fp16"})
    runner = trr.TensorRTRunner(engine, cuda_graph=True)
    if fail_at is None:
        for _ in range(2):  # activate, close, activate again: the same tensors, nothing twice
            with runner:
                assert set(cudart.live.values()) >= {"graph", "graph_exec", "stream", "device", "host"}
                assert [s.name for s in runner.inputs] == ["source"] and runner.outputs == ["face", "landmarks"]
                out = runner.infer({"source": np.zeros((1, 3, 8, 8), np.float32)})
                assert out["face"].shape == (1, 3, 8, 8)
    else:
        with pytest.raises(ArtifactError, match="CUDA error 2"):
            runner.activate()
    assert cudart.live == {}  # nothing leaked, after close() or after a failed activate()


def test_engine_sidecar_round_trip_carries_audio_delta(tmp_path):
    from runtimes.tensorrt_runner import check_engine_matches, read_sidecar, write_sidecar

    engine = tmp_path / "e.engine"
    engine.write_bytes(b"x")
    write_sidecar(engine, {"tensorrt": "11.4", "gpu": "NVIDIA H200", "audio_delta": "official"})
    assert read_sidecar(engine)["audio_delta"] == "official"
    assert check_engine_matches(engine, "11.4", "NVIDIA H200")["gpu"] == "NVIDIA H200"
    (tmp_path / "e.engine.json").write_text(json.dumps([1]))
    with pytest.raises(ArtifactError, match="not an engine manifest"):
        read_sidecar(engine)


def test_elementwise_gc_export_for_tensorrt(small_model, tmp_path):
    """--gc-form elementwise: a fixed-batch file with no conv that takes run-time weights, same numbers."""
    import onnx

    from export.onnx_export import export_file
    from runtimes.registry import open_runner
    from tests.conftest import random_inputs

    ew = export_file(small_model, tmp_path, "full", 2, 32, gc_form="elementwise")
    grouped = export_file(small_model, tmp_path, "full", 2, 32)
    assert "_ew." in ew.name
    from benchmarks.parity import collect_variants

    assert sorted(v.name for v in collect_variants(tmp_path)) == ["onnxruntime-fp32-b2-r32", "onnxruntime-fp32-ew-b2-r32"]
    proto = onnx.load(str(ew))
    inits = {i.name for i in proto.graph.initializer}
    assert all(n.input[1] in inits for n in proto.graph.node if n.op_type == "Conv")
    feeds = random_inputs(2, 32)
    with open_runner(ew) as a, open_runner(grouped) as b:
        np.testing.assert_allclose(a.infer(feeds)["face"], b.infer(feeds)["face"], atol=5e-5)


def test_gpu_check_without_cuda_is_one_line_and_exit_2(tmp_path, capsys):
    """On a machine without CUDA (CI, this one) the check says what is missing in one line, no traceback."""
    import torch

    from benchmarks.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu_check.sh runs for real here")
    assert main([str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "CUDA" in err
    assert not (tmp_path / "gpu" / "gpu_report.json").exists()
