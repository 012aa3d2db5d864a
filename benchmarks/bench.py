"""Throughput harness: latency percentiles, FPS, peak RSS, cold start, model file size, delegation, roofline,
the paper's claims.

Each variant runs in its own child process (`python -m benchmarks.bench --one SPEC`) so that its
peak RSS and cold start are its own. PyTorch eager is measured in the same run and every FPS is
also given as a ratio to it. Medians, not means: these shared machines drift, by a third within
minutes, so every variant runs in two child processes, each timing half its iterations: the
first pass in one order, the second in the reverse one. Each variant's two runs then sit
symmetrically about the middle of the run, so a steady drift moves every variant alike instead
of favouring whichever ran while the machine was fast (more passes: an even number, alternating).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from amnet.core.errors import InputError

PAPER = {"cpu": {"fps": 33.8, "device": "Intel i9-10900K", "cores": 10,
                 # Theoretical FP32 peak: 10 cores × 32 FLOP/cycle (2 AVX2 FMA units) × 4.1 GHz all-core.
                 "peak_gflops": 1312.0, "resolution": 128},
         "gpu": {"fps": 158.9, "device": "NVIDIA RTX 2080 Ti", "resolution": 128}}
REAL_TIME_FPS = 25.0
CHILD_SECONDS = 30  # timing time per variant, all passes together, however many iterations that allows
PASSES = 2  # children per variant: forward then reverse centres every variant on the run's middle
MIN_TIMINGS = 5  # per variant (all passes together), however short the time budget


def machine_info(threads: int | None = None) -> dict:
    from amnet.core import cpu

    info = cpu.isa()
    gpu = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if smi.returncode == 0 and smi.stdout.strip():
            gpu = smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    from amnet.core.fileio import tool_versions

    return {"cpu": info["cpu"], "cores": os.cpu_count(), "threads_used": threads, "isa": info["effective"],
            "isa_native": info["native"], "isa_cap": info["cap"], "isa_name": cpu.isa_name(info),
            "float_precision": os.environ.get("AMNET_FLOAT_PRECISION", "auto"), "gpu": gpu,
            "versions": tool_versions("torch", "onnxruntime", "openvino", "nncf", "tensorrt")}


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of FP32 GEMM rate with numpy's BLAS: the machine's practical compute ceiling."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a child started from a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------- one variant, in a child process

def bench_one(spec: dict) -> dict:
    """Load, warm up, time. spec: runtime, path, precision, batch, resolution, threads, iters, warmup."""
    t0 = time.perf_counter()
    batch = spec.get("batch") or 1
    r = spec["resolution"]
    rng = np.random.default_rng(0)
    feeds = {"source": rng.uniform(-1, 1, (batch, 3, r, r)).astype(np.float32),
             "audio": rng.normal(0, 30, (batch, 1, 64, 60)).astype(np.float32),
             "pose": rng.normal(0, .2, (batch, 3)).astype(np.float32),
             "eye": rng.uniform(.2, .35, (batch, 2)).astype(np.float32)}
    from benchmarks.parity import Variant, open_variant

    options = {"gc_form": "grouped"} if spec["runtime"] == "pytorch" else {}
    runner = open_variant(Variant(spec["name"], spec["runtime"], spec["precision"], Path(spec["path"]), spec["batch"], r),
                          spec["threads"], spec.get("verify", True), **options).activate()
    runner.infer(feeds)  # first inference completes the cold start (lazy compilation)
    cold = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        runner.infer(feeds)
    times = []
    deadline = time.perf_counter() + spec.get("max_seconds", CHILD_SECONDS)
    for _ in range(spec["iters"]):
        runner.infer(feeds)
        times.append(runner.inference_time)
        if time.perf_counter() > deadline and len(times) >= spec.get("min_iters", MIN_TIMINGS):
            break
    out = {"times_ms": [1e3 * x for x in times], "cold_start_s": round(cold, 3)}
    if hasattr(runner, "device_stats"):  # GPU runners: which card, peak device memory
        out.update(runner.device_stats())
    runner.close()
    if spec["runtime"] == "openvino":  # throughput mode: streams and an async queue
        tp = open_variant(Variant(spec["name"], "openvino", spec["precision"], Path(spec["path"]), spec["batch"], r),
                          spec["threads"], spec.get("verify", True), mode="throughput").activate()
        n_req = max(2, tp.optimal_requests) * 4
        tp.infer_many([feeds] * n_req)
        tp.infer_many([feeds] * n_req)
        out["throughput_fps"] = n_req * batch / tp.inference_time
        out["throughput_streams"] = tp.optimal_requests
        tp.close()
    out["peak_rss_mb"] = peak_rss_mb()
    out["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")  # what this child really ran under
    return out


def pooled(results: list[dict], batch: int) -> dict:
    """One row from a variant's passes: percentiles over all their timings; cold start and throughput the
    median over passes, peak RSS the largest; the first failure, if any pass failed."""
    failed = next((r for r in results if "error" in r), None)
    if failed or not results:
        return failed or {"error": "not run"}
    if not all(r.get("times_ms") and np.isfinite(r["times_ms"]).all() for r in results):
        return {"error": "a pass returned no timings or a non-finite one"}
    t = np.concatenate([r["times_ms"] for r in results])
    row = {k: v for k, v in results[0].items() if k != "times_ms"}  # device stats, the ISA the child ran under
    row |= {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "iters": len(t), "passes": len(results),
            "fps": 1e3 * batch / float(np.median(t)),
            "cold_start_s": float(np.median([r["cold_start_s"] for r in results])),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
    if all("gpu_memory_mb" in r for r in results):  # a peak, like RSS
        row["gpu_memory_mb"] = max(r["gpu_memory_mb"] for r in results)
    if all("throughput_fps" in r for r in results):
        row["throughput_fps"] = float(np.median([r["throughput_fps"] for r in results]))
    return row


def run_child(spec: dict, timeout: float = 300) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    if spec.get("isa", NATIVE) != NATIVE:  # oneDNN (OpenVINO's and PyTorch's) runs no ISA above this cap
        env["ONEDNN_MAX_CPU_ISA"] = spec["isa"]
    try:
        p = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--one", json.dumps(spec)], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the whole run

NATIVE = "native"
OFF_DELEGATE_MARK = "⚠"


def artifact_facts(variant) -> dict:
    """What a variant's manifest entry says about its files: their size summed (what an app ships), and for an
    on-device build the share of the conv multiply-adds its delegate took and how many convs it left off."""
    entry = getattr(variant, "extra", None) or {}  # a variant without a manifest entry has no facts to give
    facts = {"file_mb": sum((variant.path.parent / f).stat().st_size for f in entry.get("files", ())) / 1e6}
    delegation = entry.get("delegation")
    if delegation:
        facts |= {"delegate": delegation["delegate"], "conv_macs_delegated": delegation["conv_macs_delegated"],
                  "convs_off_delegate": delegation["convs_off_delegate"]}
    return facts


def usable_isas(isas: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the ISA caps this CPU can run, notes on those it cannot: a cap can only take features away)."""
    from amnet.core import cpu

    native = cpu.isa()["native"]
    keep, notes = [], []
    for name in isas:
        cap = name.upper()
        if name == NATIVE:
            keep.append(NATIVE)
        elif cap not in cpu.CAPS:
            raise InputError(f"--isa {name}: not one of oneDNN's ISA caps ({', '.join(cpu.CAPS)}) or 'native'")
        elif not all(native[f] for f in cpu.CAPS[cap]):
            missing = [f for f in cpu.CAPS[cap] if not native[f]]
            notes.append(f"no {cap} rows: this CPU lacks {', '.join(missing)}")
        else:
            keep.append(cap)
    if not keep:  # nothing would be measured
        raise InputError(f"--isa {','.join(isas)}: {'; '.join(notes)}; a cap can only take features away")
    return keep, notes


