"""What the two on-device builders (LiteRT, ExecuTorch) share: the model in its mobile form, its sample inputs,
the manifest entry.

Built from the checkpoint, not from ONNX: both converters trace the PyTorch module (torch.export). The module
is `amnet.model.mobile_form` (the GC as sliced multiply-adds, the norms as mean/var) with the decoder's
ConvTranspose2d as sub-pixel convs (`export.subpixel`: litert-torch cannot legalize a transposed conv with an
output padding), at a fixed batch: XNNPACK then takes every op, the GC's included.
"""
from __future__ import annotations

import warnings

from amnet.core.runner import MODEL_INPUTS

OUTPUT_NAMES = ("face", "landmarks")
CONV_OPS_NOTE = "a convolution off XNNPACK runs on the runtime's portable kernel (slower, and splits the graph)"


def on_device_module(model):
    """A copy of ``model`` as the mobile builders trace it (the same function: tests/test_mobile.py)."""
    from amnet.model import mobile_form
    from export.subpixel import SubPixelConvTranspose, convertible

    mobile = mobile_form(model)
    decoder = mobile.reenactor.decoder
    for i, m in enumerate(decoder):
        if convertible(m):
            decoder[i] = SubPixelConvTranspose(m)
    return mobile


def sample_inputs(batch: int, resolution: int) -> dict:
    """Traced example inputs by name (their values do not matter, their shapes are fixed in the artifact)."""
    from export.onnx_export import dummy_inputs

    return dict(zip(MODEL_INPUTS, dummy_inputs("full", batch, resolution)))


def artifact_name(batch: int, resolution: int, runtime: str, precision: str, suffix: str) -> str:
    return f"amnet_full_b{batch}_r{resolution}_{runtime}_{precision}{suffix}"


def entry(name: str, runtime: str, precision: str, batch: int, resolution: int, model, loaded,
          delegation: dict, **extra) -> dict:
    """The manifest entry of one on-device artifact; a convolution off the delegate is warned about here."""
    if delegation["convs_off_delegate"]:
        warnings.warn(f"{name}: {delegation['convs_off_delegate']} convolution(s) off XNNPACK "
                      f"({delegation['conv_macs_delegated'] * 100:.1f} % of the conv MACs delegated): {CONV_OPS_NOTE}")
    return {"name": name, "runtime": runtime, "part": "full", **file_metadata(model, precision), "batch": batch,
            "resolution": resolution, "from": loaded.path.name, "from_sha256": loaded.sha256,
            "delegation": delegation, **extra}


def file_metadata(model, precision: str) -> dict:
    """What the artifact is (the manifest entry's, and what a `.tflite` carries in itself)."""
    return {"gc_form": "mobile", "norm_form": "mean-var", "upsampling": "subpixel", "precision": precision,
            "audio_delta": model.config.audio_delta}
