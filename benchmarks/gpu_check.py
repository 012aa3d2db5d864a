"""The GPU half in one call: pytorch-cuda parity and speed (and TensorRT where it imports), one report.

    benchmarks/gpu_check.sh [OUT]      (default reports/gpu/; writes gpu_report.json and gpu_report.md)

Runs with a GPU machine's own python3 (torch with CUDA, numpy, onnx, onnxruntime,
safetensors, OpenCV, scikit-image; no venv, no network, no OpenVINO or dlib):
every import on this path needs only those. For 128² and 256²:

- parity of every pytorch-cuda variant (FP32 with TF32 off, FP16, BF16 where
  the GPU has it) at batch 1, 8 and 64 on 24 held-out real inputs, against the
  GPU FP32 reference (TF32 off, deterministic cuDNN, loop GC) and against the
  CPU FP32 reference, judged by the product's limits (dlib checks waived: no dlib);
- speed: median/p99 latency, FPS, peak GPU memory, % of the card's FP16 tensor
  peak and of its memory bandwidth, and the ratio to a plain FP16 CUDA-graph
  replay of the PyTorch model (same copies and synchronisation) measured here;
- the paper's 158.9 FPS on a 2080 Ti (128²) scaled to this card by FP16 peak.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from amnet import default_checkpoint
from amnet.core.errors import EXIT_USAGE, AmnetError, first_line
from amnet.core.fileio import write_text
from amnet.core.runner import MODEL_INPUTS

RESOLUTIONS = (128, 256)
BATCHES = (1, 8, 64)
SAMPLES = 24
SECONDS_PER_TIMING = 1.0
# Dense FP16 tensor-core TFLOP/s with FP32 accumulation (what PyTorch uses) and memory GB/s, from the vendor's
# data sheets; matched against torch.cuda.get_device_name() in this order.
PEAKS = (("H200", 989.0, 4800.0), ("H100 PCIe", 756.0, 2000.0), ("H100 NVL", 835.0, 3900.0), ("H100", 989.0, 3350.0),
         ("A100-SXM4-80GB", 312.0, 2039.0), ("A100", 312.0, 1555.0), ("L40S", 362.0, 864.0), ("L4", 121.0, 300.0),
         ("A10", 125.0, 600.0), ("T4", 65.0, 320.0), ("RTX 4090", 165.2, 1008.0), ("RTX 3090", 71.0, 936.0),
         ("RTX 2080 Ti", 53.8, 616.0))
PAPER_GPU = {"device": "RTX 2080 Ti", "fps": 158.9, "resolution": 128}


def card_peaks(name: str) -> tuple[float, float] | None:
    return next(((tf, bw) for key, tf, bw in PEAKS if key in name), None)


_BYTES: dict = {}


def bytes_per_frame(model, resolution: int, itemsize: int, batch: int) -> float:
    """A floor on DRAM traffic: every layer's output written and read once, the weights read once per batch."""
    import torch

    if resolution in _BYTES:
        elems, params = _BYTES[resolution]
        return 2 * elems * itemsize + params * itemsize / batch

    total = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + o.numel()))
             for m in model.modules() if not list(m.children()) and not isinstance(m, torch.nn.ReLU)]
    x = (torch.zeros(1, 3, resolution, resolution), torch.zeros(1, 1, 64, 60), torch.zeros(1, 3), torch.zeros(1, 2))
    with torch.inference_mode(), model.gc_form("elementwise"):
        model(*x)
    for h in hooks:
        h.remove()
    _BYTES[resolution] = (total[0], sum(p.numel() for p in model.parameters()))
    return bytes_per_frame(model, resolution, itemsize, batch)


def time_calls(fn, batch: int) -> dict:
    """Median/p99 of synchronous calls, for about SECONDS_PER_TIMING seconds (at least 10 calls)."""
    for _ in range(3):
        fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-5)
    times = []
    for _ in range(int(min(300, max(10, SECONDS_PER_TIMING / one)))):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "calls": len(ms),
            "fps": batch * 1e3 / float(np.median(ms))}


