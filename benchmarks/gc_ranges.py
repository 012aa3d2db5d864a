"""Can the convs that read a GC output run INT8? Measure the GC output ranges, then move readers one by one.

A GC scales each channel by a weight predicted per frame, so one per-tensor INT8
scale must hold channels of different ranges. If the spread is a property of the
*channel* (the same channels are large on every frame), a fixed per-channel factor
folded out of the GC and into the reader (`export/gc_smoothing.py`) evens it out;
if it moves frame to frame, no fixed factor can. Per GC output, on calibration_data:

- spread: largest channel abs-max / median channel abs-max (per frame; the median frame);
- channel share: the part of the variance of log(abs-max) that the channel alone explains;
- spread after smoothing: the same, once each channel is divided by its factor.

``--moves`` then exports the smoothed model and, heaviest reader first, builds an
OpenVINO INT8 IR with one more reader in INT8, keeping the move while the face
PSNR vs PyTorch FP32 (held-out) stays at or above 40 dB (``--floor-db``). It
writes the table and the resulting scope file (for `build --int8-scope`, valid
with `export --smooth-gc α` only).

    python -m benchmarks.gc_ranges [CKPT] [--resolution 128] [--alpha 0.5] [--moves] [--report reports/gc_ranges]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from export.gc_smoothing import channel_absmax, factors


def reader_scopes(model) -> list[str]:
    """ONNX node-name scope of the conv reading GC k, as the TorchScript exporter names modules
    (a Sequential's child i of attribute `a` is `a/a.i`; ModuleList items are `cells.i`)."""
    cells = len(model.reenactor.gcs)
    return [f"/reenactor/cells.{k + 1}/body/body.0/" if k < 5 else
            f"/reenactor/cells.{k + 1}/" if k < cells - 1 else "/reenactor/decoder/decoder.0/" for k in range(cells)]


def spread(a: np.ndarray) -> float:
    """Median over frames of (largest channel range / median channel range)."""
    return float(np.median(a.max(axis=1) / np.maximum(np.median(a, axis=1), 1e-12)))


def channel_share(a: np.ndarray) -> float:
    """Fraction of the variance of log abs-max that the channel explains (1: fixed per channel)."""
    log = np.log(np.maximum(a, 1e-12))
    total = log.var()
    return float(log.mean(axis=0).var() / total) if total > 0 else 1.0


def ranges(model, feeds, alpha: float) -> list[dict]:
    scopes = reader_scopes(model)
    rows = []
    for k, a in enumerate(channel_absmax(model, feeds)):
        rows.append({"gc": k, "reader": scopes[k].strip("/").replace("reenactor/", ""), "channels": a.shape[1],
                     "spread": round(spread(a), 1), "channel_share": round(channel_share(a), 3),
                     "spread_smoothed": round(spread(a / factors(a, alpha)), 1)})
    return rows


def reader_gflops(model, resolution: int) -> list[float]:
    """GFLOP per frame of each reader conv (the order of the moves: most compute first)."""
    import torch

    from export.gc_smoothing import readers

    sizes: dict[int, float] = {}
    hooks = []
    for k, (conv, _) in readers(model).items():
        def hook(m, inputs, out, k=k):
            kernel = m.weight.shape[2] * m.weight.shape[3]
            cin, cout = inputs[0].shape[1], out.shape[1]
            pixels = (inputs[0] if isinstance(m, torch.nn.ConvTranspose2d) else out).shape[-2:].numel()
            sizes[k] = 2 * pixels * cin * cout * kernel / (m.groups or 1) / 1e9
        hooks.append(conv.register_forward_hook(hook))
    with torch.inference_mode():
        model(torch.zeros(1, 3, resolution, resolution), torch.zeros(1, 1, 64, 60), torch.zeros(1, 3),
              torch.full((1, 2), 0.3))
    for h in hooks:
        h.remove()
    return [sizes[k] for k in sorted(sizes)]


MOVE_FLOOR_DB = 40.0  # stricter than the INT8 gate's face.psnr_min: the CPU real-time issue's bar


def moves(checkpoint: Path, resolution: int, alpha: float, out: Path, samples: int = 24,
          floor_db: float = MOVE_FLOOR_DB, progress: bool = True) -> dict:
    """Greedy: smoothed export, then each reader (heaviest first) into INT8 while the PSNR floor holds."""
    from amnet.checkpoint import load_checkpoint
    from amnet.core.limits import load_limits
    from amnet.core.metrics import psnr
    from amnet.realdata import load_inputs
    from export.int8_scope import IMAGE_OUT, write_scope
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint
    from runtimes.pytorch_runner import reference_outputs
    from runtimes.registry import open_runner

    floor_db = max(floor_db, load_limits().for_variant("openvino", "int8")["face.psnr_min"])  # never below the gate
    model = load_checkpoint(checkpoint).require_full().eval()
    held = load_inputs("heldout", resolution, samples)
    held.pop("target")
    reference = reference_outputs(model, held)["face"]
    scopes = reader_scopes(model)
    order = list(np.argsort(reader_gflops(model, resolution))[::-1])
    export_dir = out / f"export_r{resolution}_a{alpha}"
    export_checkpoint(checkpoint, export_dir, ExportOptions((1,), resolution, check_parity=True, progress=progress,
                                                            smooth_gc=alpha))
    last_conv = IMAGE_OUT.replace("\\", "")

    def trial(float_readers: list[int], name: str) -> tuple[float, float, Path]:
        scope = write_scope(out / f"{name}.json", ["/reenactor" + last_conv] + [scopes[k] for k in float_readers],
                            {"smooth_gc": alpha, "resolution": resolution, "note": "benchmarks.gc_ranges --moves"})
        manifest = build(export_dir, "openvino", export_dir, BuildOptions(("int8",), (1,), resolution, 64,
                                                                           progress=False, int8_scope=scope))
        art = next(a for a in manifest["artifacts"] if a["runtime"] == "openvino" and a["precision"] == "int8")
        with open_runner(export_dir / art["file"], threads=2) as runner:
            face = np.concatenate([runner.infer({k: v[i:i + 1] for k, v in held.items()})["face"]
                                   for i in range(len(reference))])
            times = []
            for _ in range(10):
                runner.infer({k: v[:1] for k, v in held.items()})
                times.append(runner.inference_time)
        return psnr(reference, face), 1000 * float(np.median(times)), scope

    flops = reader_gflops(model, resolution)
    floating = list(range(len(scopes)))
    db, ms, _ = trial(floating, "scope_all_readers_float")
    db = float(db)
    rows = [{"reader": "(all readers float, smoothed export)", "gflops": 0.0, "psnr": round(db, 2),
             "median_ms": round(ms, 1), "kept": True}]
    for k in order:
        t = time.time()
        candidate = [f for f in floating if f != k]
        db, ms, scope = trial(candidate, f"scope_step_{len(rows)}")
        db = float(db)
        kept = bool(db >= floor_db)
        if kept:
            floating = candidate
        rows.append({"reader": scopes[k].strip("/").replace("reenactor/", ""), "gflops": round(flops[k], 3),
                     "psnr": round(db, 2), "median_ms": round(ms, 1), "kept": kept})
        if progress:
            print(f"  {rows[-1]['reader']:<28} {db:6.2f} dB  {ms:7.1f} ms  {'INT8' if kept else 'stays float'} "
                  f"({time.time() - t:.0f} s)", flush=True)
    final = write_scope(out / "int8_scope.json", ["/reenactor" + last_conv] + [scopes[k] for k in floating],
                        {"smooth_gc": alpha, "resolution": resolution, "psnr_floor_db": floor_db,
                         "note": "benchmarks.gc_ranges --moves: readers kept float"})
    return {"floor_db": floor_db, "alpha": alpha, "resolution": resolution, "samples": samples, "rows": rows,
            "scope": str(final), "export": str(export_dir)}


def markdown(table: list[dict], result: dict | None, resolution: int, alpha: float, frames: int) -> str:
    lines = [f"# GC outputs and the convs that read them, {resolution}² (α = {alpha})", "",
             f"Ranges over {frames} calibration frames:", "",
             "| GC | read by | channels | spread (max/median channel) | variance explained by the channel | "
             "spread after smoothing |", "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['gc']} | {r['reader']} | {r['channels']} | {r['spread']} | {r['channel_share']:.2f} | "
                     f"{r['spread_smoothed']} |")
    if result:
        lines += ["", f"Readers moved to INT8 one at a time, heaviest first (OpenVINO, batch 1, 2 threads; face PSNR "
                      f"vs PyTorch FP32 on {result['samples']} held-out frames; a move is kept while ≥ {result['floor_db']} "
                      "dB):", "",
                  "| step | reader | GFLOP/frame | PSNR dB | median ms | |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(result["rows"]):
            lines.append(f"| {i} | {r['reader']} | {r['gflops']} | {r['psnr']} | {r['median_ms']} | "
                         f"{'INT8' if r['kept'] and i else ('' if not i else 'stays float')} |")
        lines += ["", f"Scope: `{result['scope']}` (build with `--int8-scope` from an export made with "
                      f"`--smooth-gc {alpha}`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from amnet import default_checkpoint
    from amnet.checkpoint import load_checkpoint
    from amnet.core.fileio import write_text
    from amnet.realdata import load_inputs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default=str(default_checkpoint()))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--alpha", type=float, default=0.5, help="smoothing strength: factor = abs-max^α")
    p.add_argument("--moves", action="store_true", help="also build INT8 IRs moving readers to INT8 one by one")
    p.add_argument("--samples", type=int, default=24, help="held-out frames for the PSNR of each move")
    p.add_argument("--floor-db", type=float, default=MOVE_FLOOR_DB,
                   help="keep a move while the face PSNR stays at or above this (never below the INT8 gate's floor)")
    p.add_argument("--report", default="reports/gc_ranges")
    args = p.parse_args(argv)
    out = Path(args.report)
    model = load_checkpoint(args.checkpoint).require_full().eval()
    feeds = load_inputs("calib", args.resolution)
    table = ranges(model, feeds, args.alpha)
    result = moves(Path(args.checkpoint), args.resolution, args.alpha, out, args.samples, args.floor_db) if args.moves else None
    write_text(out / "gc_ranges.json", json.dumps({"ranges": table, "moves": result}, indent=1))
    text = markdown(table, result, args.resolution, args.alpha, len(feeds["source"]))
    write_text(out / "gc_ranges.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
