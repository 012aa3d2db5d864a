"""One stream's state, kept with its connection: the face, the audio features so far, the pose/blink schedule,
which frames are ready and which are done.

The audio path is `reenact --stream`'s (amnet.reenact.run.stream): PCM → 44.1 kHz → `speech.SpeechFeatures`
with the causal dB floor; frame i is ready once ``speech.frames_needed(i)`` feature frames are final (or the
stream has ended). The frame computed next is `run.next_frame` with drop_late: the oldest ready frame whose
audio completed at most one frame period before the newest ready one's, else the newest (a frame a newer one
has made stale is dropped for it). Frames completed together (the stream's end pads the last ~0.4 s at once; a
resumed session gets its audio again at once) are all computed, in order: dropping them would gain no newer
frame, and lost ~3 % of every stream's frames.
"""
from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from amnet import speech
from amnet.reenact import drive
from amnet.reenact.run import next_frame
from amnet.serve.protocol import AHEAD_S, INVALID, POLICY, ProtocolError, resume_base


class Session:
    def __init__(self, config: dict, source: drive.Source, source_feed: np.ndarray, delta: str,
                 max_session_s: float):
        self.rate, self.fps, self.output = config["rate"], config["fps"], config["output"]
        self.delta = delta
        self.max_session_s = max_session_s
        self.source_feed = source_feed  # 1×3×R×R in [-1, 1]
        self.feats = speech.SpeechFeatures(delta, floor="causal")
        self.resample = None if self.rate == speech.SAMPLE_RATE else _Resampler(self.rate)
        # Pose held at the source's own, blinks on the fixed schedule, for the longest session allowed.
        n = speech.video_frames(int((max_session_s + 1) * speech.SAMPLE_RATE), self.fps) + 1
        self.pose = np.repeat(source.pose[None].astype(np.float32), n, 0)
        self.eye = drive.blink_eye(source.eye, np.arange(n) / self.fps)
        # A resumed session (protocol: resume) numbers its frames from `base`; those before the resume point were
        # served by the session it replaces.
        self.base = resume_base(config.get("resume", 0), self.fps)
        self.ready_at: list[float] = []  # per ready frame: when the audio completing its window arrived
        self.done = config.get("resume", 0) - self.base  # frames [0, done) were computed, dropped or served before
        self.dropped = 0
        self.served = 0
        self.received = 0  # PCM samples at the client's rate
        self.first_chunk: float | None = None
        self.ended = False

    @property
    def ready(self) -> int:
        return len(self.ready_at)

    @property
    def finished(self) -> bool:
        return self.ended and self.done >= self.ready

    def push(self, data: bytes, now: float | None = None) -> None:
        """One PCM chunk (s16le mono at the session's rate)."""
        now = time.perf_counter() if now is None else now
        if len(data) % 2:
            raise ProtocolError(INVALID, f"a PCM chunk of {len(data)} bytes: s16le needs an even count")
        self.first_chunk = now if self.first_chunk is None else self.first_chunk
        self.received += len(data) // 2
        heard = self.received / self.rate
        if heard > self.max_session_s:
            raise ProtocolError(POLICY, f"session audio passed the {self.max_session_s:g} s limit")
        if heard > now - self.first_chunk + len(data) / 2 / self.rate + AHEAD_S:
            raise ProtocolError(POLICY, f"audio sent faster than real time (more than {AHEAD_S:g} s ahead)")
        pcm = np.frombuffer(data, dtype="<i2")
        samples = pcm / 32768.0 if self.resample is None else self.resample(pcm)
        self.feats.push(samples)
        while speech.frames_needed(self.ready, self.fps) <= self.feats.ready:
            self.ready_at.append(now)

    def finish(self, now: float | None = None) -> None:
        """The client's end: the last frames' windows are completed by edge padding, all at this moment."""
        now = time.perf_counter() if now is None else now
        if self.resample is not None:
            tail = self.resample(None)
            if len(tail):
                self.feats.push(tail)
        self.feats.finish()
        self.ended = True
        self.ready_at += [now] * max(0, speech.video_frames(self.feats.samples, self.fps) - self.ready)

    def take(self) -> int | None:
        """The frame to compute next, or None while none is ready; frames it skips count as dropped."""
        if self.done >= self.ready:
            return None
        newest = self.ready_at[self.ready - 1]
        frame = next_frame(self.done, self.ready, lambda i: newest - self.ready_at[i], 1 / self.fps, drop_late=True)
        self.dropped += frame - self.done
        self.done = frame + 1
        self.served += 1
        return frame

    def feeds(self, frame: int) -> dict[str, np.ndarray]:
        """Batch-1 model inputs of a ready frame."""
        k = min(self.base + frame, len(self.pose) - 1)  # the blink schedule goes on across a resume
        return {"source": self.source_feed, "audio": self.feats.window(frame, self.fps)[None, None].astype(np.float32),
                "pose": self.pose[k:k + 1], "eye": self.eye[k:k + 1]}


class _Resampler:
    """s16 PCM at any rate → 44.1 kHz float64, statefully (FFmpeg's resampler, as `media.pcm_chunks` uses it)."""

    def __init__(self, rate: int):
        from amnet.core.fileio import lazy_import
        from amnet.reenact import media

        self.av = lazy_import("av", media.AV_HINT, "12.0")
        self.rate, self.pts = rate, 0
        self.resample = media.resampler()

    def __call__(self, pcm: np.ndarray | None) -> np.ndarray:
        frame = None
        if pcm is not None:
            frame = self.av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.pts, Fraction(1, self.rate)
            self.pts += len(pcm)
        out = [f.to_ndarray().reshape(-1) for f in self.resample.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0)
