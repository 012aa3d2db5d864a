"""Speech → AMNet's audio features, offline or as a stream, with one implementation for both.

The features are librosa's ``mfcc`` (20 coefficients of a 128-band Slaney mel
spectrogram, n_fft 2048 with a periodic Hann window, hop 512, centred frames
zero-padded at both ends, 44.1 kHz) plus two ±2-frame regression deltas. They
are computed here frame by frame in float64, so a stream computes each frame
once its 2048 samples have arrived and gets the same numbers as a whole file.

One step of librosa is not causal: ``power_to_db`` clips every value at
(the loudest value in the *whole* signal − 80 dB). ``floor="global"`` does that
(how the training data were made: `amnet.signals.audio_features`);
``floor="causal"`` clips at (the loudest value *so far*, never below
``PRIOR_PEAK_DB``) − 80 dB, which a stream can compute. ``reenact`` uses the
causal floor offline too, so its stream and its file runs agree.

Latency: the window of video frame i is centred on MFCC frame c = ⌊i/fps·44100/512⌋
and spans [c−32, c+32); its last frame, c+31, is centred 31 hops after c and needs
1024 more samples (the half FFT window), so a frame exists at the earliest
``window_ready_seconds(i, fps)`` after the start of the audio: (31·512 + 1024)/44100
= 383.2 ms after MFCC frame c (≤ 1 hop before the video frame's own moment), and
4 hops (46 ms) more with 'time' deltas, whose deltas of deltas look 4 frames ahead.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from amnet.core.errors import InputError

SAMPLE_RATE = 44100
HOP = 512
N_FFT = 2048
N_MELS = 128
N_MFCC = 20
WINDOW = 64  # feature frames per video frame, centred
TOP_DB = 80.0
AMIN = 1e-10
# The loudest mel band of the training speech (espeak-ng tracks: 27.8 and 29.5 dB; CMU ARCTIC a0007: 26.1 dB):
# the causal floor starts here, so the leading silence of a stream is clipped as a whole file's would be.
PRIOR_PEAK_DB = 28.0
FLOORS = ("global", "causal")
DELTAS = ("official", "time")
DELTA_REACH = 4  # 'time' deltas of deltas look 2 + 2 frames ahead


@lru_cache(maxsize=1)
def _basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Hann window, mel filters, DCT-II rows) in float64, built by the libraries that define them."""
    import librosa
    import scipy.fft
    import scipy.signal

    window = scipy.signal.get_window("hann", N_FFT, fftbins=True)
    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, dtype=np.float64)
    dct = scipy.fft.dct(np.eye(N_MELS), type=2, norm="ortho", axis=0)[:N_MFCC]
    return window, mel, dct


def warm_up() -> None:
    """Build the window, filters and DCT now (the first call imports librosa: seconds)."""
    _basis()


def mel_db(frames: np.ndarray) -> np.ndarray:
    """n×2048 samples → n×128 mel power in dB (ref 1.0, amin 1e-10), not yet clipped."""
    window, mel, _ = _basis()
    spec = np.fft.rfft(frames * window, axis=1)
    power = spec.real ** 2 + spec.imag ** 2
    return 10.0 * np.log10(np.maximum(AMIN, power @ mel.T))


