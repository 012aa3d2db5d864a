"""PyTorch on an NVIDIA GPU: one CUDA graph per batch bucket, FP32 (TF32 off), FP16 or BF16, pinned host buffers.

At batch 1 eager PyTorch on a GPU is launch-bound (hundreds of small kernels
per frame); replaying a captured CUDA graph removes that overhead. A graph
fixes every shape, so each batch bucket is its own artifact: a small JSON plan
(``.cudaplan``: precision, batch, resolution, memory format, GC form, whether
the GC weight MLPs are fused, whether TorchInductor compiles the model) that
names the weights, a checkpoint published once per build folder.

FP32 runs with TF32 off (PyTorch enables it for cuDNN convolutions, which moves
outputs by ~3e-3 and would miss the 1e-4 FP32 gate). The builder's choices and
their measurements are in export/pytorch_cuda_build.py. `gpu_reference` is the
parity reference on the GPU: eager, FP32, loop GC, TF32 off, deterministic cuDNN algorithms.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from amnet.core import artifacts
from amnet.core.errors import ArtifactError, IntegrityError, RuntimeMissing
from amnet.core.fileio import file_sha256, lazy_import
from amnet.core.runner import MODEL_INPUTS, Runner, TensorSpec, check_values

PLAN_FORMAT = "amnet-cuda-plan/1"
HINT = "pytorch-cuda needs a CUDA build of torch and an NVIDIA GPU (pip install torch from the CUDA index)"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
WARMUP = 3


def cuda_torch():
    """torch with a usable CUDA device, or one RuntimeMissing line saying which part is missing."""
    torch = lazy_import("torch", HINT, "2.6")
    if not torch.cuda.is_available():
        why = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
        raise RuntimeMissing(f"pytorch-cuda cannot run here ({why}, torch {torch.__version__}): {HINT}")
    return torch


def has_triton() -> bool:
    """Triton importable and able to run on this GPU (compute capability 7.0 or newer)."""
    from torch.utils._triton import has_triton as torch_has_triton  # in every torch this project allows (≥ 2.6)

    return torch_has_triton()


def missing_cuda() -> str | None:
    try:
        cuda_torch()
    except RuntimeMissing as e:
        return str(e)
    return None


def read_plan(path: Path) -> dict:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{Path(path).name} is not a readable CUDA plan") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ArtifactError(f"{Path(path).name} is not an {PLAN_FORMAT} file")
    bad = [k for k in ("batch", "resolution") if not isinstance(plan.get(k), int) or plan[k] < 1]
    if plan.get("precision") not in DTYPES or bad or not isinstance(plan.get("weights"), str):
        raise ArtifactError(f"{Path(path).name}: malformed plan ({', '.join(bad) or 'precision/weights'})")
    for key, allowed in (("gc_heads", ("fused", "per-gc")), ("compile", ("inductor", "eager"))):
        if plan.get(key, allowed[-1]) not in allowed:
            raise ArtifactError(f"{Path(path).name}: {key} must be one of {', '.join(allowed)}, got {plan[key]!r}")
    return plan


def gpu_reference(model, feeds: dict[str, np.ndarray], chunk: int = 8) -> dict[str, np.ndarray]:
    """FP32 outputs on the GPU with TF32 off and deterministic cuDNN: the reference GPU variants are judged by."""
    from amnet.core.runner import run_in_chunks

    torch = cuda_torch()
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
           torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    gpu = model.to("cuda").float().eval()
    try:
        def forward(part):
            with torch.inference_mode(), gpu.gc_form("loop"):
                face, lm = gpu(*(torch.from_numpy(part[k]).cuda() for k in MODEL_INPUTS))
            return {"face": face.float().cpu().numpy(), "landmarks": lm.float().cpu().numpy()}

        return run_in_chunks(forward, {k: feeds[k] for k in MODEL_INPUTS}, chunk)
    finally:
        model.to("cpu")
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = old


class TorchCudaRunner(Runner):
    """Inputs are scanned for NaN/Inf and range inside the captured graph (min and max of each, copied back
    with the outputs), so the host does not read every input twice more before the GPU sees it. Outputs are
    numpy views of pinned host memory from PyTorch's cache (blocks rounded up to a power of two): an array, or
    a slice of one, kept alive keeps its block pinned; blocks no longer held go back to the OS at close()."""

    name = "pytorch-cuda"
    checks_values_on_device = True

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None, graph: bool = True):
        super().__init__(path, threads=threads, precision=precision)
        self.graph = graph  # False: eager, for comparison

    def _activate(self):
        torch = cuda_torch()
        from amnet.checkpoint import load_checkpoint

        plan = read_plan(self.path)
        weights = artifacts.resolve(self.path.parent / plan["weights"])
        if not weights.is_file():
            raise ArtifactError(f"{self.path.name} names weights {plan['weights']}, which are not beside it")
        if plan.get("weights_sha256") and file_sha256(weights) != plan["weights_sha256"]:
            raise IntegrityError(f"{weights.name} is not the checkpoint {self.path.name} was planned with")
        self.plan, self.precision = plan, plan["precision"]
        dtype = getattr(torch, DTYPES[plan["precision"]])
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        loaded = load_checkpoint(weights, gc_form=plan["gc_form"])
        b, r = plan["batch"], plan["resolution"]
        shapes = {"source": (b, 3, r, r), "audio": (b, 1, 64, 60), "pose": (b, 3), "eye": (b, 2)}
        self.torch = torch
        self.static_in = {k: torch.zeros(s, device="cuda") for k, s in shapes.items()}
        self.host_in = {k: torch.zeros(s, pin_memory=True) for k, s in shapes.items()}
        memory = torch.channels_last if plan.get("channels_last") else torch.contiguous_format
        model = self._prepare(loaded.require_full().to("cuda", dtype).eval().to(memory_format=memory), plan)
        self.metadata = {"audio_delta": loaded.config.audio_delta, "gc_form": plan["gc_form"], "gpu":
                         torch.cuda.get_device_name(), "precision": plan["precision"],
                         "compile": plan.get("compile") or "eager", "gc_heads": plan.get("gc_heads") or "per-gc"}
        self.inputs = [TensorSpec(k, shapes[k]) for k in MODEL_INPUTS]
        self.outputs = ["face", "landmarks"]

        def forward():
            # min and max of every input, before any cast: NaN and Inf show up in them
            spans = torch.stack([torch.stack(torch.aminmax(self.static_in[k])) for k in MODEL_INPUTS])
            x = {k: v.to(dtype) for k, v in self.static_in.items()}
            x["source"] = x["source"].contiguous(memory_format=memory)
            with torch.inference_mode():
                face, landmarks = model(*(x[k] for k in MODEL_INPUTS))
            return {"face": face.float(), "landmarks": landmarks.float(), "_range": spans}

        self.model, self.forward = model, forward
        self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(WARMUP):  # cuDNN autotuning and lazy allocations happen before capture
                self.static_out = forward()
        torch.cuda.current_stream().wait_stream(self.stream)
        self.cuda_graph = None
        if self.graph:
            self.cuda_graph = torch.cuda.CUDAGraph()
            # A compiled plan that recompiled here would compile inside the capture: fail loudly instead.
            strict = (torch._dynamo.config.patch(error_on_recompile=True) if plan.get("compile") == "inductor"
                      else contextlib.nullcontext())
            with strict, torch.cuda.graph(self.cuda_graph, stream=self.stream):
                self.static_out = forward()
        torch.cuda.synchronize()

    def _prepare(self, model, plan: dict):
        """The model as the plan runs it: the nine GCs' weight MLPs in two kernels (``gc_heads: fused``), and
        compiled by TorchInductor (``compile: inductor``: fused Triton kernels, compiled by the first warm-up
        call, before the graph is captured; tens of seconds, once per plan shape and process)."""
        torch = self.torch
        if plan.get("gc_heads") == "fused":
            model.reenactor.fuse_gc_heads()
        if plan.get("compile") == "inductor":
            if not has_triton():
                raise RuntimeMissing(f"{self.path.name} is compiled with TorchInductor, which needs Triton and a GPU "
                                     "it supports here (pip install triton), or rebuild the plan here (eager)")
            config = torch._dynamo.config  # each plan adds one static shape of AMNet.forward to its cache
            limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, limit, max(getattr(config, limit), 64))
            model = torch.compile(model, fullgraph=True, dynamic=False)
        return model

    def _run(self, feeds):
        torch = self.torch
        # Outputs go straight into fresh pinned tensors (PyTorch caches them) returned as numpy views: one copy
        # and no page faults, 0.82 → 0.95 of a plain replay at 256² b64 on an H100 (docs/gpu-check/h100-options).
        out = {k: torch.empty(v.shape, pin_memory=True) for k, v in self.static_out.items()}
        with torch.cuda.stream(self.stream):
            for k, v in feeds.items():
                self.host_in[k].copy_(torch.from_numpy(v))  # torch's host copy is multi-threaded, numpy's is not
                self.static_in[k].copy_(self.host_in[k], non_blocking=True)
            if self.cuda_graph is not None:
                self.cuda_graph.replay()
            else:
                self.static_out = self.forward()
            for k, v in self.static_out.items():
                out[k].copy_(v, non_blocking=True)
        self.stream.synchronize()
        return self._checked(out)

    @staticmethod
    def _checked(out: dict) -> dict[str, np.ndarray]:
        """The outputs copied back, once the input ranges scanned on the device pass `check_values`."""
        for k, (amin, amax) in zip(MODEL_INPUTS, out["_range"].numpy()):
            check_values(k, float(amin), float(amax))
        return {k: v.numpy() for k, v in out.items() if not k.startswith("_")}

    def replay_only(self) -> None:
        """One graph replay and a sync, no host copies: the device time, for the benchmark to set beside infer()."""
        with self.torch.cuda.stream(self.stream):
            self.cuda_graph.replay()
        self.stream.synchronize()

    def _close(self):
        torch = getattr(self, "torch", None)
        self.cuda_graph = self.model = self.forward = self.stream = None
        self.static_in = self.static_out = self.host_in = None
        if torch is not None:
            torch.cuda.empty_cache()
            getattr(torch._C, "_host_emptyCache", lambda: None)()  # pinned output blocks no array still holds

    @property
    def compute_precision(self) -> str:
        return DTYPES[self.precision]

    def device_stats(self) -> dict:
        """For the bench row: which GPU, and its peak memory so far in this process."""
        return {"gpu": self.metadata["gpu"], "gpu_memory_mb": round(self.torch.cuda.max_memory_allocated() / 2 ** 20, 1)}
