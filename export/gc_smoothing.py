"""Smoothing the GC outputs so the convs that read them can run INT8 (SmoothQuant / cross-layer equalisation).

A GC scales each channel by a weight predicted per frame; its output channels
span different ranges, which one per-tensor INT8 scale holds badly. Each channel
c is divided by a fixed factor s_c (the rows of the GC's weight and bias MLPs
that make channel c, ÷ s_c) and the reader conv's input-channel weights are
multiplied by s_c: the same function (to float rounding), evener ranges. Where
the GC output also feeds a residual Add (cells 1–5), the skip path multiplies by
s_c again (``skip_scale``: one per-channel multiply, float like the Add itself).

s_c = (calibration abs-max of channel c)^α, geometric mean 1. Applied to the
loaded model at export time (``export --smooth-gc α``), never saved in checkpoints.
`benchmarks/gc_ranges.py` measures whether the ranges are a property of the
channel (what a fixed s_c can fix) and what moving each reader to INT8 costs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.int8_scope import check_smooth_gc


def readers(model) -> dict[int, tuple[nn.Module, nn.Module | None]]:
    """GC index → (the conv that reads its output, the residual cell whose skip path also carries it, or None)."""
    psi = model.reenactor
    out = {}
    for k in range(len(psi.gcs)):
        if k + 1 < len(psi.cells):
            cell = psi.cells[k + 1]
            if hasattr(cell, "skip_scale"):  # residual: body's first conv reads x, the skip adds x back
                out[k] = (cell.body[0], cell)
            else:  # Sequential(conv, norm, relu)
                out[k] = (cell[0], None)
        else:
            out[k] = (psi.decoder[0], None)
    return out


def channel_absmax(model, feeds: dict[str, np.ndarray], batch: int = 8) -> list[np.ndarray]:
    """Per GC, an N×C array: each frame's per-channel abs-max of the GC output."""
    stats: list[list[np.ndarray]] = [[] for _ in model.reenactor.gcs]
    hooks = [gc.register_forward_hook(lambda m, i, out, k=k: stats[k].append(
        out.detach().abs().amax(dim=(2, 3)).numpy())) for k, gc in enumerate(model.reenactor.gcs)]
    try:
        with torch.inference_mode(), model.gc_form("grouped"):
            for i in range(0, len(feeds["source"]), batch):
                model(*(torch.from_numpy(feeds[k][i:i + batch]) for k in ("source", "audio", "pose", "eye")))
    finally:
        for h in hooks:
            h.remove()
    return [np.concatenate(s) for s in stats]


def factors(absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_c = (calibration abs-max of channel c)^α, normalised to geometric mean 1."""
    s = np.maximum(absmax.max(axis=0), 1e-6) ** alpha
    return s / np.exp(np.log(s).mean())


def smooth(model, feeds: dict[str, np.ndarray], alpha: float, gcs=None) -> dict[int, np.ndarray]:
    """Fold per-channel factors out of the GCs (all, or ``gcs``) into their readers, in place; returns them."""
    check_smooth_gc(alpha)
    absmax = channel_absmax(model, feeds)
    done = {}
    with torch.no_grad():
        for k, (conv, cell) in readers(model).items():
            if gcs is not None and k not in gcs:
                continue
            gc = model.reenactor.gcs[k]
            s = torch.from_numpy(factors(absmax[k], alpha)).float()
            kk = gc.kernel * gc.kernel
            gc.weight_mlp[-1].weight.div_(s.repeat_interleave(kk)[:, None])  # the rows that make channel c: ÷ s_c
            gc.weight_mlp[-1].bias.div_(s.repeat_interleave(kk))
            gc.bias_mlp[-1].weight.div_(s[:, None])
            gc.bias_mlp[-1].bias.div_(s)
            if isinstance(conv, nn.ConvTranspose2d):  # weight: in × out × kh × kw
                conv.weight.mul_(s[:, None, None, None])
            else:  # Conv2d weight: out × in × kh × kw
                conv.weight.mul_(s[None, :, None, None])
            if cell is not None:
                prior = cell.skip_scale if cell.skip_scale is not None else torch.ones(1, len(s), 1, 1)
                cell.skip_scale = prior * s.reshape(1, -1, 1, 1)
            done[k] = s.numpy()
    return done
