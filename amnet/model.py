"""AMNet: a Geometry-aware Fuser φ and a Multi-face Reenactor ψ (IEEE SPL 2021).

The architecture is written from ``shared/docs/amnet-architecture.md``; the
parameter counts there (ψ 4,085,200 at k = 1, φ 1,864,495 at L = 212,
D 2,766,913) are asserted by the tests.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from amnet.core.errors import InputError

GC_FORMS = ("loop", "grouped", "elementwise", "mobile")
AUDIO_DELTAS = ("official", "time")
GEO_DIM = 256


@dataclass
class AMNetConfig:
    """What a checkpoint must record to be rebuilt and fed correctly."""

    kernel: int = 1  # GC kernel size k; the release and the paper's size use 1
    landmarks: int = 212  # L: 212 (106 points, official) or 136 (dlib's 68)
    resolution: int = 256  # training resolution (ψ runs at any H, W divisible by 4)
    audio_delta: str = "official"  # delta convention of the audio features
    extra: dict = field(default_factory=dict)  # provenance: data, steps, ...

    def __post_init__(self):
        if self.kernel not in (1, 3):
            raise InputError(f"GC kernel must be 1 or 3, got {self.kernel}")
        if self.audio_delta not in AUDIO_DELTAS:
            raise InputError(f"audio_delta must be one of {AUDIO_DELTAS}, got {self.audio_delta!r}")
        for name in ("landmarks", "resolution"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 8192:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if self.landmarks % 2:
            raise InputError(f"landmarks must be even (x, y per point), got {self.landmarks}")
        if not isinstance(self.extra, dict):
            raise InputError(f"extra must be a mapping, got {type(self.extra).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AMNetConfig":
        known = {k: d[k] for k in ("kernel", "landmarks", "resolution", "audio_delta", "extra") if k in d}
        return cls(**known)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Fuser(nn.Module):
    """φ: audio, head pose and blink → f_Geo (N×256), plus the landmark head W_Geo."""

    def __init__(self, landmarks: int = 212):
        super().__init__()
        feat = [1, 72, 108, 162, 243, 256]
        audio_feat: list[nn.Module] = []
        for a, b in zip(feat[:-1], feat[1:]):  # over the feature axis: 60 → 2
            audio_feat += [nn.Conv2d(a, b, (1, 3), (1, 2), (0, 1)), nn.ReLU(inplace=True)]
        self.audio_feat = nn.Sequential(*audio_feat)
        audio_time: list[nn.Module] = []
        for _ in range(4):  # over time: 64 → 4
            audio_time += [nn.Conv2d(256, 256, (3, 1), (2, 1), (1, 0)), nn.ReLU(inplace=True)]
        audio_time += [nn.Conv2d(256, 256, (4, 1), (4, 1)), nn.ReLU(inplace=True)]  # 4 → 1
        self.audio_time = nn.Sequential(*audio_time)
        self.audio_fc = nn.Linear(512, 256)
        self.pose_mlp = _mlp([3, 64, 64, 64])
        self.eye_mlp = _mlp([2, 64, 64, 64])
        self.fuse_mlp = _mlp([384, 256, 256, GEO_DIM])
        self.landmark_head = nn.Linear(GEO_DIM, landmarks)
        self.mean_var_norm = False  # set by `mobile_form`: the standardisation as mean / var, not layer_norm

    def forward(self, audio: torch.Tensor, pose: torch.Tensor, eye: torch.Tensor):
        f_audio = self.audio_fc(self.audio_time(self.audio_feat(audio)).flatten(1))
        fused = self.fuse_mlp(torch.cat([f_audio, self.pose_mlp(pose), self.eye_mlp(eye)], dim=1))
        if self.mean_var_norm:
            # As N×1×1×256 over its last two dims: XNNPACK's mean takes that (an InstanceNorm's), not a 2-D one.
            f_geo = _standardise(fused.reshape(-1, 1, 1, GEO_DIM), (2, 3), 1e-5).reshape(fused.shape)
        else:
            f_geo = F.layer_norm(fused, (GEO_DIM,), eps=1e-5)  # per-sample standardisation, no affine
        return f_geo, self.landmark_head(f_geo)


def _standardise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """(x − mean) / sqrt(biased var + eps) over ``dims``: layer_norm / instance_norm without affine, written as
    the reductions and elementwise ops every mobile delegate takes."""
    centred = x - x.mean(dims, keepdim=True)
    return centred * torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)


def _cir(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True, groups: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.InstanceNorm2d(cout, eps=1e-5),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, 1×1 project; projected 1×1 shortcut when channels change."""

    def __init__(self, cin: int, cout: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.body = nn.Sequential(
            *_cir(cin, hidden, 1), *_cir(hidden, hidden, 3, groups=hidden), *_cir(hidden, cout, 1, relu=False)
        )
        self.shortcut = nn.Sequential(*_cir(cin, cout, 1, relu=False)) if cin != cout else nn.Identity()
        self.skip_scale: torch.Tensor | None = None  # set by export.gc_smoothing: undoes a folded GC factor

    def forward(self, x):
        skip = x if self.skip_scale is None else x * self.skip_scale
        return F.relu(self.body(x) + self.shortcut(skip))


class BasicResidual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_cir(channels, channels, 3), *_cir(channels, channels, 3, relu=False))
        self.skip_scale: torch.Tensor | None = None  # set by export.gc_smoothing: undoes a folded GC factor

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.skip_scale is None else x * self.skip_scale))


