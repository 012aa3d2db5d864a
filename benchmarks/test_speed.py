"""pytest-benchmark suites: PyTorch eager vs ONNX Runtime vs OpenVINO, batch 1, 2 threads, same run.

    make bench          (or: pytest benchmarks --benchmark-only)

Compare the medians within one run (these machines drift); `amnet-deploy bench` gives the same
numbers with percentiles, RSS and ratios.
"""
import numpy as np
import pytest
import torch

THREADS = 2


@pytest.fixture(scope="module", params=[256, 128], ids=lambda r: f"r{r}")
def setup(request, tmp_path_factory):
    from amnet.checkpoint import load_checkpoint, save_checkpoint
    from amnet import default_checkpoint
    from export.openvino_build import build_openvino
    from export.pipeline import build_onnx_precisions, export_checkpoint

    r = request.param
    d = tmp_path_factory.mktemp(f"bench{r}")
    model = load_checkpoint(default_checkpoint()).model
    ckpt = save_checkpoint(d / "m.safetensors", model)
    export_checkpoint(ckpt, d, [1], r, check_parity=False, progress=False)
    build_onnx_precisions(d, ["int8"], d, [1], r, 32, progress=False)
    build_openvino(d, ["fp32", "int8"], d, [1], r, calib_samples=32, progress=False)
    rng = np.random.default_rng(0)
    feeds = {"source": rng.uniform(-1, 1, (1, 3, r, r)).astype(np.float32),
             "audio": rng.normal(0, 30, (1, 1, 64, 60)).astype(np.float32),
             "pose": rng.normal(0, .2, (1, 3)).astype(np.float32), "eye": np.full((1, 2), .3, np.float32)}
    return r, d, model, feeds


def _bench(benchmark, fn):
    fn()  # warm-up
    benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)


def test_pytorch_eager(benchmark, setup):
    _, _, model, feeds = setup
    torch.set_num_threads(THREADS)
    model.set_gc_form("grouped")
    args = [torch.from_numpy(feeds[k]) for k in ("source", "audio", "pose", "eye")]

    def run():
        with torch.inference_mode():
            model(*args)

    _bench(benchmark, run)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_onnxruntime(benchmark, setup, variant):
    from runtimes.onnxruntime_runner import OnnxRuntimeRunner

    r, d, _, feeds = setup
    name = f"amnet_full_b1_r{r}{'' if variant == 'fp32' else '_int8'}.onnx"
    runner = OnnxRuntimeRunner(d / name, threads=THREADS)
    _bench(benchmark, lambda: runner.infer(feeds))


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_openvino(benchmark, setup, variant):
    from runtimes.openvino_runner import OpenVinoRunner

    r, d, _, feeds = setup
    runner = OpenVinoRunner(d / f"amnet_full_b1_r{r}_ov_{variant}.xml", threads=THREADS, precision=variant)
    _bench(benchmark, lambda: runner.infer(feeds))
