"""The pytorch-cuda backend's builder: the weights once per folder, and one CUDA plan per batch bucket and precision.

Built from the checkpoint, not from ONNX: the runner replays the PyTorch model
itself. The plan fixes what a CUDA graph fixes (batch, resolution) and how the
model runs (precision, GC form, memory format); the graph is captured when the
runner activates, on the GPU that runs it.
"""
from __future__ import annotations

import json
from pathlib import Path

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from amnet.core.errors import RuntimeMissing
from amnet.core.fileio import file_sha256, tool_versions, write_text
from amnet.core.progress import progress_bar
from runtimes.pytorch_cuda_runner import PLAN_FORMAT, cuda_torch

WEIGHTS = "amnet_weights.safetensors"


def plan_name(batch: int, resolution: int, precision: str) -> str:
    return f"amnet_full_b{batch}_r{resolution}_cuda_{precision}.cudaplan"


def build(checkpoint: Path, out_dir: Path, opts) -> dict:
    torch = cuda_torch()  # one line, exit 2, on a machine without CUDA
    from amnet.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(checkpoint)
    model = loaded.require_full()
    gpu = torch.cuda.get_device_name()
    with Stage(out_dir) as stage:
        weights = save_checkpoint(stage.path(WEIGHTS), model)
        stage.add({"name": WEIGHTS, "runtime": "pytorch", "part": "weights", "precision": "fp32",
                   "source_sha256": loaded.sha256}, [weights])
        sha = file_sha256(weights)
        if Precision.BF16 in opts.precisions and not torch.cuda.is_bf16_supported():
            raise RuntimeMissing(f"{gpu} has no BF16: build fp32,fp16")
        jobs = [(b, p) for b in opts.batches for p in opts.precisions]
        for batch, precision in progress_bar(jobs, desc="pytorch-cuda", disable=not opts.progress, unit="plan"):
            plan = {"format": PLAN_FORMAT, "weights": WEIGHTS, "weights_sha256": sha, "precision": str(precision),
                    "batch": batch, "resolution": opts.resolution,
                    # Measured on an H200 (docs/gpu-check/): the grouped GC in NCHW beat the elementwise GC in
                    # NHWC at every batch (0.35-0.96× of it): InstanceNorm and the depthwise GC conv are slow in NHWC.
                    "gc_form": "grouped", "channels_last": False,
                    "built_on": gpu, "torch": torch.__version__, "audio_delta": model.config.audio_delta}
            name = plan_name(batch, opts.resolution, str(precision))
            pending = write_text(stage.path(name), json.dumps(plan, indent=1) + "\n")
            stage.add({"name": name, "runtime": "pytorch-cuda", "part": "full", "gc_form": plan["gc_form"],
                       "batch": batch, "resolution": opts.resolution, "precision": str(precision),
                       "audio_delta": plan["audio_delta"], "from": loaded.path.name}, [pending])
        return artifacts.publish(stage, {"source_checkpoint": loaded.path.name, "source_sha256": loaded.sha256,
                                         "versions": tool_versions("torch")})