class GeometricController(nn.Module):
    """GC: a depthwise k×k convolution whose weights and bias are predicted per sample from f_Geo.

    Three forward forms compute the same thing:
    ``loop`` (one conv per sample, the reference), ``grouped`` (the batch folded
    into channels so one grouped conv serves every sample: the export form, with
    groups = N·C fixed by N), ``elementwise`` (broadcast multiply-adds that
    keep the batch dimension dynamic), and ``mobile`` (elementwise with every tap
    a slice, of the padded input and of the weight: the on-device form, see
    `mobile_form`).
    """

    def __init__(self, channels: int, kernel: int = 1, form: str = "loop"):
        super().__init__()
        self.channels, self.kernel, self.form = channels, kernel, form
        self.weight_mlp = _mlp([GEO_DIM, 256, channels * kernel * kernel])
        self.bias_mlp = _mlp([GEO_DIM, 256, channels])

    def forward(self, x: torch.Tensor, f_geo: torch.Tensor, predicted=None) -> torch.Tensor:
        """``predicted``: this GC's (weight, bias) computed already (by GCHeads), else from f_geo here."""
        return self.apply_to(x, *(predicted if predicted is not None else self.predict(f_geo)))

    def predict(self, f_geo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This sample's depthwise weights (N×C·k·k) and bias (N×C)."""
        return self.weight_mlp(f_geo), self.bias_mlp(f_geo)

    def apply_to(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k = self.kernel
        weight, bias = weight.reshape(n, c, k, k), bias.reshape(n, c)
        if self.form == "grouped":
            # Fold the batch into channels: sample i's channels become groups i·C … i·C+C−1.
            y = F.conv2d(x.reshape(1, n * c, h, w), weight.reshape(n * c, 1, k, k), bias.reshape(n * c),
                         padding=k // 2, groups=n * c)
            return y.reshape(n, c, h, w)
        if self.form == "elementwise":
            if k == 1:
                return x * weight.reshape(n, c, 1, 1) + bias.reshape(n, c, 1, 1)
            pad = k // 2
            xp = F.pad(x, (pad, pad, pad, pad))
            out = bias.reshape(n, c, 1, 1).expand(n, c, h, w)
            for i in range(k):
                for j in range(k):
                    out = out + xp[:, :, i:i + h, j:j + w] * weight[:, :, i, j].reshape(n, c, 1, 1)
            return out
        if self.form == "mobile":
            # XNNPACK delegates a conv only when its weight is constant, so the computed depthwise weight is
            # multiply-adds instead; a tap taken by indexing (weight[:, :, i, j]) is a `select` that ExecuTorch
            # leaves off the delegate, a slice is not.
            pad = k // 2
            xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
            out = bias.reshape(n, c, 1, 1)
            for i in range(k):
                for j in range(k):
                    out = out + xp[:, :, i:i + h, j:j + w] * weight[:, :, i:i + 1, j:j + 1]
            return out
        if self.form == "loop":
            return torch.cat([
                F.conv2d(x[i:i + 1], weight[i].unsqueeze(1), bias[i], padding=k // 2, groups=c) for i in range(n)
            ])
        raise InputError(f"unknown GC form {self.form!r}; choose one of {GC_FORMS}")


class GCHeads(nn.Module):
    """The nine GCs' weight and bias MLPs (eighteen 256→256→C MLPs) as one GEMM and two batched matmuls.

    Inference only (a model in training mode ignores it): on a GPU at batch 1
    each small linear layer is its own kernel launch, and these 54 launches are a
    fifth of the model's. Built from the GCs' current weights into non-persistent
    buffers (never saved: the checkpoint keeps the per-GC layout; module state
    only inside `export.onnx_export.fused_gc_heads`); rebuild after changing them.
    """

    def __init__(self, gcs: nn.ModuleList, persistent: bool = False):
        """``persistent``: the copies as module state, for an ONNX trace, which writes state as initializers
        (weights that FP16 conversion and INT8 scopes treat as such) and other tensors as Constant nodes."""
        super().__init__()
        mlps = [m for gc in gcs for m in (gc.weight_mlp, gc.bias_mlp)]
        hidden = mlps[0][0].out_features
        if any(len(m) != 3 or m[0].in_features != GEO_DIM or m[0].out_features != hidden for m in mlps):
            raise InputError("GC heads can only be fused for Linear-ReLU-Linear MLPs over f_Geo of one width")
        self.hidden = hidden
        with torch.no_grad():
            self.register_buffer("w1", torch.cat([m[0].weight for m in mlps]).clone(), persistent=persistent)
            self.register_buffer("b1", torch.cat([m[0].bias for m in mlps]).clone(), persistent=persistent)
            # Weight heads (C·k·k wide) and bias heads (C wide) as two batched matmuls, each padded only to the
            # widest of its own kind; the padding's outputs are never read.
            for kind, group in (("weight", [gc.weight_mlp for gc in gcs]), ("bias", [gc.bias_mlp for gc in gcs])):
                widest = max(m[2].out_features for m in group)
                w2, b2 = torch.zeros(len(group), hidden, widest), torch.zeros(len(group), 1, widest)
                for i, m in enumerate(group):
                    w2[i, :, :m[2].out_features] = m[2].weight.t()
                    b2[i, 0, :m[2].out_features] = m[2].bias
                self.register_buffer(f"{kind}_w2", w2, persistent=persistent)
                self.register_buffer(f"{kind}_b2", b2, persistent=persistent)
        self.weight_sizes = [gc.weight_mlp[2].out_features for gc in gcs]
        self.bias_sizes = [gc.bias_mlp[2].out_features for gc in gcs]

    def forward(self, f_geo: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gcs = len(self.weight_sizes)
        h = F.relu(F.linear(f_geo, self.w1, self.b1))  # N × (GCs · 2 · hidden), weight then bias MLP per GC
        h = h.reshape(-1, gcs, 2, self.hidden)  # -1, not len(f_geo): a traced batch stays symbolic
        weights = torch.baddbmm(self.weight_b2, h[:, :, 0].transpose(0, 1), self.weight_w2)  # GCs × N × widest
        biases = torch.baddbmm(self.bias_b2, h[:, :, 1].transpose(0, 1), self.bias_w2)
        return [(weights[i, :, :w], biases[i, :, :b]) for i, (w, b) in enumerate(zip(self.weight_sizes,
                                                                                     self.bias_sizes))]


class Reenactor(nn.Module):
    """ψ: encoder, nine cells each followed by a GC module, decoder."""

    CELL_CHANNELS = (152,) * 8 + (128,)

    def __init__(self, kernel: int = 1):
        super().__init__()
        self.encoder = nn.Sequential(*_cir(3, 24, 7), *_cir(24, 40, 3, 2), *_cir(40, 88, 3, 2))
        self.cells = nn.ModuleList(
            [InvertedResidual(88, 152, 4)]
            + [BasicResidual(152) for _ in range(4)]
            + [InvertedResidual(152, 152, 4)]
            + [nn.Sequential(*_cir(152, 152, 1)) for _ in range(2)]
            + [nn.Sequential(*_cir(152, 128, 1))]
        )
        self.gcs = nn.ModuleList([GeometricController(c, kernel) for c in self.CELL_CHANNELS])
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 104, 3, 2, 1, output_padding=1, bias=False), nn.InstanceNorm2d(104), nn.ReLU(True),
            nn.ConvTranspose2d(104, 24, 3, 2, 1, output_padding=1, bias=False), nn.InstanceNorm2d(24), nn.ReLU(True),
            nn.Conv2d(24, 3, 7, 1, 3, bias=False), nn.Tanh(),
        )
        self.gc_heads: GCHeads | None = None  # set by fuse_gc_heads()

    def forward(self, source: torch.Tensor, f_geo: torch.Tensor) -> torch.Tensor:
        check_spatial(source.shape)
        x = self.encoder(source)
        fused = self.gc_heads is not None and not self.training  # its weights are copies: inference only
        predicted = self.gc_heads(f_geo) if fused else [None] * len(self.gcs)
        for cell, gc, p in zip(self.cells, self.gcs, predicted):
            x = gc(cell(x), f_geo, p)
        return self.decoder(x)

    def fuse_gc_heads(self, persistent: bool = False) -> None:
        """Compute every GC's weights and bias in three kernels instead of 54 (inference; see GCHeads)."""
        self.gc_heads = GCHeads(self.gcs, persistent).to(self.gcs[0].bias_mlp[0].weight)


class Discriminator(nn.Module):
    """D: PatchGAN on concat(source, image), training only."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(6, 64, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout, stride in ((64, 128, 2), (128, 256, 2), (256, 512, 1)):
            layers += [nn.Conv2d(cin, cout, 4, stride, 1, bias=False), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(512, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, source, image):
        return self.model(torch.cat([source, image], dim=1))


class AMNet(nn.Module):
    """φ then ψ: (source, audio, pose, eye) → (face, landmarks)."""

    def __init__(self, config: AMNetConfig | None = None, gc_form: str = "loop"):
        super().__init__()
        self.config = config or AMNetConfig()
        self.fuser = Fuser(self.config.landmarks)
        self.reenactor = Reenactor(self.config.kernel)
        self._set_gc_form(gc_form)

    def _set_gc_form(self, form: str) -> None:
        if form not in GC_FORMS:
            raise InputError(f"unknown GC form {form!r}; choose one of {GC_FORMS}")
        for gc in self.reenactor.gcs:
            gc.form = form

    @contextmanager
    def gc_form(self, form: str):
        """Run GC in another form inside the block; the previous form comes back after it.

        The three forms compute the same function (within fp32 rounding): the choice is how
        it is traced or executed (loop: reference, grouped: export, elementwise:
        dynamic batch), so the model is never switched for good from outside.
        """
        previous = self.reenactor.gcs[0].form
        self._set_gc_form(form)
        try:
            yield self
        finally:
            self._set_gc_form(previous)

    def forward(self, source, audio, pose, eye):
        f_geo, landmarks = self.fuser(audio, pose, eye)
        return self.reenactor(source, f_geo), landmarks


class InstanceNormMeanVar(nn.Module):
    """`nn.InstanceNorm2d` without affine or running stats, written as mean and biased variance.

    ExecuTorch lowers InstanceNorm2d to `_native_batch_norm_legit.no_stats` + `repeat`, which XNNPACK does not
    take; these reductions and elementwise ops it does (LiteRT delegates both ways).
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _standardise(x, (2, 3), self.eps)


def mobile_form(model: AMNet) -> AMNet:
    """A copy of ``model`` in the on-device export form: the GC in its ``mobile`` form, InstanceNorm and the
    fuser's layer_norm as mean/var (ExecuTorch keeps both off XNNPACK otherwise).

    The same function as the loop form (tests/test_mobile.py); meant for a fixed batch (1 by default in the
    builders): a symbolic batch leaves the taps' slices off ExecuTorch's delegate. The GC heads stay per GC
    (Linear layers, which the delegate takes), never `GCHeads` (whose per-GC outputs are `select`s).
    """
    mobile = copy.deepcopy(model).eval()
    mobile.reenactor.gc_heads = None
    for parent in mobile.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                if child.affine or child.track_running_stats:
                    raise InputError(f"{name}: only InstanceNorm2d without affine or running stats has a "
                                     "mean/var form here")
                setattr(parent, name, InstanceNormMeanVar(child.eps))
    mobile.fuser.mean_var_norm = True
    mobile._set_gc_form("mobile")
    return mobile


class ReenactorHalf(nn.Module):
    """ψ alone, for users who cache f_Geo per audio frame: (source, f_geo) → face."""

    def __init__(self, model: AMNet):
        super().__init__()
        self.reenactor = model.reenactor

    def forward(self, source, f_geo):
        return self.reenactor(source, f_geo)


class FuserHalf(nn.Module):
    """φ alone: (audio, pose, eye) → (f_geo, landmarks)."""

    def __init__(self, model: AMNet):
        super().__init__()
        self.fuser = model.fuser

    def forward(self, audio, pose, eye):
        return self.fuser(audio, pose, eye)


def check_spatial(shape) -> None:
    if len(shape) != 4 or shape[1] != 3:
        raise InputError(f"source must be N×3×H×W, got shape {tuple(shape)}")
    h, w = shape[-2:]
    if h % 4 or w % 4 or h < 8 or w < 8:
        raise InputError(f"source H and W must be divisible by 4 (and ≥ 8); got {h}×{w}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
