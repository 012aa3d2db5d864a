"""Checkpoints: the project's own format and the official APB2FaceV2 release.

Own format: one ``.safetensors`` file. Tensors are named ``fuser.*``,
``reenactor.*`` and optionally ``discriminator.*``; the AMNetConfig is JSON in
the safetensors metadata under ``amnet_config``. Nothing is unpickled.

Official release: ``*_G.pth`` = {'netA': φ, 'netG': ψ, 'epoch'}, the pretrained
fuser file = {'audio_net': φ}, ``*_D.pth`` = {'netD': D}. Read with
``torch.load(weights_only=True)`` and renamed onto our modules by OFFICIAL_MAP.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from amnet.core.errors import CheckpointError, first_line
from amnet.core.fileio import atomic_write, file_sha256
from amnet.model import AMNet, AMNetConfig, Discriminator, count_parameters

CONFIG_KEY = "amnet_config"


@dataclass
class Loaded:
    """A loaded checkpoint: the model, what the file was, and what it held."""

    model: AMNet
    config: AMNetConfig
    format: str  # "amnet-safetensors" | "official-G" | "official-fuser"
    path: Path
    sha256: str
    components: list[str] = field(default_factory=list)  # of "fuser", "reenactor", "discriminator"
    discriminator: Discriminator | None = None

    def require_full(self) -> AMNet:
        missing = [c for c in ("fuser", "reenactor") if c not in self.components]
        if missing:  # a missing part would run with random weights
            names = {"fuser": "the fuser φ (netA)", "reenactor": "the reenactor ψ (netG)"}
            raise CheckpointError(f"{self.path.name} lacks {' and '.join(names[c] for c in missing)} "
                                  f"({self.format}): running AMNet needs both")
        return self.model


# ---------------------------------------------------------------- official names

def _official_netg_map() -> dict[str, str]:
    m = {
        "stem.0._op.conv.weight": "encoder.0.weight",
        "stem.1._op.conv.weight": "encoder.3.weight",
        "stem.2._op.conv.weight": "encoder.6.weight",
        "header.0._op.conv.weight": "decoder.0.weight",
        "header.1._op.conv.weight": "decoder.3.weight",
        "header.2._op.conv.weight": "decoder.6.weight",
    }
    # Inverted residual cells 0 and 5: conv1/conv2/conv3 are body.0/3/6; cell 0's skip is shortcut.0.
    for cell in (0, 5):
        for i, ours in ((1, 0), (2, 3), (3, 6)):
            m[f"cells.{cell}._op.conv{i}.weight"] = f"cells.{cell}.body.{ours}.weight"
    m["cells.0._op.skip.weight"] = "cells.0.shortcut.0.weight"
    for cell in range(1, 5):  # basic residual
        m[f"cells.{cell}._op.conv1.weight"] = f"cells.{cell}.body.0.weight"
        m[f"cells.{cell}._op.conv2.weight"] = f"cells.{cell}.body.3.weight"
    for cell in range(6, 9):  # CIR 1×1
        m[f"cells.{cell}._op.conv.weight"] = f"cells.{cell}.0.weight"
    for gc in range(9):  # GC predictors: official 1×1 convs on N×256×1×1 == our Linear layers
        for theirs, ours in (("weight_conv", "weight_mlp"), ("bias_conv", "bias_mlp")):
            for idx in (0, 2):
                for p in ("weight", "bias"):
                    m[f"ada_convs.{gc}.{theirs}.{idx}.{p}"] = f"gcs.{gc}.{ours}.{idx}.{p}"
    return m


def _official_neta_map() -> dict[str, str]:
    m = {}
    for i in range(5):
        for p in ("weight", "bias"):
            m[f"audio1.{2 * i}.{p}"] = f"audio_feat.{2 * i}.{p}"
            m[f"audio2.{2 * i}.{p}"] = f"audio_time.{2 * i}.{p}"
    for p in ("weight", "bias"):
        m[f"trans_audio.0.{p}"] = f"audio_fc.{p}"
        m[f"trans_cat2.0.{p}"] = f"landmark_head.{p}"
        for idx in (0, 2, 4):
            m[f"trans_pose.{idx}.{p}"] = f"pose_mlp.{idx}.{p}"
            m[f"trans_eye.{idx}.{p}"] = f"eye_mlp.{idx}.{p}"
            m[f"trans_cat1.{idx}.{p}"] = f"fuse_mlp.{idx}.{p}"
    return m


OFFICIAL_MAP = {"netG": _official_netg_map(), "netA": _official_neta_map(),
                "netD": {f"model.{i}.{p}": f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")}}


def _rename(sd: dict, mapping: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    unknown = sorted(k for k in sd if k not in mapping)
    if unknown:
        raise CheckpointError(f"{what}: unexpected keys {', '.join(unknown[:4])}"
                              f"{' …' if len(unknown) > 4 else ''} (not an APB2FaceV2 state dict?)")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what}: entry {k} is not a tensor")
        ours = mapping[k]
        # GC predictors are 1×1 convs in the release: drop the trailing 1×1.
        if ".weight_mlp." in ours or ".bias_mlp." in ours:
            v = v.reshape(v.shape[0], -1) if v.dim() == 4 else v
        out[ours] = v
    return out


def _load_into(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    if missing:
        raise CheckpointError(f"{what}: missing keys {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        raise CheckpointError(f"{what}: unexpected keys {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
    bad = [f"{k} {tuple(sd[k].shape)} vs expected {tuple(own[k].shape)}" for k in own if sd[k].shape != own[k].shape]
    bad += [f"{k} is {str(sd[k].dtype).replace('torch.', '')}, not a float tensor" for k in own
            if own[k].is_floating_point() and not sd[k].is_floating_point()]  # int/bool/complex: not weights
    if bad:
        raise CheckpointError(f"{what}: shape mismatch: {'; '.join(bad[:3])}{' …' if len(bad) > 3 else ''}")
    module.load_state_dict({k: v.float() for k, v in sd.items()})


def official_to_ours(netG: dict | None = None, netA: dict | None = None) -> tuple[AMNetConfig, dict]:
    """Rename an official state dict onto our module names; infer k and L from shapes."""
    sd: dict[str, torch.Tensor] = {}
    kernel, landmarks = 1, 212
    if netA is not None:
        a = _rename(netA, OFFICIAL_MAP["netA"], "netA")
        if "landmark_head.weight" in a:
            landmarks = a["landmark_head.weight"].shape[0]
        sd.update({f"fuser.{k}": v for k, v in a.items()})
    if netG is not None:
        g = _rename(netG, OFFICIAL_MAP["netG"], "netG")
        w = g.get("gcs.8.weight_mlp.2.weight")
        if w is not None:
            kernel = 3 if w.shape[0] == 128 * 9 else 1
        sd.update({f"reenactor.{k}": v for k, v in g.items()})
    return AMNetConfig(kernel=kernel, landmarks=landmarks, resolution=256, audio_delta="official"), sd


# ---------------------------------------------------------------- loading

def _split(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")}


def _read_official(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path.name} is not a checkpoint: neither safetensors nor a torch zip archive "
                              "(truncated, or a legacy pickle that is not loaded for safety)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad archives
        raise CheckpointError(f"{path.name} could not be read as a weights-only torch file: {first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a dict of state dicts")
    return obj


def load_checkpoint(path: str | os.PathLike, gc_form: str = "loop") -> Loaded:
    """Load either format; every failure is a CheckpointError with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = file_sha256(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        loaded = _load_safetensors(path, digest, gc_form)
    else:
        loaded = _load_official(path, digest, gc_form)
    parts = [("", loaded.model)] + ([("discriminator.", loaded.discriminator)] if loaded.discriminator else [])
    broken = [p + n for p, m in parts for n, t in m.state_dict().items()
              if t.is_floating_point() and not t.isfinite().all()]
    if broken:  # every output would be NaN: refused here, once, for every command
        raise CheckpointError(f"{path.name} holds NaN/Inf weights ({broken[0]}"
                              f"{f' and {len(broken) - 1} more tensors' if len(broken) > 1 else ''}): a diverged run?")
    loaded.model.eval()
    return loaded


def _load_safetensors(path: Path, digest: str, gc_form: str) -> Loaded:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({first_line(e, 120)})") from None
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path.name} is a safetensors file without an '{CONFIG_KEY}' entry: not an AMNet checkpoint")
    try:
        config = AMNetConfig.from_dict(json.loads(meta[CONFIG_KEY]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name}: bad {CONFIG_KEY} metadata ({e})") from None
    model = AMNet(config, gc_form)
    components = [c for c in ("fuser", "reenactor") if any(k.startswith(c + ".") for k in sd)]
    if not components:
        raise CheckpointError(f"{path.name} holds no fuser.* or reenactor.* tensors")
    for c in components:
        _load_into(getattr(model, c), _split(sd, c), f"{path.name} [{c}]")
    disc = None
    if any(k.startswith("discriminator.") for k in sd):
        disc = Discriminator()
        _load_into(disc, _split(sd, "discriminator"), f"{path.name} [discriminator]")
        components.append("discriminator")
    return Loaded(model, config, "amnet-safetensors", path, digest, components, disc)


def _load_official(path: Path, digest: str, gc_form: str) -> Loaded:
    obj = _read_official(path)
    if "netG" in obj or "netA" in obj:
        fmt, netA, netG = "official-G", obj.get("netA"), obj.get("netG")
    elif "audio_net" in obj:
        fmt, netA, netG = "official-fuser", obj["audio_net"], None
    elif "netD" in obj:
        raise CheckpointError(f"{path.name} is an official discriminator file (netD only); load the *_G.pth file")
    else:
        keys = ", ".join(sorted(map(str, obj))[:5])
        raise CheckpointError(f"{path.name} is not an AMNet checkpoint: expected netG/netA or audio_net, found {keys}")
    for name, sd in (("netA", netA), ("netG", netG)):
        if sd is not None and not isinstance(sd, dict):
            raise CheckpointError(f"{path.name}: {name} is a {type(sd).__name__}, not a state dict")
    config, sd = official_to_ours(netG, netA)
    model = AMNet(config, gc_form)
    components = [c for c in ("fuser", "reenactor") if any(k.startswith(c + ".") for k in sd)]
    if not components:
        raise CheckpointError(f"{path.name} holds no weights (netG and netA are empty)")
    for c in components:
        _load_into(getattr(model, c), _split(sd, c), f"{path.name} [{'netA' if c == 'fuser' else 'netG'}]")
    return Loaded(model, config, fmt, path, digest, components)


# ---------------------------------------------------------------- saving

def save_checkpoint(path: str | os.PathLike, model: AMNet, discriminator: Discriminator | None = None,
                    half: bool = False) -> Path:
    """Write the project's format: safetensors (optionally fp16 storage) + JSON config in its metadata."""
    from safetensors.torch import save_file

    tensors = {f"fuser.{k}": v for k, v in model.fuser.state_dict().items()}
    tensors |= {f"reenactor.{k}": v for k, v in model.reenactor.state_dict().items()}
    if discriminator is not None:
        tensors |= {f"discriminator.{k}": v for k, v in discriminator.state_dict().items()}
    tensors = {k: (v.half() if half else v).contiguous() for k, v in tensors.items()}
    meta = {CONFIG_KEY: json.dumps(model.config.to_dict()), "format": "amnet-deploy/1"}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def summary(loaded: Loaded) -> dict:
    """What `amnet-deploy info` prints."""
    from amnet.flops import gflops_per_frame

    m = loaded.model
    out = {
        "path": str(loaded.path),
        "format": loaded.format,
        "sha256": loaded.sha256,
        "components": loaded.components,
        "config": loaded.config.to_dict(),
        "parameters": {"fuser": count_parameters(m.fuser)},
    }
    if "reenactor" in loaded.components:
        out["parameters"]["reenactor"] = count_parameters(m.reenactor)
        out["gflops_per_frame"] = {f"{r}x{r}": round(gflops_per_frame(m, r), 2) for r in (256, 128)}
    if loaded.discriminator is not None:
        out["parameters"]["discriminator"] = count_parameters(loaded.discriminator)
    return out
