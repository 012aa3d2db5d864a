"""The decoder's stride-2 ConvTranspose2d, exported as Conv2d(2×2) + DepthToSpace: the same function.

Why: OpenVINO's CPU plugin has no INT8 deconvolution on AVX2 (a quantized
ConvTranspose still runs ``brgconv_avx2_f32``) and its f32 deconvolution is
slow; an ordinary conv runs on the INT8 kernels. Measured on the 256² decoder
(2-core AMD EPYC Zen 3, AVX2, OpenVINO 2025): the two upsampling layers took
14.2 + 5.8 ms as ConvTranspose and 5.4 + 3.8 ms (+ 1.7 ms DepthToSpace) as
sub-pixel convs in INT8.

A ConvTranspose2d with kernel 3, stride 2, padding 1 and output padding 1 maps
input row i to output rows 2i (tap 1 of the kernel) and 2i+1 (tap 2 from row i,
tap 0 from row i+1); the same holds for columns. So each of the four output
phases (a, b) is a 2×2 conv over the input padded by one row and column at the
end, with the taps it does not use set to zero (16 multiply-adds where the
transpose does 9: cheaper anyway, in dense kernels). ``pixel_shuffle``
interleaves the phases (ONNX DepthToSpace, CRD order: channel c·4 + 2a + b).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Output phase a (row or column parity) and conv tap t → the ConvTranspose kernel tap it takes (absent: zero).
PHASE_TAPS = {(0, 0): 1, (1, 0): 2, (1, 1): 0}


def convertible(m: nn.Module) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (3, 3) and m.stride == (2, 2)
            and m.padding == (1, 1) and m.output_padding == (1, 1) and m.dilation == (1, 1) and m.groups == 1)


def subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d weight (Cin, Cout, 3, 3) → Conv2d weight (4·Cout, Cin, 2, 2), channel c·4 + 2a + b."""
    cin, cout = weight.shape[:2]
    out = weight.new_zeros(cout, 2, 2, cin, 2, 2)
    for (a, t), u in PHASE_TAPS.items():
        for (b, s), v in PHASE_TAPS.items():
            out[:, a, b, :, t, s] = weight[:, :, u, v].T
    return out.reshape(cout * 4, cin, 2, 2)


class SubPixelConvTranspose(nn.Module):
    def __init__(self, convt: nn.ConvTranspose2d):
        super().__init__()
        if not convertible(convt):
            raise ValueError(f"only ConvTranspose2d(k=3, s=2, p=1, output_padding=1) converts, not {convt}")
        self.register_buffer("weight", subpixel_weight(convt.weight.detach()))
        bias = convt.bias.detach().repeat_interleave(4) if convt.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias), 2)


@contextmanager
def subpixel_upsampling(model):
    """Inside the block the decoder's convertible ConvTranspose2d layers are sub-pixel convs; after it, as before.

    The replacement keeps the layer's place in the Sequential, so its ONNX nodes keep the scope
    (``/reenactor/decoder/decoder.0/``) that INT8 scopes and `diagnose` probes name.
    """
    decoder = model.reenactor.decoder
    swapped: dict[int, nn.Module] = {}
    try:
        for i, m in enumerate(decoder):
            if convertible(m):
                decoder[i] = SubPixelConvTranspose(m)
                swapped[i] = m
        yield model
    finally:
        for i, m in swapped.items():
            decoder[i] = m
