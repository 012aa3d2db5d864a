"""Training: L = L_G + 100·L_C + L_Adv, Adam(2e-4, β = (0.5, 0.999)), LSGAN adversary.

Training pairs: the drive frame's signals and target, with a random other frame
of the same person as the source. A checkpoint (safetensors) and the optimiser
state (``train_state.pt``, tensors and numbers only, read back with
``weights_only=True``) are written every epoch; ``resume=True`` picks them up.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amnet.checkpoint import load_checkpoint, save_checkpoint
from amnet.core.fileio import atomic_write
from amnet.model import AMNet, AMNetConfig, Discriminator

LAMBDA_C = 100.0


@dataclass
class TrainConfig:
    epochs: int = 10
    batch: int = 8
    lr: float = 2e-4
    resolution: int = 128
    max_minutes: float | None = None  # stop cleanly after this much wall time
    seed: int = 0
    threads: int | None = None
    flip: bool = False  # mirror half the pairs (images, yaw/roll, eyes, landmarks)
    decay_from: int | None = None  # epoch after which the lr falls linearly to 0 at `epochs` (pix2pix)
    crop: int | None = None  # train on random crop×crop windows of the resolution-sized pairs (ψ is convolutional)


# dlib's 68 points under a left-right mirror: jaw, brows, nose, eyes, mouth each reversed about the midline.
MIRROR_68 = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
             + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
             + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])


def mirror(source, pose, eye, target, landmarks):
    """The same pair seen in a mirror: yaw and roll change sign, the eyes swap, the landmarks reflect."""
    pts = landmarks.reshape(len(landmarks), -1, 2)[:, MIRROR_68].clone()
    pts[..., 0] = 255 / 256 - pts[..., 0]  # x in crop pixels / 256
    return (source.flip(-1), pose * pose.new_tensor([-1.0, 1.0, -1.0]), eye.flip(-1), target.flip(-1),
            pts.reshape(len(landmarks), -1))


class PairSampler:
    """Drive frame i with a random other frame of the same identity as its source."""

    def __init__(self, data: dict[str, np.ndarray], resolution: int, seed: int = 0, flip: bool = False,
                 crop: int | None = None):
        from amnet.realdata import to_float

        self.faces = torch.from_numpy(to_float(data["face"], resolution))
        self.audio = torch.from_numpy(data["audio"][:, None].astype(np.float32))
        self.pose = torch.from_numpy(data["pose"].astype(np.float32))
        self.eye = torch.from_numpy(data["eye"].astype(np.float32))
        self.landmarks = torch.from_numpy(data["landmarks"].astype(np.float32))
        self.identity = np.asarray(data["identity"])
        self.by_id = {i: np.flatnonzero(self.identity == i) for i in np.unique(self.identity)}
        self.rng = np.random.default_rng(seed)
        if flip and self.landmarks.shape[1] != 136:
            from amnet.core.errors import InputError

            raise InputError(f"--flip mirrors dlib's 68 landmarks (136 values); this set has {self.landmarks.shape[1]}")
        self.flip = flip
        if crop is not None and not (0 < crop <= resolution and crop % 4 == 0):
            from amnet.core.errors import InputError

            raise InputError(f"--crop must be a multiple of 4 in (0, {resolution}], got {crop}")
        self.crop = crop

    def __len__(self):
        return len(self.faces)

    def batches(self, batch: int):
        order = self.rng.permutation(len(self))
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s:s + batch]
            src = np.array([self.rng.choice(self.by_id[self.identity[i]]) for i in idx])
            source, pose, eye = self.faces[src], self.pose[idx], self.eye[idx]
            target, landmarks = self.faces[idx], self.landmarks[idx]
            if self.flip:
                m = torch.from_numpy(self.rng.random(len(idx)) < 0.5)
                if m.any():
                    # Indexing with idx/src made copies, so mirroring in place leaves the data set alone.
                    source[m], pose[m], eye[m], target[m], landmarks[m] = mirror(
                        source[m], pose[m], eye[m], target[m], landmarks[m])
            if self.crop and self.crop < source.shape[-1]:
                # One window per batch, the same for source and target: 256²-scale detail at a quarter of the cost.
                y, x = self.rng.integers(0, source.shape[-1] - self.crop + 1, size=2)
                window = (..., slice(y, y + self.crop), slice(x, x + self.crop))
                source, target = source[window].contiguous(), target[window].contiguous()
            yield source, self.audio[idx], pose, eye, target, landmarks


def check_training_data(data: dict[str, np.ndarray]) -> int:
    """The number of pairs, or one InputError naming what is wrong (a bad set would train NaN or crash midway)."""
    from amnet.core.errors import InputError

    want = {"face": (4, "u"), "audio": (3, "f"), "pose": (2, "f"), "eye": (2, "f"), "landmarks": (2, "f"),
            "identity": (1, "iu")}
    n = len(data["face"]) if "face" in data and data["face"].ndim else 0
    for key, (ndim, kinds) in want.items():
        v = data.get(key)
        if v is None or v.ndim != ndim or v.dtype.kind not in kinds or len(v) != n:
            got = "missing" if v is None else f"{v.dtype} {'×'.join(map(str, v.shape))}"
            kind = {"u": "uint8", "f": "float", "iu": "integer"}[kinds]
            raise InputError(f"training data: {key} must be {ndim}-D {kind} with {n} rows (one per face), got {got}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise InputError(f"training data: {key} holds NaN/Inf")
    if data["face"].shape[-1] != 3 or data["audio"].shape[1:] != (64, 60) or data["pose"].shape[1] != 3 \
            or data["eye"].shape[1] != 2:
        raise InputError("training data: face must be N×H×W×3, audio N×64×60, pose N×3, eye N×2 "
                         "(as `amnet-deploy dataset` writes them)")
    return n


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Constant, then (from ``decay_from``) linear decay to zero at the last epoch."""
    if cfg.decay_from is None or epoch < cfg.decay_from:
        return cfg.lr
    return cfg.lr * (cfg.epochs - epoch) / max(cfg.epochs - cfg.decay_from, 1)


