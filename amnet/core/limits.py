"""Parity limits: ``thresholds.json`` beside this file, validated, plus command-line overrides.

Groups are a precision (``int8``) or a runtime and a precision
(``openvino-int8``); keys are ``OUTPUT.METRIC_min`` or ``_max``. A variant's
limits are, later winning: the file's precision group, the file's
runtime-precision group, then the same two from the command line. Anything
unknown (group, output, metric, rule) or a value that is not a finite number
is an InputError naming the key: a misspelled limit must not silently vanish.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from amnet.core.artifacts import Precision
from amnet.core.errors import InputError
from amnet.core.fileio import read_json

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.json")
OUTPUTS = ("face", "landmarks")
METRICS = ("max_abs", "mean_abs", "cosine", "psnr", "ssim", "detection_rate", "landmark_shift_px")
IMAGE_METRICS = ("psnr", "ssim", "detection_rate", "landmark_shift_px")  # face only
FACE_CHECKS = ("detection_rate", "landmark_shift_px")  # dlib's: waived together by --no-faces


def parse_key(key: str) -> tuple[str, str, str]:
    """'face.psnr_min' → ('face', 'psnr', 'min')."""
    out, _, rule = str(key).partition(".")
    metric, _, kind = rule.rpartition("_")
    if out not in OUTPUTS or metric not in METRICS or kind not in ("min", "max") or (
            out != "face" and metric in IMAGE_METRICS):
        raise InputError(f"unknown limit {key!r}: want OUTPUT.METRIC_min|max with OUTPUT in {'/'.join(OUTPUTS)} "
                         f"and METRIC in {', '.join(METRICS)} (image metrics on face only)")
    return out, metric, kind


def _check_group(name: str, runtimes: Iterable[str] | None) -> None:
    precision = name.rpartition("-")[2]
    runtime = name[: -len(precision) - 1] if "-" in name else None
    try:
        Precision(precision)
    except ValueError:
        raise InputError(f"unknown limit group {name!r}: the precision must be one of "
                         f"{', '.join(p.value for p in Precision)}") from None
    if runtime is not None and runtimes is not None and runtime not in set(runtimes):
        raise InputError(f"unknown limit group {name!r}: no runtime {runtime!r} (known: {', '.join(sorted(runtimes))})")


def _check_value(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"limit {where} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class Limits:
    from_file: dict[str, dict[str, float]]
    from_cli: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = str(THRESHOLDS_FILE)

    def groups(self, runtime: str, precision: str) -> list[str]:
        return [precision, f"{runtime}-{precision}"]

    def has(self, runtime: str, precision: str) -> bool:
        return any(self.from_file.get(g) or self.from_cli.get(g) for g in self.groups(runtime, precision))

    def for_variant(self, runtime: str, precision: str) -> dict[str, float]:
        merged: dict[str, float] = {}
        for layer in (self.from_file, self.from_cli):
            for g in self.groups(runtime, precision):
                merged.update(layer.get(g, {}))
        return merged


def read_file(path: Path | None = None, runtimes: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    path = Path(path or THRESHOLDS_FILE)
    data = read_json(path, "thresholds file")  # a FIFO, a huge or a 100k-deep file: one line, not a hang or a crash
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object of limit groups, got a {type(data).__name__}")
    out = {}
    for group, limits in data.items():
        if group.startswith("_"):  # comments
            continue
        _check_group(group, runtimes)
        if not isinstance(limits, dict):
            raise InputError(f"{path}: group {group!r} must be an object of limits, got {limits!r}")
        for key, value in limits.items():
            parse_key(key)
            _check_value(f"{group}.{key}", value)
        out[group] = {k: float(v) for k, v in limits.items()}
    return out


def parse_overrides(items: Iterable[str] | None, runtimes: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """['int8.face.psnr_min=30', 'openvino-int8.face.ssim_min=0.98'] → {group: {key: value}}."""
    out: dict[str, dict[str, float]] = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        group, _, limit = key.partition(".")
        if not group or not limit or not value:
            raise InputError(f"--threshold wants GROUP.OUTPUT.METRIC_min|max=VALUE, got {item!r}")
        _check_group(group, runtimes)
        parse_key(limit)
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"--threshold {key}: value must be a number, got {value!r}") from None
        out.setdefault(group, {})[limit] = _check_value(key, number)
    return out


def load_limits(path: Path | None = None, overrides: Iterable[str] | None = None,
                runtimes: Iterable[str] | None = None) -> Limits:
    runtimes = list(runtimes) if runtimes is not None else None
    return Limits(read_file(path, runtimes), parse_overrides(overrides, runtimes), str(path or THRESHOLDS_FILE))
