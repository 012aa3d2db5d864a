"""What each pytorch-cuda option buys, measured on one GPU: the evidence behind the builder's defaults.

    PYTHONPATH=. python3 -m benchmarks.gpu_options OUT [--budget-s 240] [--compile]

FP16, 128² and 256², batch 1 and 64, each configuration's infer() (numpy in and
out, validated) and graph replay beside a plain FP16 CUDA-graph replay of the
model in the same process, plus the CUDA kernels one eager forward launches and
the face PSNR against the CPU FP32 reference on held-out inputs. Host-copy
schemes other than the runner's are small subclasses here; a
configuration that fails is reported as an error and the rest go on. With
``--compile``, ``torch.compile`` (inductor) runs in a child process with a time
limit, since its compile time is one of the things measured.
Writes OUT/gpu_options.json and OUT/gpu_options.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from amnet import default_checkpoint
from amnet.core.errors import first_line
from amnet.core.fileio import write_text
from amnet.core.runner import MODEL_INPUTS
from benchmarks import gpu_check

CASES = ((128, 1), (256, 64), (128, 64), (256, 1))  # compile children run in this order until the budget ends
SAMPLES = 8
SECONDS_PER_TIMING = 0.6


def configs():
    """name → (plan fields, runner class): the product's old and new plans and the host-copy variants."""
    from runtimes.pytorch_cuda_runner import TorchCudaRunner

    class StagedOutput(TorchCudaRunner):
        """The first runner's two output copies: device → pinned staging tensors, then into new arrays."""

        def _run(self, feeds):
            torch = self.torch
            staged = {k: torch.empty(v.shape, pin_memory=True) for k, v in self.static_out.items()}
            with torch.cuda.stream(self.stream):
                for k, v in feeds.items():
                    self.host_in[k].copy_(torch.from_numpy(v))
                    self.static_in[k].copy_(self.host_in[k], non_blocking=True)
                self.cuda_graph.replay()
                for k, v in self.static_out.items():
                    staged[k].copy_(v, non_blocking=True)
            self.stream.synchronize()
            return self._checked({k: torch.empty(v.shape).copy_(v) for k, v in staged.items()})

    class Pageable(TorchCudaRunner):
        """Inputs copied from the caller's arrays and outputs into new arrays by the driver (pageable memory)."""

        def _run(self, feeds):
            torch = self.torch
            with torch.cuda.stream(self.stream):
                for k, v in feeds.items():
                    self.static_in[k].copy_(torch.from_numpy(v))
                self.cuda_graph.replay()
                out = {k: v.to("cpu") for k, v in self.static_out.items()}
            return self._checked(out)

    base = {"gc_form": "grouped", "channels_last": False, "compile": "eager"}
    return {
        "per-GC heads, staged output (first plan)": ({**base}, StagedOutput),
        "fused heads, staged output": ({**base, "gc_heads": "fused"}, StagedOutput),
        "fused heads, elementwise GC": ({**base, "gc_heads": "fused", "gc_form": "elementwise"}, StagedOutput),
        "fused heads, channels-last": ({**base, "gc_heads": "fused", "channels_last": True}, StagedOutput),
        "fused heads, pinned output views (eager plan)": ({**base, "gc_heads": "fused"}, TorchCudaRunner),
        "fused heads, pageable copies": ({**base, "gc_heads": "fused"}, Pageable),
    }


def write_plan(folder: Path, weights: Path, resolution: int, batch: int, fields: dict) -> Path:
    from runtimes.pytorch_cuda_runner import PLAN_FORMAT

    plan = {"format": PLAN_FORMAT, "weights": weights.name, "precision": "fp16", "batch": batch,
            "resolution": resolution, **fields}
    path = folder / f"plan_{len(list(folder.glob('plan_*')))}.cudaplan"
    path.write_text(json.dumps(plan))
    return path


