"""ExecuTorch runner: a `.pte` program (lowered to XNNPACK by `export.executorch_build`) on `executorch.runtime`.

ExecuTorch's Python runtime takes and returns torch tensors (the package needs torch at run time), so this is
the one runner besides PyTorch's that imports torch; the program itself runs on ExecuTorch's kernels. Inputs
are positional (source, audio, pose, eye), as traced; what the file was built from is read from the manifest.
"""
from __future__ import annotations

import logging

import numpy as np

from amnet.core import artifacts
from amnet.core.errors import ArtifactError, first_line
from amnet.core.fileio import lazy_import
from amnet.core.runner import MODEL_INPUTS, Runner, TensorSpec

HINT = "pip install 'amnet-deploy[mobile]' (executorch)"
OUTPUT_NAMES = ("face", "landmarks")


class ExecuTorchRunner(Runner):
    name = "executorch"

    def _activate(self):
        for noisy in ("torchao", "torch.utils._pytree"):  # their import-time notices are not this command's output
            logging.getLogger(noisy).setLevel(logging.ERROR)
        runtime = lazy_import("executorch.runtime", HINT, None, "executorch")
        import torch

        self.torch = torch
        if not self.path.is_file():
            raise ArtifactError(f"ExecuTorch program not found: {self.path}")
        if self.threads:  # XNNPACK's kernels run on ExecuTorch's one process-wide thread pool
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(self.threads)
        try:
            program = runtime.Runtime.get().load_program(self.path, verification=runtime.Verification.InternalConsistency)
            self.method = program.load_method("forward")
            meta = self.method.metadata
            shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
            outputs = meta.num_outputs()
        except Exception as e:  # noqa: BLE001 - RuntimeError "Failed to load program, error: 0x.."
            raise ArtifactError(f"{self.path.name} is not a loadable ExecuTorch program: {first_line(e)}") from None
        if len(shapes) != len(MODEL_INPUTS) or outputs != len(OUTPUT_NAMES):
            raise ArtifactError(f"{self.path.name} takes {len(shapes)} inputs and gives {outputs} outputs, not the "
                                f"model's {len(MODEL_INPUTS)} and {len(OUTPUT_NAMES)}")
        self.inputs = [TensorSpec(n, s) for n, s in zip(MODEL_INPUTS, shapes)]
        self.outputs = list(OUTPUT_NAMES)
        found = artifacts.entry_for(self.path)
        entry = found[1] if found else {}
        self.metadata = {k: entry[k] for k in ("audio_delta", "gc_form", "precision") if k in entry}

    def _run(self, feeds):
        out = self.method.execute([self.torch.from_numpy(feeds[s.name]) for s in self.inputs])
        return {name: np.array(o.numpy()) for name, o in zip(OUTPUT_NAMES, out)}  # a copy: the outputs are reused

    def _close(self):
        self.method = None
