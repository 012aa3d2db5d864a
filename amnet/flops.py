"""Multiply-add counting for AMNet (2 FLOP per multiply-add), by forward hooks."""
from __future__ import annotations

import torch
from torch import nn

from amnet.model import AMNet, GeometricController


def count_macs(model: AMNet, resolution: int) -> int:
    macs = 0

    def conv_hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.ConvTranspose2d):  # every input pixel scatters a k×k×Cout patch
            k = m.kernel_size[0] * m.kernel_size[1]
            macs += inp[0].numel() * k * m.out_channels // m.groups
        else:
            k = m.kernel_size[0] * m.kernel_size[1]
            macs += out.numel() * k * m.in_channels // m.groups

    def linear_hook(m, inp, out):
        nonlocal macs
        macs += out.numel() * m.in_features

    def gc_hook(m, inp, out):
        nonlocal macs
        macs += out.numel() * m.kernel * m.kernel

    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, GeometricController):
            hooks.append(mod.register_forward_hook(gc_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution), torch.zeros(1, 1, 64, 60),
                  torch.zeros(1, 3), torch.zeros(1, 2))
    finally:
        for h in hooks:
            h.remove()
    return macs


def gflops_per_frame(model: AMNet, resolution: int) -> float:
    return 2 * count_macs(model, resolution) / 1e9
