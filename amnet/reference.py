"""The PyTorch reference, behind the same contract as every runtime runner."""
from __future__ import annotations

import time

import numpy as np
import torch

from amnet.checkpoint import Loaded, load_checkpoint
from amnet.model import AMNet
from runtimes.base import Runner, TensorSpec


class TorchRunner(Runner):
    """Eager PyTorch, FP32, GC in its reference loop form unless told otherwise."""

    name = "pytorch"

    def __init__(self, model: AMNet | Loaded | str, threads: int | None = None, gc_form: str = "loop"):
        super().__init__()
        t = time.perf_counter()
        if isinstance(model, str):
            model = load_checkpoint(model)
        if isinstance(model, Loaded):
            model = model.require_full()
        self.model = model.eval().set_gc_form(gc_form)
        self.metadata = {"audio_delta": model.config.audio_delta, "gc_form": gc_form}
        self.threads = threads
        self.load_time = time.perf_counter() - t
        self.inputs = [TensorSpec("source", (None, 3, None, None)), TensorSpec("audio", (None, 1, 64, 60)),
                       TensorSpec("pose", (None, 3)), TensorSpec("eye", (None, 2))]
        self.outputs = ["face", "landmarks"]

    def _run(self, feeds):
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            face, landmarks = self.model(*(torch.from_numpy(feeds[s.name]) for s in self.inputs))
        return {"face": face.numpy(), "landmarks": landmarks.numpy()}


def reference_outputs(model: AMNet, feeds: dict[str, np.ndarray], batch: int = 8) -> dict[str, np.ndarray]:
    """FP32 PyTorch outputs for a whole input set, in chunks."""
    runner = TorchRunner(model)
    n = len(feeds["source"])
    parts = [runner.infer({k: feeds[k][i:i + batch] for k in ("source", "audio", "pose", "eye")})
             for i in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
