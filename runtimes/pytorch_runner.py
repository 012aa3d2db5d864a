"""The PyTorch reference, behind the same contract as every runtime runner (the one runner that imports torch)."""
from __future__ import annotations

import numpy as np

from amnet.core.runner import Runner, TensorSpec, run_in_chunks

REFERENCE_CHUNK = 8  # samples per forward pass: bounded memory for any N


class TorchRunner(Runner):
    """Eager PyTorch, FP32, GC in its reference loop form unless told otherwise.

    ``path`` may also be an already loaded ``AMNet`` (or ``Loaded``): the runner
    never changes it, it runs it inside ``model.gc_form(...)``.
    """

    name = "pytorch"

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None, gc_form: str = "loop"):
        from amnet.core.errors import InputError
        from amnet.model import GC_FORMS

        self._given = None if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__") else path
        super().__init__(None if self._given is not None else path, threads=threads, precision=precision or "fp32")
        if precision not in (None, "fp32"):  # eager PyTorch on the CPU runs the checkpoint as it is
            raise InputError(f"a checkpoint runs in fp32 on PyTorch, not {precision}: build a {precision} variant")
        if gc_form not in GC_FORMS:
            raise InputError(f"unknown GC form {gc_form!r}; choose one of {', '.join(GC_FORMS)}")
        self.gc_form = gc_form

    def _activate(self):
        import torch

        from amnet.checkpoint import Loaded, load_checkpoint

        model = self._given if self._given is not None else load_checkpoint(self.path)
        if isinstance(model, Loaded):
            model = model.require_full()
        self.model = model.eval()
        self.metadata = {"audio_delta": model.config.audio_delta, "gc_form": self.gc_form}
        if self.threads:
            torch.set_num_threads(self.threads)
        self.inputs = [TensorSpec("source", (None, 3, None, None)), TensorSpec("audio", (None, 1, 64, 60)),
                       TensorSpec("pose", (None, 3)), TensorSpec("eye", (None, 2))]
        self.outputs = ["face", "landmarks"]

    def _run(self, feeds):
        import torch

        def forward(chunk):
            with torch.inference_mode(), self.model.gc_form(self.gc_form):
                face, landmarks = self.model(*(torch.from_numpy(chunk[s.name]) for s in self.inputs))
            return {"face": face.numpy(), "landmarks": landmarks.numpy()}

        return run_in_chunks(forward, feeds, REFERENCE_CHUNK)

    def _close(self):
        self.model = None


def reference_outputs(model, feeds: dict[str, np.ndarray], gc_form: str = "loop") -> dict[str, np.ndarray]:
    """FP32 PyTorch outputs (loop GC unless told) for a whole input set, in bounded-memory chunks."""
    from amnet.core.runner import MODEL_INPUTS

    with TorchRunner(model, gc_form=gc_form) as runner:
        return runner.infer({k: feeds[k] for k in MODEL_INPUTS})