def delta(x: np.ndarray, axis: int) -> np.ndarray:
    """±2-frame regression slope with edge padding: librosa.feature.delta(width=5, mode='nearest')."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    p = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    take = lambda k: np.take(p, np.arange(2 + k, 2 + k + n), axis=axis)  # noqa: E731 - x shifted by k
    return (2 * (take(2) - take(-2)) + take(1) - take(-1)) / 10.0


class SpeechFeatures:
    """Feed 44.1 kHz mono samples in chunks of any size; read the finished 60-row feature frames.

    ``push`` returns how many feature frames are final; ``finish`` marks the end of the
    audio (the trailing zero padding of the last centred frames). ``features`` is 60×T.
    """

    def __init__(self, delta_convention: str = "official", floor: str = "causal"):
        if delta_convention not in DELTAS:
            raise InputError(f"audio delta must be one of {', '.join(DELTAS)}, got {delta_convention!r}")
        if floor not in FLOORS:
            raise InputError(f"dB floor must be one of {', '.join(FLOORS)}, got {floor!r}")
        self.delta, self.floor = delta_convention, floor
        self._pending = np.zeros(N_FFT // 2)  # the first centred frame's zero padding
        self._db: list[np.ndarray] = []  # global floor: mel dB kept until the end
        self._mfcc: list[np.ndarray] = []  # T×20 rows
        self._peak = PRIOR_PEAK_DB
        self._features: list[np.ndarray] = []  # final 60-vectors
        self.samples = 0  # real samples pushed
        self.finished = False

    # -- input
    def push(self, samples: np.ndarray) -> int:
        if self.finished:
            raise InputError("audio pushed after the end of the stream")
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        self.samples += len(samples)
        self._pending = np.concatenate([self._pending, samples])
        self._frames(final=False)
        return self.ready

    def finish(self) -> int:
        if not self.finished:
            self.finished = True
            self._pending = np.concatenate([self._pending, np.zeros(N_FFT // 2)])
            self._frames(final=True)
        return self.ready

    @property
    def ready(self) -> int:
        return len(self._features)

    @property
    def total_frames(self) -> int | None:
        """1 + samples // HOP once finished (librosa's centred frame count), else None."""
        return 1 + self.samples // HOP if self.finished else None

    def features(self) -> np.ndarray:
        return np.stack(self._features, axis=1) if self._features else np.zeros((3 * N_MFCC, 0))

    def window(self, frame: int, fps: float) -> np.ndarray:
        """64×60 window of a video frame from the frames so far (edge frames past the end, once finished)."""
        c = window_centre(frame, fps)
        idx = np.arange(c - WINDOW // 2, c + WINDOW // 2)
        idx = np.clip(idx, 0, self.total_frames - 1) if self.finished else np.maximum(idx, 0)  # edge: true ends only
        if idx.max() >= self.ready:
            raise InputError(f"video frame {frame} needs audio features up to {idx.max()}, only {self.ready} final")
        return np.stack([self._features[i] for i in idx])

    # -- the work
    def _frames(self, final: bool) -> None:
        n = 0 if len(self._pending) < N_FFT else 1 + (len(self._pending) - N_FFT) // HOP
        if n > 0:
            idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
            db = mel_db(self._pending[idx])
            self._pending = self._pending[n * HOP:]
            if self.floor == "global":
                self._db.append(db)
            else:
                peaks = np.maximum.accumulate(np.maximum(db.max(axis=1), self._peak))
                self._peak = float(peaks[-1])
                self._add_mfcc(np.maximum(db, (peaks - TOP_DB)[:, None]))
        if final and self.floor == "global" and self._db:
            db = np.concatenate(self._db)
            self._add_mfcc(np.maximum(db, db.max() - TOP_DB))
            self._db = []
        self._emit(final)

    def _add_mfcc(self, clipped_db: np.ndarray) -> None:
        _, _, dct = _basis()
        self._mfcc.extend(clipped_db @ dct.T)

    def _emit(self, final: bool) -> None:
        total = len(self._mfcc)
        done = self.ready
        if self.delta == "official":  # along the 20 coefficients of each frame: nothing to wait for
            rows = np.array(self._mfcc[done:]) if total > done else np.zeros((0, N_MFCC))
            if len(rows):
                d1 = delta(rows, axis=1)
                self._features.extend(np.concatenate([rows, d1, delta(d1, axis=1)], axis=1))
            return
        # along time: frame t is final once frames up to t + 4 exist (or the audio has ended); the block starts
        # 4 frames back so the rows kept never see the block's own edge padding, only the signal's
        last = total if final else total - DELTA_REACH
        if last <= done:
            return
        lo = max(0, done - DELTA_REACH)
        block = np.array(self._mfcc[lo:total])
        d1 = delta(block, axis=0)
        d2 = delta(d1, axis=0)
        rows = np.concatenate([block, d1, d2], axis=1)[done - lo:last - lo]
        self._features.extend(rows)


def features(samples: np.ndarray, delta_convention: str = "official", floor: str = "global") -> np.ndarray:
    """60×T features of a whole 44.1 kHz mono signal."""
    stream = SpeechFeatures(delta_convention, floor)
    stream.push(samples)
    stream.finish()
    return stream.features()


def window_centre(frame: int, fps: float) -> int:
    """The MFCC frame a video frame's window is centred on."""
    return int(frame / fps * SAMPLE_RATE / HOP)


def window(feats: np.ndarray, frame: int, fps: float) -> np.ndarray:
    """64×60 window of video frame ``frame`` (60×T features); indices past either end take the edge frame."""
    c = window_centre(frame, fps)
    idx = np.clip(np.arange(c - WINDOW // 2, c + WINDOW // 2), 0, feats.shape[1] - 1)
    return feats[:, idx].T


def frames_needed(frame: int, fps: float) -> int:
    """Final feature frames a video frame's window needs before the audio has ended."""
    return window_centre(frame, fps) + WINDOW // 2


def window_ready_seconds(frame: int, fps: float, delta_convention: str = "official") -> float:
    """When, after the audio starts, the last sample of a frame's window has been heard (the latency floor)."""
    last = frames_needed(frame, fps) - 1 + (DELTA_REACH if delta_convention == "time" else 0)
    return (last * HOP + N_FFT // 2) / SAMPLE_RATE


def video_frames(samples: int, fps: float) -> int:
    """Video frames whose centre lies inside the audio: ⌈duration · fps⌉."""
    return int(np.ceil(samples / SAMPLE_RATE * fps - 1e-9))


SILENCE = 1e-3  # peak below -60 dBFS: nothing to drive the mouth with
# Float PCM is nominally within ±1; a sample a thousand times louder is a broken file (1e30 makes AAC fail).
MAX_SAMPLE = 1e3


class SpeechCheck:
    """check_speech a chunk at a time, for audio that is streamed rather than held: ``push`` each chunk
    (non-finite or absurd samples are refused at once), then ``finish`` (too short or silent)."""

    def __init__(self, name, rate: int = SAMPLE_RATE):
        self.name, self.rate = name, rate
        self.samples, self.peak = 0, 0.0

    def push(self, samples: np.ndarray) -> np.ndarray:
        if not np.isfinite(samples).all():
            raise InputError(f"{self.name} holds NaN or infinite samples")
        peak = float(np.abs(samples).max(initial=0.0))
        if peak > MAX_SAMPLE:
            raise InputError(f"{self.name} holds a sample of magnitude {peak:.3g}, over {MAX_SAMPLE:g} "
                             "(speech is within ±1): not a real recording")
        self.samples += len(samples)
        self.peak = max(self.peak, peak)
        return samples

    def finish(self) -> int:
        """The number of samples, once they are enough speech to drive a face."""
        if self.samples < self.rate // 10:
            raise InputError(f"{self.name}: {self.samples / self.rate:.2f} s of audio, need at least 0.1 s")
        if self.peak < SILENCE:
            raise InputError(f"{self.name} is silent (peak below -60 dBFS): nothing to drive the mouth with")
        return self.samples


def check_speech(samples: np.ndarray, name, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech samples fit to drive a face: at least 0.1 s, finite, within ±MAX_SAMPLE, not silent; else one
    InputError."""
    check = SpeechCheck(name, rate)
    check.push(samples)
    check.finish()
    return samples