def kernel_count(model, resolution: int) -> int:
    """CUDA kernels one eager FP16 forward at batch 1 launches."""
    import torch

    x = [torch.zeros(1, 3, resolution, resolution), torch.zeros(1, 1, 64, 60), torch.zeros(1, 3), torch.zeros(1, 2)]
    x = [t.cuda().half() for t in x]
    with torch.inference_mode():
        model(*x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(*x)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def measure_runner(runner, feeds, refs, batch) -> dict:
    from amnet.core.metrics import psnr
    from benchmarks.gpu_check import time_calls

    one = {k: np.ascontiguousarray(feeds[k][:1].repeat(batch, 0)) for k in MODEL_INPUTS}
    row = {"infer": time_calls(lambda: runner.infer(one), batch), "replay": time_calls(runner.replay_only, batch)}
    faces = [runner.infer({k: np.ascontiguousarray(feeds[k][i:i + 1].repeat(batch, 0)) for k in MODEL_INPUTS})
             ["face"][:1] for i in range(len(feeds["source"]))]
    row["psnr_vs_cpu"] = psnr(refs["face"], np.concatenate(faces))
    return row


def run_eager_configs(out: Path, checkpoint: Path, deadline: float) -> dict:
    import torch

    from amnet.checkpoint import load_checkpoint, save_checkpoint
    from amnet.realdata import load_inputs
    from benchmarks.gpu_check import plain_replay
    from runtimes.pytorch_runner import reference_outputs

    model = load_checkpoint(checkpoint).require_full()
    folder = Path(tempfile.mkdtemp(prefix="gpu_options_"))
    weights = save_checkpoint(folder / "w.safetensors", model)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}, "kernels_b1": {}}
    for name, (fields, cls) in configs().items():
        try:
            with cls(write_plan(folder, weights, 128, 1, fields)) as r:
                result["kernels_b1"][name] = kernel_count(r.model, 128)
        except Exception as e:  # noqa: BLE001 - reported, the others go on
            result["kernels_b1"][name] = f"{type(e).__name__}: {first_line(e)}"
    for resolution, batch in CASES:
        feeds = load_inputs("heldout", resolution, SAMPLES)
        feeds.pop("target", None)
        refs = reference_outputs(model, feeds)
        case = result["cases"][f"{resolution}² b{batch}"] = {}
        case["plain FP16 replay"] = plain_replay(model, batch, resolution, feeds)
        for name, (fields, cls) in configs().items():
            if time.time() > deadline:
                case[name] = "skipped: over the time budget"
                continue
            try:
                with cls(write_plan(folder, weights, resolution, batch, fields)) as r:
                    case[name] = measure_runner(r, feeds, refs, batch)
                    plain = case["plain FP16 replay"]
                    case[name]["x_plain"] = case[name]["infer"]["fps"] / plain["fps"]
                    case[name]["replay"]["x_plain"] = case[name]["replay"]["fps"] / plain["replay_only"]["fps"]
            except Exception as e:  # noqa: BLE001
                case[name] = f"{type(e).__name__}: {first_line(e, 300)}"
            torch.cuda.empty_cache()
        write_text(out / "gpu_options.partial.json", json.dumps(result, indent=1, default=float) + "\n")
    return result


def compiled_child(checkpoint: Path, resolution: int, batch: int, result_file: Path) -> None:
    """The compiled FP16 plan (fused heads, elementwise GC, TorchInductor) in a fresh process: compile seconds
    (the runner's load time), speed, PSNR."""

    from amnet.checkpoint import load_checkpoint, save_checkpoint
    from amnet.realdata import load_inputs
    from benchmarks.gpu_check import plain_replay
    from runtimes.pytorch_cuda_runner import TorchCudaRunner
    from runtimes.pytorch_runner import reference_outputs

    model = load_checkpoint(checkpoint).require_full()
    folder = Path(tempfile.mkdtemp(prefix="gpu_compiled_"))
    weights = save_checkpoint(folder / "w.safetensors", model)
    feeds = load_inputs("heldout", resolution, SAMPLES)
    feeds.pop("target", None)
    refs = reference_outputs(model, feeds)
    plan = write_plan(folder, weights, resolution, batch,
                      {"gc_form": "elementwise", "gc_heads": "fused", "compile": "inductor"})
    with TorchCudaRunner(plan) as r:
        row = measure_runner(r, feeds, refs, batch)
        row["compile_s"] = r.load_time
    plain = plain_replay(model, batch, resolution, feeds)
    row["plain"] = plain
    row["x_plain"] = row["infer"]["fps"] / plain["fps"]
    row["replay"]["x_plain"] = row["replay"]["fps"] / plain["replay_only"]["fps"]
    write_text(result_file, json.dumps(row, default=float))