def bench(variants: list, checkpoint: str | None, resolution: int, threads: int = 2, iters: int = 30,
          warmup: int = 3, gflops: float | None = None, progress: bool = True,
          isas: tuple[str, ...] = (NATIVE,), verify: bool = True, passes: int = PASSES) -> dict:
    """Every variant (and PyTorch eager) in a child process each, once per ISA cap and pass; ratios within one cap."""
    from amnet.core.progress import progress_bar

    from runtimes import registry

    if iters < 1 or passes < 1:
        raise InputError(f"need at least one timed iteration and one pass, got iters={iters}, passes={passes}")
    passes = min(passes, iters)
    if passes > 1 and passes % 2:  # an even number of passes (forward, reverse, …) centres every variant
        passes += 1
    specs = []
    isas_run, notes = usable_isas(isas)
    eager_missing = registry.get("pytorch").missing() if checkpoint else None
    if eager_missing:
        notes.append(f"no PyTorch eager column: {eager_missing}")
    if checkpoint and not eager_missing:
        specs.append({"name": "pytorch-fp32-eager", "runtime": "pytorch", "precision": "fp32",
                      "path": str(Path(checkpoint).resolve()),
                      "batch": 1, "resolution": resolution})
    facts = {}
    for v in variants:
        if v.resolution == resolution:
            # Absolute: the child runs in the repository root, not in the caller's folder.
            specs.append({"name": v.name, "runtime": v.runtime, "precision": v.precision, "path": str(v.path.resolve()),
                          "batch": v.batch, "resolution": resolution})
            facts[v.name] = artifact_facts(v)
    peak = gemm_peak_gflops()
    rows = []
    specs = [{**spec, "isa": isa} for isa in isas_run for spec in specs]
    runs: list[list[dict]] = [[] for _ in specs]
    order = [(p, i) for p in range(passes) for i in (range(len(specs)) if p % 2 == 0 else reversed(range(len(specs))))]
    for p, i in progress_bar(order, desc=f"bench {resolution}²", disable=not progress, unit="run"):
        if runs[i] and "error" in runs[i][-1]:
            continue  # a variant that failed once is a failed row: no second try that might pass
        share = iters // passes + (p < iters % passes)  # the passes' shares add up to `iters`
        runs[i].append(run_child({**specs[i], "threads": threads, "iters": max(1, share), "warmup": warmup,
                                  "verify": verify, "max_seconds": CHILD_SECONDS / passes,
                                  "min_iters": -(-MIN_TIMINGS // passes)}))
    for spec, results in zip(specs, runs):
        row = {k: spec[k] for k in ("name", "runtime", "precision", "batch", "resolution", "isa")}
        rows.append(row | facts.get(spec["name"], {}) | pooled(results, spec["batch"] or 1))
    for r in rows:
        if "fps" not in r:
            continue
        eager = next((e["fps"] for e in rows if e["runtime"] == "pytorch" and "fps" in e and e["isa"] == r["isa"]),
                     None)
        if eager:
            r["ratio_vs_eager"] = r["fps"] / eager
        if gflops:
            best = max(r["fps"], r.get("throughput_fps", 0))
            r["achieved_gflops"] = gflops * best
            r["roofline_pct"] = 100 * gflops * best / peak
    return {"resolution": resolution, "threads": threads, "isas": isas_run, "passes": passes,
            "gemm_peak_gflops": round(peak, 1),
            "gflops_per_frame": gflops, "rows": rows, "notes": notes,
            "off_delegate": sorted(n for n, f in facts.items() if f.get("convs_off_delegate")),
            "paper": paper_comparison(rows, peak, resolution, isas_run[0])}


def paper_comparison(rows: list[dict], peak: float, resolution: int, isa: str = NATIVE) -> dict:
    """The best CPU FPS under one ISA cap (the first benched, as `choose` ranks): `--isa AVX2` alone has no native
    rows, and their best was read as 0 FPS."""
    cores = os.cpu_count() or 1
    cpu = PAPER["cpu"]
    best = max((max(r.get("fps", 0), r.get("throughput_fps", 0)) for r in rows
                if r.get("runtime") != "tensorrt" and r.get("isa", NATIVE) == isa), default=0)
    return {"paper_cpu_fps": cpu["fps"], "paper_cpu": cpu["device"], "paper_gpu_fps": PAPER["gpu"]["fps"],
            "paper_gpu": PAPER["gpu"]["device"], "paper_resolution": cpu["resolution"],
            "claim_scaled_by_cores": round(cpu["fps"] * cores / cpu["cores"], 1),
            "claim_scaled_by_gemm_peak": round(cpu["fps"] * peak / cpu["peak_gflops"], 1),
            "best_measured_fps": round(best, 1), "resolution": resolution, "isa": isa,
            "real_time": best >= REAL_TIME_FPS, "real_time_threshold_fps": REAL_TIME_FPS}


def markdown(report: dict) -> str:
    lines = [f"## Throughput at {report['resolution']}×{report['resolution']}, {report['threads']} threads", "",
             f"GEMM peak (numpy FP32, 2048²): {report['gemm_peak_gflops']} GFLOP/s; "
             f"model: {report['gflops_per_frame'] or float('nan'):.2f} GFLOP/frame. Roofline % = achieved FLOP/s "
             "of the best mode vs that FP32 peak (INT8 kernels can exceed it). Each variant ran in "
             f"{report.get('passes', 1)} child process(es), the order reversed every other pass, its timings pooled "
             "(cold start and throughput: the median pass; peak RSS: the largest).", "",
             "| variant | ISA | median ms | p90 ms | p99 ms | FPS (b=batch) | × eager (same ISA) | throughput FPS | "
             "roofline % | file MB | peak RSS MB | cold start s | conv MACs on delegate % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    off_delegate = {}
    for r in report["rows"]:
        isa = r.get("isa", NATIVE)
        name = r["name"]
        if r.get("convs_off_delegate"):
            name += f" {OFF_DELEGATE_MARK}"
            off_delegate[r["name"]] = r
        size = f"{r['file_mb']:.2f}" if "file_mb" in r else ""
        delegated = f"{100 * r['conv_macs_delegated']:.1f}" if "conv_macs_delegated" in r else ""
        if "error" in r:
            lines.append(f"| {name} | {isa} | error: {r['error']} ||||||| {size} ||| {delegated} |")
            continue
        lines.append(f"| {name} | {isa} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['fps']:.1f} | {r.get('ratio_vs_eager', float('nan')):.2f} | "
                     f"{r.get('throughput_fps', float('nan')):.1f} | {r.get('roofline_pct', float('nan')):.1f} | "
                     f"{size} | {r['peak_rss_mb']:.0f} | {r['cold_start_s']:.2f} | {delegated} |")
    lines.append("")  # a line right under a table would read as one of its rows
    for name, r in off_delegate.items():  # one line per variant, however many ISA caps it ran under
        lines.append(f"{OFF_DELEGATE_MARK} {name}: {r['convs_off_delegate']} convolution(s) off {r['delegate']} "
                     f"({100 * r['conv_macs_delegated']:.1f} % of the conv MACs delegated): they run on the "
                     "runtime's portable kernel, slower, and split the graph.")
    p = report["paper"]
    under = "" if p.get("isa", NATIVE) == NATIVE else f" under the {p['isa']} cap"
    lines += ["File MB: the artifact's files summed, 10⁶ bytes. Conv MACs on delegate: the share of the "
              "convolutions' multiply-adds the on-device build's delegate took, as its manifest records."]
    lines += [f"Note: {n}" for n in report.get("notes", [])]
    lines += ["", f"Paper: {p['paper_cpu_fps']} FPS on {p['paper_cpu']} (10 cores), {p['paper_gpu_fps']} FPS on "
              f"{p['paper_gpu']}, at {p['paper_resolution']}². Scaled to this machine: "
              f"{p['claim_scaled_by_cores']} FPS by core count, {p['claim_scaled_by_gemm_peak']} FPS by GEMM peak. "
              f"Best measured here at {p['resolution']}²{under}: {p['best_measured_fps']} FPS — "
              f"{'real time' if p['real_time'] else 'below real time'} (≥ {p['real_time_threshold_fps']:g} FPS).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(bench_one(json.loads(sys.argv[2]))))
