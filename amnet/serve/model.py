"""The replica's model: any built runtime through `runtimes.registry.open_runner`, threads pinned, warmed up."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from amnet.core.errors import InputError
from amnet.core.runner import MODEL_INPUTS


def open_model(model: str, runtime: str | None = None, precision: str | None = None, threads: int | None = None,
               verify: bool = True, max_batch: int = 4, warm: bool = True):
    """(active runner, resolution, largest batch one call takes). An export folder is its batch buckets; a
    fixed-batch file takes that batch; a dynamic one up to ``max_batch``. Every batch size it will meet runs
    once here: runtimes compile lazily, and a live stream must not pay that."""
    from amnet.reenact.run import model_resolution
    from runtimes.registry import open_runner

    if not Path(model).exists():
        raise InputError(f"model not found: {model}")
    runner = open_runner(model, threads=threads, precision=precision, runtime=runtime, verify=verify)
    try:
        runner.activate()
        names = {s.name for s in runner.inputs}
        if not set(MODEL_INPUTS) <= names:
            raise InputError(f"{model} takes {', '.join(sorted(names))}: serve needs a full model "
                             f"({', '.join(MODEL_INPUTS)} → face)")
        resolution = model_resolution(runner, None)
        buckets = sorted(getattr(runner, "runners", {}) or [runner.inputs[0].batch or max_batch])
        if warm:
            for b in buckets:
                runner.infer(blank_feeds(b, resolution))
        return runner, resolution, max(buckets)
    except BaseException:
        runner.close()
        raise


def blank_feeds(n: int, resolution: int) -> dict[str, np.ndarray]:
    return {"source": np.zeros((n, 3, resolution, resolution), np.float32),
            "audio": np.zeros((n, 1, 64, 60), np.float32), "pose": np.zeros((n, 3), np.float32),
            "eye": np.full((n, 2), 0.3, np.float32)}
