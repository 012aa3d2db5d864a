"""The wire protocol of `/v1/stream`, in one small module that the server and `benchmarks.loadtest` both read.

A session, in order:

1. client → server, text: the session config, JSON
   ``{"pcm": {"format": "s16le", "channels": 1, "rate": 16000}, "fps": 25, "output": "jpeg"}``
2. client → server, binary: the source face (PNG/JPEG bytes), one message
3. server → client, text: ``{"type": "ready", "resolution", "fps", "audio_delta", ...}``; the client's audio
   clock starts when it sends its first PCM chunk after this
4. client → server, binary: s16le mono PCM chunks, at 1× (faster than real time is refused)
5. server → client, for each frame: text ``{"type": "frame", "frame", "t_audio", "latency_ms", ...}`` then
   binary (a JPEG, or raw R×R×3 RGB bytes)
A client whose session was cut (a replica lost: any close but 1000 and the refusals) opens a new one with
``"resume": N``, the next frame index it expects, and sends its PCM again from ``resume_sample(N, ...)``:
``RESUME_LEAD_S`` before frame N, so that frame's audio window is full again. The server numbers that
session's frames from ``resume_base(N)`` and sends them from N on.

6. client → server, text ``{"type": "end"}``: the server sends the frames still due, then
   ``{"type": "done", "frames", "dropped"}`` and closes with 1000.

A refusal or a bad message closes that session with one of the codes below and a reason.
No ray, no model here: only what both ends must agree on.
"""
from __future__ import annotations

import ipaddress
import json
import math

# WebSocket close codes (RFC 6455 §7.4.1)
NORMAL = 1000
UNSUPPORTED = 1003  # a text message where binary belongs, or the reverse
INVALID = 1007  # a message that does not parse (bad JSON, an odd PCM byte count, an undecodable image)
POLICY = 1008  # a wrong or missing token; audio faster than real time; a session past its length
TOO_BIG = 1009  # a message above its size limit
INTERNAL = 1011  # a fault of the server's own (a broken model file): this session ends, the others go on
TRY_AGAIN = 1013  # the replica holds all the sessions it can: try again later

# Limits a client must keep (the server refuses beyond them).
MAX_CONFIG_BYTES = 4096
MAX_FACE_BYTES = 8 << 20  # a phone photo; the face is cropped to 256² anyway
MAX_PCM_BYTES = 64 << 10  # one chunk: 0.7 s at 48 kHz; a live client sends tens of ms
PCM_RATES = (8000, 96000)  # accepted sample rates, inclusive
FPS_RANGE = (1.0, 30.0)  # frames per second a session may ask for
OUTPUTS = ("jpeg", "raw")
AHEAD_S = 2.0  # how far a client's audio may run ahead of the wall clock (1× plus jitter) before it is refused
RESUME_LEAD_S = 0.5  # audio a resumed session gets again before its first frame: half a window (0.37 s) and more
MAX_RESUME = 30 * 24 * 3600  # a frame index: a day at 30 fps, more than any session lasts
ON_TIME_MS = 150.0  # a frame is on time within the audio floor + this (the bar)


class ProtocolError(Exception):
    """A message that breaks the protocol: ``code`` is the close code, the message its reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


def parse_config(text: str | bytes | None) -> dict:
    """The first message → {"rate", "fps", "output"}; anything else is a ProtocolError naming the field."""
    if text is None:
        raise ProtocolError(UNSUPPORTED, "the first message must be the session config as JSON text")
    if len(text) > MAX_CONFIG_BYTES:
        raise ProtocolError(TOO_BIG, f"session config is {len(text)} bytes, the limit is {MAX_CONFIG_BYTES}")
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ProtocolError(INVALID, "session config is not JSON") from None
    if not isinstance(cfg, dict):
        raise ProtocolError(INVALID, "session config must be a JSON object")
    pcm = cfg.get("pcm", {})
    if not isinstance(pcm, dict):
        raise ProtocolError(INVALID, "session config: pcm must be an object")
    if pcm.get("format", "s16le") != "s16le" or pcm.get("channels", 1) != 1:
        raise ProtocolError(INVALID, "session config: pcm must be s16le mono")
    rate, fps, output = pcm.get("rate"), cfg.get("fps", 25), cfg.get("output", "jpeg")
    if isinstance(rate, bool) or not isinstance(rate, int) or not PCM_RATES[0] <= rate <= PCM_RATES[1]:
        raise ProtocolError(INVALID, f"session config: pcm.rate must be an integer in "
                                     f"[{PCM_RATES[0]}, {PCM_RATES[1]}] Hz, got {rate!r}")
    if (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
            or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        raise ProtocolError(INVALID, f"session config: fps must be in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], "
                                     f"got {fps!r}")
    if output not in OUTPUTS:
        raise ProtocolError(INVALID, f"session config: output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    resume = cfg.get("resume", 0)
    if isinstance(resume, bool) or not isinstance(resume, int) or not 0 <= resume <= MAX_RESUME:
        raise ProtocolError(INVALID, f"session config: resume must be a frame index in [0, {MAX_RESUME}], "
                                     f"got {resume!r}")
    return {"rate": rate, "fps": float(fps), "output": output, "resume": resume}


def session_config(rate: int, fps: float = 25.0, output: str = "jpeg", resume: int = 0) -> str:
    """The client's first message."""
    cfg = {"pcm": {"format": "s16le", "channels": 1, "rate": rate}, "fps": fps, "output": output}
    return json.dumps({**cfg, "resume": resume} if resume else cfg)


def resume_base(frame: int, fps: float) -> int:
    """The frame whose start a resumed session's audio starts at."""
    return max(0, frame - math.ceil(RESUME_LEAD_S * fps))


def resume_sample(frame: int, fps: float, rate: int) -> int:
    """The PCM sample (at the client's rate) a session resumed at ``frame`` starts from."""
    return round(resume_base(frame, fps) * rate / fps)


END = json.dumps({"type": "end"})


def is_end(text: str) -> bool:
    try:
        return json.loads(text) == {"type": "end"}
    except ValueError:
        return False


def token_from(headers, query) -> str | None:
    """The bearer token of a request: ``Authorization: Bearer T``, or (WebSockets, whose browser API sets no
    headers) ``?token=T``."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return query.get("token")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: where `serve` listens and `loadtest` sends by default."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
