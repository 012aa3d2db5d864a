"""The one contract every runner keeps: numpy in, numpy out.

    with SomeRunner(path, threads=2) as r:          # construction is cheap; `with` activates
        outputs = r.infer({"source": ..., "audio": ..., "pose": ..., "eye": ...})

Like Polygraphy's runners: ``__init__`` only records what to load; ``activate``
loads and compiles (``load_time``), ``close`` frees, and ``infer`` before
``activate`` is an error. Every runner takes the same keywords: the artifact
path, ``threads`` and ``precision``, plus the options its backend declares.

``check_feeds`` turns a wrong name, shape or dtype, an empty batch or a NaN/Inf
into one InputError that names the input; ``check_outputs`` does the same for
NaN/Inf in what a model returned. ``BucketedRunner`` serves any batch from
fixed-batch artifacts; ``run_in_chunks`` runs a whole input set in bounded memory.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amnet.core.errors import AmnetError, ArtifactError, InputError, first_line

MODEL_INPUTS = ("source", "audio", "pose", "eye")

# Values outside these ranges are warned about (not refused): they are legal floats, but no
# real drive signal looks like that, and they are how NaN outputs start.
SANE_RANGE = {"source": (-1.0, 1.0), "audio": (-1e4, 1e4), "pose": (-3.5, 3.5), "eye": (0.0, 1.0),
              "f_geo": (-1e3, 1e3)}


class InputWarning(UserWarning):
    """An input that is legal but outside the range real drive signals have."""


@dataclass
class TensorSpec:
    name: str
    shape: tuple  # ints, or None / str for dynamic dims
    dtype: str = "float32"

    @property
    def batch(self) -> int | None:
        b = self.shape[0] if self.shape else None
        return b if isinstance(b, int) and b > 0 else None


def check_threads(threads: int | None) -> int | None:
    """None (the runtime's default) or 1 … the number of cores."""
    if threads is None:
        return None
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise InputError(f"threads must be between 1 and the {cores} cores of this machine, got {threads}")
    return threads


def check_values(name: str, amin: float, amax: float, bad: int | None = None) -> None:
    """NaN/Inf (which show up in the min or max) is an InputError; a value outside SANE_RANGE is a warning."""
    if not (np.isfinite(amin) and np.isfinite(amax)):
        raise InputError(f"input '{name}' holds {bad if bad is not None else 'some'} NaN/Inf value(s)")
    lo, hi = SANE_RANGE.get(name, (-np.inf, np.inf))
    if amin < lo - 1e-3 or amax > hi + 1e-3:
        warnings.warn(f"input '{name}' spans [{amin:.4g}, {amax:.4g}], outside the expected "
                      f"[{lo:g}, {hi:g}]: outputs may be meaningless", InputWarning, stacklevel=4)


def check_feeds(feeds: dict[str, np.ndarray], specs: list[TensorSpec], values: bool = True) -> dict[str, np.ndarray]:
    """Validate and normalise the feed dict against the artifact's inputs.

    Float inputs of other widths become float32. Integer arrays are refused, not
    converted: a uint8 image in [0, 255] is not the [-1, 1] float the model takes,
    and guessing the scale would hide the mistake. ``values=False`` leaves the
    NaN/range scan to a runner that does it on its device (`check_values`).
    """
    if not isinstance(feeds, dict):
        raise InputError("inputs must be a mapping of name → array")
    if not specs:
        raise ArtifactError("this model declares no inputs")
    wanted = {s.name for s in specs}
    missing, extra = sorted(wanted - set(feeds)), sorted(set(feeds) - wanted)
    if missing:
        raise InputError(f"missing input(s) {', '.join(missing)}; this model takes {', '.join(sorted(wanted))}"
                         + (f" (got unexpected {', '.join(extra)})" if extra else ""))
    out, batch = {}, None
    for s in specs:
        a = np.asarray(feeds[s.name])
        if a.dtype.kind in "iub":
            hint = " (images: x / 127.5 − 1)" if s.name == "source" else ""
            raise InputError(f"input '{s.name}' has integer dtype {a.dtype}; pass float32{hint}")
        if a.dtype.kind != "f":
            raise InputError(f"input '{s.name}' has dtype {a.dtype}; expected {s.dtype}")
        a = a.astype(np.float32, copy=False)
        if a.ndim != len(s.shape):
            raise InputError(f"input '{s.name}' has shape {a.shape}; expected {len(s.shape)} dims like {_fmt(s.shape)}")
        for got, want in zip(a.shape[1:], s.shape[1:]):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(f"input '{s.name}' has shape {a.shape}; expected {_fmt(s.shape)}")
        if a.shape[0] == 0:
            raise InputError(f"input '{s.name}' holds no samples (batch 0)")
        if a.size == 0:
            raise InputError(f"input '{s.name}' has shape {a.shape}: no values")
        if batch is None:
            batch = a.shape[0]
        elif a.shape[0] != batch:
            raise InputError(f"input '{s.name}' has batch {a.shape[0]} but earlier inputs have {batch}")
        if values:
            amin, amax = a.min(), a.max()  # two passes: NaN and ±Inf show up in these, no third pass needed
            bad = None if np.isfinite(amin) and np.isfinite(amax) else int(np.size(a) - np.isfinite(a).sum())
            check_values(s.name, amin, amax, bad)
        out[s.name] = np.ascontiguousarray(a)
    if "source" in out:
        h, w = out["source"].shape[-2:]
        if h % 4 or w % 4:
            raise InputError(f"input 'source' is {h}×{w}; H and W must be divisible by 4")
    return out


def check_outputs(outputs: dict[str, np.ndarray], who: str) -> dict[str, np.ndarray]:
    """NaN/Inf in a model's output is an error, never a result."""
    for name, v in outputs.items():
        bad = int(np.size(v) - np.isfinite(v).sum())
        if bad:
            raise ArtifactError(f"{who} produced {bad} NaN/Inf value(s) in '{name}' "
                                "(inputs far outside their range, or broken weights)")
    return outputs


def _fmt(shape) -> str:
    return "×".join(str(d) if isinstance(d, int) and d > 0 else "N" if i == 0 else "?" for i, d in enumerate(shape))


class Runner:
    """Base class: subclasses set ``name`` and implement ``_activate``, ``_run`` (and ``_close``)."""

    name = "base"
    checks_values_on_device = False  # True: the runner scans inputs for NaN/range itself (check_values)

    def __init__(self, path: str | os.PathLike | None = None, *, threads: int | None = None,
                 precision: str | None = None):
        self.path = Path(path) if path is not None else None
        self.threads = check_threads(threads)
        self.precision = precision or "fp32"
        self.inputs: list[TensorSpec] = []
        self.outputs: list[str] = []
        self.metadata: dict = {}
        self.inference_time: float | None = None  # seconds of the last infer()
        self.load_time: float | None = None  # seconds to load and compile
        self.is_active = False

    # -- lifecycle
    def activate(self) -> "Runner":
        if not self.is_active:
            t = time.perf_counter()
            self.inputs, self.outputs = [], []  # filled by _activate, afresh each time
            try:
                self._activate()
            except BaseException:
                self._close()  # free whatever was allocated before the failure
                raise
            self.load_time = time.perf_counter() - t
            self.is_active = True
        return self

    def close(self) -> None:
        if self.is_active:
            self.is_active = False
            self._close()

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.close()

    def _activate(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- inference
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise AmnetError(f"{type(self).__name__} used before activate() (use it in a `with` block)")
        feeds = check_feeds(feeds, self.inputs, values=not self.checks_values_on_device)
        fixed = self.inputs[0].batch
        n = next(iter(feeds.values())).shape[0]
        if fixed is not None and n != fixed:
            raise InputError(f"this artifact was built for batch {fixed}, got {n} "
                             "(use the bucket set, which pads and trims, or export that batch)")
        t = time.perf_counter()
        try:
            out = self._run(feeds)
        except AmnetError:
            raise
        except Exception as e:  # noqa: BLE001 - the runtime's own failure (out of memory, a bad kernel ...)
            text = first_line(e)
            raise ArtifactError(f"{self.name} failed to run {self.path.name if self.path else 'the model'}: "
                                f"{text}") from None
        self.inference_time = time.perf_counter() - t
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class BucketedRunner(Runner):
    """Any batch from fixed-batch runners: pad up to the nearest bucket, trim the result."""

    def __init__(self, runners: dict[int, Runner]):
        if not runners:
            raise InputError("no batch buckets to run")
        self.runners = dict(sorted(runners.items()))
        first = next(iter(self.runners.values()))
        super().__init__(first.path, threads=first.threads, precision=first.precision)
        self.name = first.name

    def _activate(self):
        for r in self.runners.values():
            r.activate()
        first = next(iter(self.runners.values()))
        self.inputs = [TensorSpec(s.name, (None, *s.shape[1:]), s.dtype) for s in first.inputs]
        self.outputs, self.metadata = first.outputs, first.metadata

    def bucket_for(self, n: int) -> int:
        return next((b for b in self.runners if b >= n), max(self.runners))

    def _run(self, feeds):
        return run_in_chunks(lambda chunk: self.runners[len(next(iter(chunk.values())))]._run(chunk), feeds,
                             lambda remaining: self.bucket_for(remaining), pad=True)

    def _close(self):
        for r in self.runners.values():
            r.close()


def run_in_flight(infer_many, feeds: dict[str, np.ndarray], size: int, pad: bool = False) -> dict[str, np.ndarray]:
    """`run_in_chunks` with every chunk handed over at once (a runner's `infer_many`: throughput mode), outputs in
    input order; with ``pad`` the last chunk is padded as `run_in_chunks` pads it."""
    n = len(next(iter(feeds.values()))) if feeds else 0
    if n == 0:
        raise InputError("the inputs hold no samples (batch 0)")
    parts = []
    for lo in range(0, n, size):
        part = {k: v[lo:lo + size] for k, v in feeds.items()}
        if pad and n - lo < size:
            part = {k: np.concatenate([v, np.repeat(v[-1:], size - len(v), 0)]) for k, v in part.items()}
        parts.append(part)
    outs = infer_many(parts)
    return {k: np.concatenate([o[k] for o in outs])[:n] for k in outs[0]}


def run_in_chunks(run, feeds: dict[str, np.ndarray], chunk, pad: bool = False) -> dict[str, np.ndarray]:
    """Run a whole input set `chunk` samples at a time, into preallocated outputs (bounded memory).

    ``chunk`` is an int or a function of the samples remaining; with ``pad`` the
    last chunk is padded to full size by repeating its last sample, whose outputs
    are dropped (fixed-batch artifacts).
    """
    n = len(next(iter(feeds.values()))) if feeds else 0
    if n == 0:
        raise InputError("the inputs hold no samples (batch 0)")
    out: dict[str, np.ndarray] = {}
    start = 0
    while start < n:
        size = chunk(n - start) if callable(chunk) else chunk
        take = min(size, n - start)
        part = {k: v[start:start + take] for k, v in feeds.items()}
        if pad and take < size:
            part = {k: np.concatenate([v, np.repeat(v[-1:], size - take, 0)]) for k, v in part.items()}
        result = run(part)
        for k, v in result.items():
            if k not in out:
                out[k] = np.empty((n, *v.shape[1:]), v.dtype)
            out[k][start:start + take] = v[:take]
        start += take
    return out
