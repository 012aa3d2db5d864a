r"""What stays float in every INT8 variant (OpenVINO via NNCF, and the Q/DQ ONNX for TensorRT), and why.

One rule, measured on the trained model at 256² (held-out faces, INT8 vs FP32,
one layer in INT8 at a time): the layers that suffer are the ones whose input
is a GC output. GC scales every channel by a weight predicted per sample
(across channels these span ~200:1 for the same sample), and one per-tensor
INT8 scale cannot hold that: such a conv alone in INT8 costs 40–51 dB PSNR,
while any other conv alone stays at 50–60 dB. The same holds for the residual
Add that sums a GC output, and for InstanceNorm (MVN) inputs, whose per-channel
offsets a per-tensor scale flattens: quantizing those as well took the whole
model from 41 to 29 dB.

So float: the GC convs and their weight/bias MLPs (their "weights" are
activations), the fuser (tiny, and it drives every GC), the convs that read a
GC output (the first conv of cells 1–8 and the first decoder conv), and the
last, image-facing conv. INT8: the encoder, cell 0, the second conv of each
residual cell, the inverted-residual projections and the second decoder conv.

A scope file's patterns are a safe subset of Python regexes, so that no pattern can make matching take
exponential time (``([a-z]+)+!`` would hang a build on one node name): literal text, escapes of punctuation
and ``\d \w \s`` (and their capitals), ``.``, character classes ``[...]``, groups ``(...)`` / ``(?:...)`` with
``|``; a repeat (``* + ? {m,n}``) only right after one character, escape or class, never after a group or
another repeat, and at most MAX_REPEATS of them in a pattern. No backreferences, lookarounds, named
groups or inline flags.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from amnet.core.errors import InputError
from amnet.core.fileio import read_json

# Node-name fragments as the TorchScript ONNX exporter writes them (OpenVINO keeps them as friendly names).
GC_PATH = r"/(?:gcs\.\d+|gc_heads)/"  # the GC modules, and their MLPs as exported (fused: one GCHeads)
FUSER = r"/fuser/"
GC_READERS = (r"/cells\.[1-5]/body/body\.0/", r"/cells\.[6-8]/", r"/decoder/decoder\.0/")
IMAGE_OUT = r"/decoder/decoder\.6/"  # the last conv writes pixels: its input noise lands on the face directly

FLOAT_FRAGMENTS = (GC_PATH, FUSER, *GC_READERS, IMAGE_OUT)
FLOAT_NODES = re.compile("|".join(f"(?:{f})" for f in FLOAT_FRAGMENTS))

# Op types NNCF would otherwise quantize on the OpenVINO model: the residual Add and InstanceNorm's MVN.
FLOAT_OP_TYPES = ("Add", "MVN")


ALWAYS_FLOAT = (GC_PATH, FUSER)  # what a generated scope keeps float whatever it measured: not plain convs


@dataclass(frozen=True)
class Scope:
    """What an INT8 build keeps float: node-name fragments (regexes) and op types."""

    fragments: tuple[str, ...] = FLOAT_FRAGMENTS
    op_types: tuple[str, ...] = FLOAT_OP_TYPES
    source: str = "export/int8_scope.py"
    smooth_gc: float | None = None  # measured on an export made with `--smooth-gc α`: only valid for such exports

    @property
    def nodes(self) -> re.Pattern:
        return re.compile("|".join(f"(?:{f})" for f in self.fragments))

    def nncf_patterns(self) -> list[str]:
        """The same rule as NNCF IgnoredScope patterns (matched against whole node names)."""
        return [f".*{f}.*" for f in self.fragments]

    def describe(self) -> str:
        if self.fragments == FLOAT_FRAGMENTS:
            return "GC path, fuser, convs reading a GC output, last conv; residual Add and InstanceNorm inputs"
        return f"{self.source}: {len(self.fragments)} node patterns, op types {', '.join(self.op_types)}"


SCOPE_FORMAT = "amnet-int8-scope/1"
SCOPES_DIR = Path(__file__).resolve().parent / "scopes"
PIPELINE_SMOOTH_GC = 0.5  # the α of the shipped smoothed scopes (benchmarks/gc_ranges.py --moves, 40 dB)


def shipped_smoothed_scope(resolution: int, alpha: float = PIPELINE_SMOOTH_GC) -> Path | None:
    """export/scopes/gc_smoothed_a{α}_r{R}.json: the GC readers measured to stay ≥ 40 dB in INT8 at R², or None."""
    path = SCOPES_DIR / f"gc_smoothed_a{alpha}_r{resolution}.json"
    return path if path.is_file() else None


def load_scope(path: Path | None) -> Scope:
    """The default scope, or one written by `amnet-deploy diagnose --sensitivity` (validated, one-line errors)."""
    if path is None:
        return Scope()
    data = read_json(path, "INT8 scope file")
    if not isinstance(data, dict) or data.get("format") != SCOPE_FORMAT or not isinstance(data.get("float_nodes"), list):
        raise InputError(f"{path} is not an {SCOPE_FORMAT} file (make one with `amnet-deploy diagnose --sensitivity`)")
    op_types = data.get("float_op_types", list(FLOAT_OP_TYPES))
    for key, values in (("float_nodes", data["float_nodes"]), ("float_op_types", op_types)):
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise InputError(f"{path}: {key} must be a list of non-empty strings, got {values!r:.80}")
    # A scope written before the GC MLPs were exported fused names the GC path as /gcs.N/ only: the heads go with it
    fragments = tuple(GC_PATH if f == r"/gcs\.\d+/" else f for f in data["float_nodes"])
    for f in fragments:
        try:
            re.compile(f)
        except re.error:
            raise InputError(f"{path}: {f!r} is not a valid pattern") from None
        _check_safe_pattern(path, f)
    kept = re.compile("|".join(f"(?:{f})" for f in fragments))
    if not all(kept.search(n) for n in ("/reenactor/gcs.0/Conv", "/reenactor/gc_heads/Gemm")):
        raise InputError(f"{path}: float_nodes must keep the GC path float ({GC_PATH}): its MLPs make GC weights, "
                         "per sample, that no calibration set can range")
    smooth_gc = data.get("smooth_gc")
    if smooth_gc is not None:
        check_smooth_gc(smooth_gc, f"{path}: smooth_gc (the α of `export --smooth-gc`)")
    return Scope(fragments, tuple(op_types), str(path), smooth_gc)


def check_smooth_gc(alpha, what: str = "--smooth-gc α") -> float:
    """A GC-smoothing α: a number in (0, 1] (NaN, ±inf, true and strings refused, wherever they come from)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and 0 < alpha <= 1):
        raise InputError(f"{what} must be a number in (0, 1], got {alpha!r:.40}")
    return float(alpha)