def plain_replay(model, batch: int, resolution: int, feeds: dict) -> dict:
    """The baseline: the PyTorch model in FP16 as training runs it (grouped GC, NCHW), one CUDA graph, the same
    copies and synchronisation as the runner."""
    import copy

    import torch

    from amnet.model import AMNet

    m = AMNet(model.config, gc_form="grouped")
    m.load_state_dict(copy.deepcopy(model.state_dict()))
    m = m.half().cuda().eval()
    static = {k: torch.from_numpy(np.ascontiguousarray(feeds[k][:1].repeat(batch, 0))).cuda() for k in MODEL_INPUTS}
    pinned = {k: v.cpu().pin_memory() for k, v in static.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            m(*(static[k].half() for k in MODEL_INPUTS))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream), torch.inference_mode():
        face, lm = m(*(static[k].half() for k in MODEL_INPUTS))
        out = (face.float(), lm.float())
    host = [torch.empty(o.shape, pin_memory=True) for o in out]

    def call():
        with torch.cuda.stream(stream):
            for k in MODEL_INPUTS:
                static[k].copy_(pinned[k], non_blocking=True)
            graph.replay()
            for h, o in zip(host, out):
                h.copy_(o, non_blocking=True)
        stream.synchronize()

    def replay():
        with torch.cuda.stream(stream):
            graph.replay()
        stream.synchronize()

    result = time_calls(call, batch)
    result["replay_only"] = time_calls(replay, batch)
    return result  # the graph and the model copy go with this frame


def _reset_peak_memory() -> None:
    import torch

    torch.cuda.reset_peak_memory_stats()


def check_variants(build: Path, resolution: int, feeds: dict, refs: dict, limits, model, peaks, runtime: str) -> list:
    """Parity vs both references and speed, for every full-model artifact of one runtime at one resolution."""
    from amnet.core.limits import FACE_CHECKS
    from amnet.core.metrics import compare
    from benchmarks.parity import collect_variants, judge, open_variant, run_in_batches

    rows = []
    for v in sorted(collect_variants(build, resolution), key=lambda v: (v.precision, v.batch or 0)):
        if v.runtime != runtime:
            continue
        _reset_peak_memory()
        row = {"variant": v.name, "runtime": v.runtime, "precision": v.precision, "batch": v.batch,
               "compile": v.extra.get("compile") or "eager"}
        try:
            with open_variant(v) as runner:
                row["load_s"] = runner.load_time  # with compile, tens of seconds
                row["compile"] = runner.metadata.get("compile", "eager")
                out = run_in_batches(runner, feeds, v.batch)
                one = {k: feeds[k][:1].repeat(v.batch, 0) for k in MODEL_INPUTS}
                row.update(time_calls(lambda: runner.infer(one), v.batch))
                if hasattr(runner, "replay_only"):  # the same work without the numpy-in/numpy-out contract
                    row["replay_only"] = time_calls(runner.replay_only, v.batch)
                row.update(getattr(runner, "device_stats", dict)())
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is a failed row; the others go on
            error = f"{type(e).__name__}: {first_line(e, 300)}"
            row.update(error=error, passed=False, failures=[f"could not run: {error}"])
            rows.append(row)
            continue
        for name, ref in refs.items():
            row[f"vs_{name}"] = {k: compare(ref[k], out[k], image=(k == "face")) for k in ("face", "landmarks")}
        bars = limits.for_variant(v.runtime, v.precision)
        row["limits"] = bars
        row["failures"], row["waived"] = judge(row["vs_cpu"], bars, waived=FACE_CHECKS)
        row["passed"] = not row["failures"]
        if peaks:
            itemsize = 4 if v.precision == "fp32" else 2
            row["pct_fp16_peak"] = 100 * row["fps"] * model_gflops(model, resolution) / (peaks[0] * 1e3)
            row["pct_bandwidth"] = 100 * row["fps"] * bytes_per_frame(model, resolution, itemsize, v.batch) / (
                peaks[1] * 1e9)
        rows.append(row)
    return rows


