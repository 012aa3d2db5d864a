"""The one contract every runner keeps: numpy in, numpy out.

    with SomeRunner(path, threads=2) as r:
        outputs = r.infer({"source": ..., "audio": ..., "pose": ..., "eye": ...})

A runner knows its inputs' names, shapes (batch may be fixed: a "bucket") and
dtypes; ``check_feeds`` turns a wrong name, shape, dtype or a NaN/Inf into one
InputError that names the input. ``BucketedRunner`` serves any batch from a set
of fixed-batch artifacts by padding up to the nearest bucket and trimming.
Nothing here imports torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from amnet.errors import InputError

@dataclass
class TensorSpec:
    name: str
    shape: tuple  # ints, or None / str for dynamic dims
    dtype: str = "float32"

    @property
    def batch(self) -> int | None:
        b = self.shape[0] if self.shape else None
        return b if isinstance(b, int) and b > 0 else None


def check_feeds(feeds: dict[str, np.ndarray], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Validate and normalise the feed dict against the artifact's inputs."""
    if not isinstance(feeds, dict):
        raise InputError("inputs must be a mapping of name → array")
    wanted = {s.name for s in specs}
    missing, extra = sorted(wanted - set(feeds)), sorted(set(feeds) - wanted)
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}; this model takes {', '.join(sorted(wanted))}"
                         + (f" (got unexpected {', '.join(extra)})" if extra else ""))
    out, batch = {}, None
    for s in specs:
        a = np.asarray(feeds[s.name])
        if a.dtype.kind not in "fiu":
            raise InputError(f"input '{s.name}' has dtype {a.dtype}; expected {s.dtype}")
        if a.dtype != np.float32:
            if a.dtype.kind == "f" and a.dtype.itemsize > 4 or a.dtype.kind in "iu":
                a = a.astype(np.float32)
            else:
                raise InputError(f"input '{s.name}' has dtype {a.dtype}; expected float32")
        if a.ndim != len(s.shape):
            raise InputError(f"input '{s.name}' has shape {a.shape}; expected {len(s.shape)} dims like {_fmt(s.shape)}")
        for got, want in zip(a.shape[1:], s.shape[1:]):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(f"input '{s.name}' has shape {a.shape}; expected {_fmt(s.shape)}")
        if batch is None:
            batch = a.shape[0]
        elif a.shape[0] != batch:
            raise InputError(f"input '{s.name}' has batch {a.shape[0]} but earlier inputs have {batch}")
        if not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise InputError(f"input '{s.name}' holds {bad} NaN/Inf value(s)")
        out[s.name] = np.ascontiguousarray(a)
    if "source" in out:
        h, w = out["source"].shape[-2:]
        if h % 4 or w % 4:
            raise InputError(f"input 'source' is {h}×{w}; H and W must be divisible by 4")
    return out


def _fmt(shape) -> str:
    return "×".join(str(d) if isinstance(d, int) and d > 0 else "N" if i == 0 else "?" for i, d in enumerate(shape))


class Runner:
    """Base class: subclasses set ``name``, ``inputs``, ``outputs`` and implement ``_run``."""

    name = "base"
    precision = "fp32"

    def __init__(self):
        self.inputs: list[TensorSpec] = []
        self.outputs: list[str] = []
        self.inference_time: float | None = None  # seconds of the last infer()
        self.load_time: float | None = None  # seconds to load and compile

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = check_feeds(feeds, self.inputs)
        fixed = self.inputs[0].batch
        n = next(iter(feeds.values())).shape[0]
        if fixed is not None and n != fixed:
            raise InputError(f"this artifact was built for batch {fixed}, got {n} "
                             "(use the bucket set, which pads and trims, or export that batch)")
        t = time.perf_counter()
        out = self._run(feeds)
        self.inference_time = time.perf_counter() - t
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BucketedRunner(Runner):
    """Any batch from fixed-batch runners: pad up to the nearest bucket, trim the result."""

    def __init__(self, runners: dict[int, Runner]):
        super().__init__()
        if not runners:
            raise InputError("no batch buckets to run")
        self.runners = dict(sorted(runners.items()))
        first = next(iter(self.runners.values()))
        self.name, self.precision = first.name, first.precision
        self.inputs = [TensorSpec(s.name, (None, *s.shape[1:]), s.dtype) for s in first.inputs]
        self.outputs = first.outputs
        self.load_time = sum(r.load_time or 0 for r in self.runners.values())

    def bucket_for(self, n: int) -> int:
        return next((b for b in self.runners if b >= n), max(self.runners))

    def _run(self, feeds):
        n = next(iter(feeds.values())).shape[0]
        parts = []
        start = 0
        while start < n:
            b = self.bucket_for(n - start)
            take = min(b, n - start)
            chunk = {k: v[start:start + take] for k, v in feeds.items()}
            if take < b:  # pad by repeating the last sample; its outputs are dropped
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], b - take, 0)]) for k, v in chunk.items()}
            out = self.runners[b]._run(chunk)
            parts.append({k: v[:take] for k, v in out.items()})
            start += take
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self):
        for r in self.runners.values():
            r.close()