MAX_REPEATS = 2  # the shipped patterns use one; every repeat more multiplies the worst-case matching time
_CLASS_ESCAPES = "dDwWsS"


def _check_safe_pattern(path, pattern: str) -> None:
    """Refuse what falls outside the subset in the module docstring, naming the first offending construct."""
    def refuse(why: str):
        raise InputError(f"{path}: pattern {pattern!r:.80} {why} (scope patterns are literal text, escapes, "
                         f"classes and groups, with at most {MAX_REPEATS} repeats, each after one character or "
                         "class: see export/int8_scope.py)")

    i, repeats, repeatable = 0, 0, False  # repeatable: the last token was one character, escape or class
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escaped = pattern[i + 1:i + 2]
            if escaped.isalnum() and escaped not in _CLASS_ESCAPES:
                refuse(f"has \\{escaped} (backreferences and other letter escapes are not allowed)")
            i, repeatable = i + 2, True
            continue
        if c == "[":
            end = i + 1 + (pattern[i + 1:i + 2] == "^")
            end += pattern[end:end + 1] == "]"  # a leading ] is a literal one
            while pattern[end] != "]":  # re.compile has checked that the class ends
                end += 2 if pattern[end] == "\\" else 1
            i, repeatable = end + 1, True
            continue
        if c == "(":
            if pattern.startswith("(?", i) and not pattern.startswith("(?:", i):
                refuse("has a lookaround, named group or inline flag")
            i, repeatable = i + (3 if pattern.startswith("(?:", i) else 1), False
            continue
        if c in "*+?{":
            close = pattern.find("}", i) if c == "{" else i
            if c == "{" and (close < 0 or not re.fullmatch(r"\d+(?:,\d*)?", pattern[i + 1:close])):
                refuse("has a { that is not a repeat {m} or {m,n} (escape a literal one)")
            if not repeatable:
                refuse("repeats a group or a repeat (nested repeats can take exponential time)")
            i, repeats, repeatable = close, repeats + 1, False
        else:
            repeatable = c not in "|)^$"
        i += 1
    if repeats > MAX_REPEATS:
        refuse(f"has {repeats} repeats")


def write_scope(path: Path, float_layers: list[str], meta: dict) -> Path:
    """float_layers: module scopes ('/reenactor/cells.1/body/body.0/'), kept float beside ALWAYS_FLOAT."""
    import json

    from amnet.core.fileio import write_text

    data = {"format": SCOPE_FORMAT, "float_nodes": [*ALWAYS_FLOAT, *(re.escape(x) for x in float_layers)],
            "float_op_types": list(FLOAT_OP_TYPES), **meta}
    return write_text(path, json.dumps(data, indent=1) + "\n")