def nan_probe(build_dir: Path, resolution: int, feeds: dict) -> bool:
    """The device-side input scan: one NaN in the source must be refused, not turned into a face."""
    from amnet.core.errors import InputError
    from runtimes.registry import open_runner

    bad = {k: feeds[k][:1].copy() for k in MODEL_INPUTS}
    bad["source"][0, 0, 0, 0] = np.nan
    with open_runner(build_dir / f"amnet_full_b1_r{resolution}_cuda_fp16.cudaplan") as runner:
        try:
            runner.infer(bad)
        except InputError:
            return True
    return False


_GFLOPS: dict = {}


def model_gflops(model, resolution: int) -> float:
    from amnet.flops import gflops_per_frame

    if resolution not in _GFLOPS:
        _GFLOPS[resolution] = gflops_per_frame(model, resolution)
    return _GFLOPS[resolution]


def tensorrt_rows(checkpoint, build_dir: Path, resolution: int, feeds, refs, limits, model, peaks) -> list:
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint

    trt_dir = build_dir.with_name(build_dir.name + "_trt")
    export_checkpoint(checkpoint, trt_dir, ExportOptions((1, 8), resolution, simplify=False, check_parity=False,
                                                         progress=False))
    build(trt_dir, "tensorrt", trt_dir, BuildOptions(("fp32", "fp16", "int8"), (1, 8), resolution, 32, progress=False))
    return check_variants(trt_dir, resolution, feeds, refs, limits, model, peaks, "tensorrt")