def run_compiled(checkpoint: Path, deadline: float) -> dict:
    rows = {}
    for resolution, batch in CASES:
        left = deadline - time.time()
        if left < 30:
            rows[f"{resolution}² b{batch}"] = "skipped: over the time budget"
            continue
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "row.json"
            cmd = [sys.executable, "-m", "benchmarks.gpu_options", "--child", f"{resolution},{batch},{f}",
                   "--checkpoint", str(checkpoint)]
            try:
                p = subprocess.run(cmd, timeout=left, capture_output=True, text=True)
                rows[f"{resolution}² b{batch}"] = (json.loads(f.read_text()) if f.is_file() else
                                                   f"exit {p.returncode}: {p.stderr.strip()[-600:]}")
            except subprocess.TimeoutExpired:
                rows[f"{resolution}² b{batch}"] = f"not done in the {left:.0f} s left"
    return rows


def markdown(r: dict) -> str:
    lines = [f"# pytorch-cuda options on {r['gpu']} (torch {r['torch']}), FP16", "",
             "CUDA kernels per eager forward at 128² b1: " +
             "; ".join(f"{k}: {v}" for k, v in r["kernels_b1"].items()), "",
             "| case | configuration | infer FPS | × plain | replay FPS | × plain replay | p99 ms | PSNR vs CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for case, rows in r["cases"].items():
        plain = rows["plain FP16 replay"]
        lines.append(f"| {case} | plain FP16 replay | {plain['fps']:.0f} | 1.00 | {plain['replay_only']['fps']:.0f} "
                     f"| 1.00 | {plain['p99_ms']:.2f} | |")
        for name, row in rows.items():
            if name == "plain FP16 replay":
                continue
            if isinstance(row, str):
                lines.append(f"| {case} | {name} | {row} | | | | | |")
                continue
            lines.append(f"| {case} | {name} | {row['infer']['fps']:.0f} | {row['x_plain']:.2f} | "
                         f"{row['replay']['fps']:.0f} | {row['replay']['x_plain']:.2f} | {row['infer']['p99_ms']:.2f} "
                         f"| {row['psnr_vs_cpu']:.1f} |")
    for case, row in r.get("compiled", {}).items():
        if isinstance(row, str):
            lines.append(f"| {case} | torch.compile | {row} | | | | | |")
        else:
            lines.append(f"| {case} | torch.compile (compile {row['compile_s']:.0f} s) | {row['infer']['fps']:.0f} | "
                         f"{row['x_plain']:.2f} | {row['replay']['fps']:.0f} | {row['replay']['x_plain']:.2f} | "
                         f"{row['infer']['p99_ms']:.2f} | {row['psnr_vs_cpu']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="reports/gpu_options", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    ap.add_argument("--budget-s", type=float, default=240, help="stop starting new measurements after this")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd graphs (child processes)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    gpu_check.SECONDS_PER_TIMING = SECONDS_PER_TIMING
    if args.child:
        res, batch, f = args.child.split(",", 2)
        compiled_child(args.checkpoint, int(res), int(batch), Path(f))
        return 0
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_eager_configs(args.out, args.checkpoint, t0 + args.budget_s)
    if args.compile:
        result["compiled"] = run_compiled(args.checkpoint, t0 + args.budget_s)
    result["seconds"] = time.time() - t0
    write_text(args.out / "gpu_options.json", json.dumps(result, indent=1, default=float) + "\n")
    text = markdown(result)
    write_text(args.out / "gpu_options.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