def adversarial_step(G: AMNet, D: Discriminator, opt_g, opt_d, batch) -> dict:
    """One D update (LSGAN), then one G update on L_G + 100·L_C + L_Adv; returns the losses."""
    source, audio, pose, eye, target, landmarks = batch
    fake, pred_landmarks = G(source, audio, pose, eye)
    d_real, d_fake = D(source, target), D(source, fake.detach())
    loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    l_geo = F.l1_loss(pred_landmarks, landmarks)
    l_content = F.l1_loss(fake, target)
    g_fake = D(source, fake)  # after D's update, so the graph sees D's current weights
    l_adv = F.mse_loss(g_fake, torch.ones_like(g_fake))
    loss_g = l_geo + LAMBDA_C * l_content + l_adv
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return {"L": loss_g.item(), "L_G": l_geo.item(), "L_C": l_content.item(), "L_Adv": l_adv.item(),
            "D": loss_d.item()}


def train(data: dict[str, np.ndarray], out_dir: Path, model_config: AMNetConfig, cfg: TrainConfig,
          resume: bool = False, progress: bool = True, init: str | Path | None = None,
          overwrite: bool = False) -> dict:
    """Train (or, with ``init``, fine-tune from a checkpoint's weights); ``resume`` continues the run folder.

    A folder that already holds a run is replaced only with ``overwrite``: a fresh run writes its first
    checkpoint over the old one after one epoch, and a trained model is hours of work."""
    from tqdm import tqdm

    from amnet.core.errors import InputError, first_line

    check_training_data(data)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt, state_path = out_dir / "amnet.safetensors", out_dir / "train_state.pt"
    held = [p.name for p in (ckpt, state_path) if p.exists()]
    if held and not resume and not overwrite:
        raise InputError(f"--output {out_dir} already holds a run ({', '.join(held)}): pass --resume to continue "
                         "it, --overwrite to replace it, or train into another --output")
    if resume and ckpt.is_file() and not state_path.is_file():  # resuming "from scratch" would replace a model
        raise InputError(f"{out_dir} holds amnet.safetensors but no train_state.pt: nothing to resume from "
                         "(train into another --output)")
    G, D = AMNet(model_config, gc_form="grouped"), Discriminator()  # same maths as the loop, one conv per GC
    opt_g = torch.optim.Adam(G.parameters(), cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), cfg.lr, betas=(0.5, 0.999))
    history: list[dict] = []
    start_epoch, step, elapsed = 0, 0, 0.0
    started_from = None  # the checkpoint a fine-tune started from (provenance)
    if resume and ckpt.is_file() and state_path.is_file():
        import zipfile

        loaded = load_checkpoint(ckpt)
        have = (loaded.config.kernel, loaded.config.landmarks, loaded.config.audio_delta)
        want = (model_config.kernel, model_config.landmarks, model_config.audio_delta)
        if have != want:
            raise InputError(f"{out_dir} is a run with GC k, L, audio deltas = {have}; this data and these options "
                             f"make {want}: resume it with the same, or train into another --output")
        started_from = loaded.config.extra.get("init")
        try:  # torch's zip format only: nothing else reaches the unpickler, which is weights_only anyway
            if not zipfile.is_zipfile(state_path):
                raise ValueError("not a torch zip archive")
            state = torch.load(state_path, weights_only=True)
            G.load_state_dict(loaded.model.state_dict())
            if loaded.discriminator is not None:
                D.load_state_dict(loaded.discriminator.state_dict())
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            start_epoch, step, elapsed = int(state["epoch"]), int(state["step"]), float(state["elapsed"])
            history = json.loads(state["history"])
        except Exception as e:  # noqa: BLE001 - zip, unpickler, key and shape errors all mean the same
            raise InputError(f"{state_path} is damaged or from another run ({first_line(e, 100)}): "
                             "train into another --output") from None
    elif init is not None:  # a fresh run folder only: --resume continues from the folder's own state
        loaded = load_checkpoint(init)
        start = loaded.require_full()
        have = (start.config.kernel, start.config.landmarks, start.config.audio_delta)
        want = (model_config.kernel, model_config.landmarks, model_config.audio_delta)
        if have != want:
            raise InputError(f"{init}: GC k, L, audio deltas = {have} cannot start a run on {want}")
        G.load_state_dict(start.state_dict())
        started_from = str(init)
        if loaded.discriminator is not None:
            D.load_state_dict(loaded.discriminator.state_dict())
    sampler = PairSampler(data, cfg.resolution, cfg.seed + start_epoch, cfg.flip, cfg.crop)
    out_dir.mkdir(parents=True, exist_ok=True)  # after every check: a refused run leaves no folder behind
    G.train(), D.train()
    t0 = time.time() - elapsed
    stop = False
    for epoch in range(start_epoch, cfg.epochs):
        for group in (*opt_g.param_groups, *opt_d.param_groups):
            group["lr"] = learning_rate(cfg, epoch)
        bar = tqdm(sampler.batches(cfg.batch), total=len(sampler) // cfg.batch, disable=not progress,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        sums: dict[str, float] = {}
        n = 0
        for batch in bar:
            parts = adversarial_step(G, D, opt_g, opt_d, batch)
            step += 1
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            if cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60:
                stop = True
                break
        history.append({"epoch": epoch + 1, "step": step, "minutes": round((time.time() - t0) / 60, 2),
                        "lr": learning_rate(cfg, epoch),
                        **{k: round(v / max(n, 1), 5) for k, v in sums.items()}})
        G.config.extra = {**({"init": started_from} if started_from else {}), "steps": step, "epochs": epoch + 1, "train_resolution": cfg.resolution,
                          **({"crop": cfg.crop} if cfg.crop else {}),
                          "batch": cfg.batch, "wall_minutes": history[-1]["minutes"], "final_losses": history[-1]}
        save_checkpoint(ckpt, G, D)
        state = {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "epoch": epoch + 1, "step": step,
                 "elapsed": time.time() - t0, "history": json.dumps(history)}
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))
        if stop:
            break
    return {"checkpoint": str(ckpt), "steps": step, "history": history}