def run(out: Path, checkpoint: Path, resolutions=RESOLUTIONS, batches=BATCHES, build_dir: Path | None = None) -> dict:
    import importlib.util

    import torch

    from amnet.checkpoint import load_checkpoint
    from amnet.core.limits import load_limits
    from amnet.realdata import load_inputs
    from export.pipeline import BuildOptions, build
    from runtimes.pytorch_cuda_runner import cuda_torch, gpu_reference
    from runtimes.pytorch_runner import reference_outputs
    from runtimes.registry import backends

    cuda_torch()
    t0 = time.time()
    gpu = torch.cuda.get_device_name()
    peaks = card_peaks(gpu)
    limits = load_limits(runtimes=backends())
    model = load_checkpoint(checkpoint).require_full()
    report = {"gpu": gpu, "peaks": {"fp16_tflops": peaks[0], "bandwidth_gbs": peaks[1]} if peaks else None,
              "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
              "checkpoint": checkpoint.name, "samples": SAMPLES, "resolutions": {}}
    build_dir = build_dir or out / "build"
    has_trt = importlib.util.find_spec("tensorrt") is not None
    report["tensorrt"] = "importable" if has_trt else "not importable here: TensorRT rows skipped"
    for r in resolutions:
        feeds = load_inputs("heldout", r, SAMPLES)
        feeds.pop("target", None)
        refs = {"cpu": reference_outputs(model, feeds), "gpu": gpu_reference(model, feeds)}
        precisions = ("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
        build(checkpoint, "pytorch-cuda", build_dir, BuildOptions(precisions, batches, r, progress=False))
        rows = check_variants(build_dir, r, feeds, refs, limits, model, peaks, "pytorch-cuda")
        try:
            refused = nan_probe(build_dir, r, feeds)
        except Exception as e:  # noqa: BLE001 - the probe could not run: not refused, and said why
            refused = False
            report.setdefault("errors", []).append(f"NaN probe {r}²: {type(e).__name__}: {first_line(e, 300)}")
        report["nan_input_refused"] = report.get("nan_input_refused", True) and refused
        plain = {b: plain_replay(model, b, r, feeds) for b in batches}
        for row in (r for r in rows if "fps" in r):
            row["x_plain_fp16_replay"] = row["fps"] / plain[row["batch"]]["fps"]
            if "replay_only" in row:
                row["replay_only"]["x_plain"] = row["replay_only"]["fps"] / plain[row["batch"]]["replay_only"]["fps"]
        if has_trt:
            try:
                rows += tensorrt_rows(checkpoint, build_dir, r, feeds, refs, limits, model, peaks)
            except Exception as e:  # noqa: BLE001 - reported in the table, the check goes on
                report.setdefault("errors", []).append(f"tensorrt {r}²: {type(e).__name__}: {first_line(e, 300)}")
        gpu_vs_cpu = {k: compare_refs(refs, k) for k in ("face", "landmarks")}
        report["resolutions"][str(r)] = {"rows": rows, "plain_fp16_replay": {str(b): v for b, v in plain.items()},
                                         "gpu_reference_vs_cpu_reference": gpu_vs_cpu,
                                         "gflops_per_frame": model_gflops(model, r)}
        # Kept as it goes: a run cut short still leaves what it measured.
        write_text(out / "gpu_report.partial.json", json.dumps(report, indent=1, default=float) + "\n")
    if peaks:
        report["paper"] = {**PAPER_GPU, "scaled_by_fp16_peak": PAPER_GPU["fps"] * peaks[0] / card_peaks("RTX 2080 Ti")[0]}
    report["bars"] = bars(report)
    report["minutes"] = round((time.time() - t0) / 60, 2)
    return report


def compare_refs(refs, k):
    from amnet.core.metrics import compare

    return compare(refs["cpu"][k], refs["gpu"][k], image=(k == "face"))


def _row(rows, precision, batch):
    return next((r for r in rows if r["precision"] == precision and r["batch"] == batch and
                 r["runtime"] == "pytorch-cuda"), None)


def _failed(bar: str, row: dict) -> tuple[str, dict]:
    return bar, {"value": float("nan"), "met": False, "error": row["error"]}


def bars(report) -> dict:
    """The issue's bars, each with the figure that meets or misses it."""
    want = {"128": {1: 1000, 64: 6000}, "256": {1: 650, 64: 1800}}
    out = {}
    for res, by_batch in want.items():
        if res not in report["resolutions"]:  # not asked for in this run (--resolutions); no bars, no pass
            continue
        rows = report["resolutions"][res].get("rows", [])
        for b, fps in by_batch.items():
            r = _row(rows, "fp16", b)
            if r is None:  # never built or never collected: a bar that was not measured is not met
                out[f"fp16 {res}² b{b} ≥ {fps} FPS"] = {"value": float("nan"), "met": False, "error": "no such row"}
            elif "error" in r:
                out.update([_failed(f"fp16 {res}² b{b} ≥ {fps} FPS", r)])
            elif r:
                out[f"fp16 {res}² b{b} ≥ {fps} FPS"] = {"value": round(r["fps"], 1), "met": r["fps"] >= fps}
                out[f"fp16 {res}² b{b} ≥ 1.0× plain replay"] = {"value": round(r["x_plain_fp16_replay"], 2),
                                                                 "met": r["x_plain_fp16_replay"] >= 1.0}
        for r in rows:
            if r["runtime"] != "pytorch-cuda" or r["precision"] not in ("fp16", "fp32"):
                continue
            if "error" in r:
                out.update([_failed(f"{r['precision']} {res}² b{r['batch']} runs", r)])
            elif r["precision"] == "fp16":
                out[f"fp16 {res}² b{r['batch']} PSNR ≥ 55 dB vs CPU"] = {
                    "value": round(r["vs_cpu"]["face"]["psnr"], 1), "met": r["vs_cpu"]["face"]["psnr"] >= 55}
            else:
                worst = float(np.max([r["vs_cpu"][k]["max_abs"] for k in ("face", "landmarks")]))
                out[f"fp32 {res}² b{r['batch']} max abs ≤ 1e-4 vs CPU"] = {"value": worst, "met": worst <= 1e-4}
    return out


def markdown(report) -> str:
    peaks = report["peaks"]
    lines = [f"# GPU check: {report['gpu']}", "",
             f"torch {report['torch']}, CUDA {report['cuda']}, cuDNN {report['cudnn']}; {report['checkpoint']}; "
             f"{report['samples']} held-out samples; {report['minutes']} min. TensorRT: {report['tensorrt']}. "
             f"A NaN input refused by the device-side scan: {report.get('nan_input_refused')}.",
             f"Card peaks: {peaks['fp16_tflops']:g} TFLOP/s FP16 tensor, {peaks['bandwidth_gbs']:g} GB/s." if peaks
             else "Card peaks: unknown card (no % columns).", ""]
    for res, data in report["resolutions"].items():
        g = data["gpu_reference_vs_cpu_reference"]["face"]
        lines += [f"## {res}×{res} ({data['gflops_per_frame']:.2f} GFLOP/frame)", "",
                  f"GPU FP32 reference (TF32 off, deterministic) vs CPU reference: face max abs {g['max_abs']:.2e}, "
                  f"PSNR {g['psnr']:.1f} dB.", "",
                  "| variant | compile (load s) | median ms | p99 ms | FPS | × plain FP16 replay | "
                  "replay only: FPS (× plain) | GPU MB | % FP16 peak | % bandwidth | vs GPU ref: max abs / PSNR | "
                  "vs CPU ref: max abs / PSNR | gate |",
                  "|" + "---|" * 13]
        for r in data["rows"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['compile']} |" + " |" * 10 + f" FAIL: {r['error']} |")
                continue
            gref, cref = r["vs_gpu"]["face"], r["vs_cpu"]["face"]
            lines.append(
                f"| {r['variant']} | {r['compile']} ({r['load_s']:.1f}) | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['fps']:.0f} | "
                f"{r.get('x_plain_fp16_replay', float('nan')):.2f} | "
                f"{r.get('replay_only', {}).get('fps', float('nan')):.0f} "
                f"({r.get('replay_only', {}).get('x_plain', float('nan')):.2f}) | {r.get('gpu_memory_mb', float('nan')):.0f} | "
                f"{r.get('pct_fp16_peak', float('nan')):.1f} | {r.get('pct_bandwidth', float('nan')):.1f} | "
                f"{gref['max_abs']:.1e} / {gref['psnr']:.1f} | {cref['max_abs']:.1e} / {cref['psnr']:.1f} | "
                f"{'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['failures'])} |")
        plain = ", ".join(f"b{b}: {v['fps']:.0f} FPS ({v['replay_only']['fps']:.0f} replay only)"
                          for b, v in data["plain_fp16_replay"].items())
        lines += ["", f"Plain FP16 CUDA-graph replay (grouped GC, NCHW, pinned copies and sync, no numpy): {plain}. "
                  "FPS = infer() with numpy in and out, validated; replay only = the graph and a sync.", ""]
    if report.get("paper"):
        p = report["paper"]
        lines += [f"Paper: {p['fps']} FPS on an {p['device']} at {p['resolution']}²; scaled to this card by FP16 "
                  f"peak: {p['scaled_by_fp16_peak']:.0f} FPS.", ""]
    lines += ["## Bars", "", "| bar | value | met |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']:.3g} | {'yes' if v['met'] else 'NO'} |" for k, v in report["bars"].items()]
    for e in report.get("errors", []):
        lines.append(f"\nError: {e}")
    return "\n".join(lines) + "\n"


def sizes(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(r) for r in text.split(","))
    except ValueError:
        out = ()
    if not out or any(r < 8 or r % 4 for r in out):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of sizes divisible by 4")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="reports/gpu", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    ap.add_argument("--resolutions", default="128,256", type=sizes, help="comma-separated, each divisible by 4")
    ap.add_argument("--build-dir", type=Path, help="where the CUDA plans and weights go (default OUT/build)")
    args = ap.parse_args(argv)
    try:  # no CUDA, a checkpoint that is not one, an output folder that cannot be made: one line, exit 2
        args.out.mkdir(parents=True, exist_ok=True)
        report = run(args.out, args.checkpoint, args.resolutions, build_dir=args.build_dir)
    except (AmnetError, OSError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    write_text(args.out / "gpu_report.json", json.dumps(report, indent=1, default=float) + "\n")
    text = markdown(report)
    write_text(args.out / "gpu_report.md", text)
    print(text)
    rows = [r for res in report["resolutions"].values() for r in res["rows"]]
    ok = (report["bars"] and all(b["met"] for b in report["bars"].values()) and all(r["passed"] for r in rows)
          and not report.get("errors") and report.get("nan_input_refused"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
