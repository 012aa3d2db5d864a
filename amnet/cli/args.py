"""Argument types and shared arguments of the CLI (one place, for `main` and `harness`)."""
from __future__ import annotations

import argparse
import os

from amnet import default_checkpoint
from amnet.core.errors import InputError

# The largest frame side accepted. Memory grows with the pixels: a batch-1 PyTorch forward grows peak RSS by
# ≈ BYTES_PER_PIXEL per pixel (measured: 499 B at 256², 579 B at 512², 2-core AMD EPYC), and commands run up to
# 8 samples at a time, so 1024² needs ≈ 5 GiB and 4096² would need ≈ 80 GiB.
MAX_RESOLUTION = 1024
BYTES_PER_PIXEL = 600
MAX_BATCH = 64  # a batch bucket above this needs tens of GiB in the export's PyTorch trace at 256²


def unwritable(folder) -> str | None:
    """Why files cannot be made in folder (or in the nearest existing parent, which would hold it), else None.

    By a probe file, removed at once: os.access says yes to root even where nothing can be created (/sys)."""
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        return f"{existing} is not writable ({e.strerror})"
    return None


def output_file(path, flag: str):
    """A file to write whose folder exists and is writable now (a folder is made only where one was asked for:
    --report, --output DIR), checked before any work."""
    from amnet.core.fileio import check_output_path

    path = check_output_path(path)
    if not path.parent.is_dir():
        raise InputError(f"{flag} {path}: folder {path.parent} does not exist")
    why = unwritable(path.parent)
    if why:
        raise InputError(f"{flag} {path}: {why}")
    return path


def ints(text: str) -> list[int]:
    """Batch buckets: comma-separated integers in [1, MAX_BATCH]."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected integers between 1 and {MAX_BATCH}, got {text!r}")
    return values


def words(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return values
    return parse


def resolution(text: str) -> int:
    try:
        r = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be an integer, got {text!r}") from None
    if r % 4 or r < 8:
        raise argparse.ArgumentTypeError(f"resolution must be a multiple of 4 and ≥ 8, got {r}")
    try:
        check_resolution(r, r)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return r


def check_resolution(h: int, w: int, batch: int = 1) -> None:
    if max(h, w) > MAX_RESOLUTION:
        need = BYTES_PER_PIXEL * h * w * batch / 2 ** 30
        raise InputError(f"{h}×{w} is above the {MAX_RESOLUTION}² maximum: {batch} frame(s) at a time would need "
                         f"≈ {need:.1f} GiB in the PyTorch reference")


def positive(what: str, upper: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if v < 1 or (upper is not None and v > upper):
            raise argparse.ArgumentTypeError(f"{what} must be between 1 and {upper}, got {v}" if upper
                                             else f"{what} must be ≥ 1, got {v}")
        return v
    return parse


def number(what: str, low: float | None = None, high: float | None = None, above: bool = False):
    """A finite float in [low, high] (or (low, high] with `above`): NaN and ±inf are usage errors."""
    import math

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not math.isfinite(v) or (low is not None and (v <= low if above else v < low)) or \
                (high is not None and v > high):
            span = f"{'>' if above else '≥'} {low:g}" if high is None else \
                f"in {'(' if above else '['}{low:g}, {high:g}]" if low is not None else f"≤ {high:g}"
            raise argparse.ArgumentTypeError(f"{what} must be a finite number {span}, got {text!r}")
        return v
    return parse


THREADS = positive("threads (bounded by this machine's cores)", os.cpu_count() or 1)


def checkpoint_arg(p: argparse.ArgumentParser, help_extra: str = "", per_resolution: bool = False) -> None:
    """per_resolution: left out, the checkpoint is the shipped model of the size the command runs at
    (`shipped_checkpoint`), so that a 256² build is compared with the 256² fine-tune it was exported from."""
    shipped = (f"the shipped model of that size: {default_checkpoint().name}, {default_checkpoint(256).name} at 256²"
               if per_resolution else f"the shipped model, {default_checkpoint().name}")
    p.add_argument("checkpoint", nargs="?", default=None if per_resolution else str(default_checkpoint()),
                   help=f"AMNet checkpoint: .safetensors (ours) or official *_G.pth {help_extra}(default: {shipped})")


def shipped_checkpoint(args, resolution: int) -> str:
    """The checkpoint given, else the shipped model of this size (see `checkpoint_arg`)."""
    return args.checkpoint or str(default_checkpoint(resolution))


def float_precision_arg(parser) -> None:
    parser.add_argument("--float-precision", choices=("auto", "f32", "bf16"),
                        help="OpenVINO INT8/FP16 variants: what their float parts compute in (default auto: bf16 "
                             "where the CPU has native bf16, AVX512-BF16 or AMX; f32 elsewhere). FP32 stays f32")


def isa_caps(text: str) -> list[str]:
    """native and/or oneDNN ISA caps (ONEDNN_MAX_CPU_ISA values), any case."""
    from amnet.core.cpu import CAPS, UNCAPPED

    values = [v.strip() for v in text.split(",") if v.strip()]
    out = ["native" if v.lower() == "native" or v.upper() in UNCAPPED else v.upper() for v in values]
    out = list(dict.fromkeys(out))  # each cap once
    bad = [v for v in out if v != "native" and v not in CAPS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'}: use native or oneDNN ISA caps "
                                         f"({', '.join(CAPS)})")
    return out
