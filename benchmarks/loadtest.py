"""`amnet-deploy loadtest URL`: N WebSocket clients, each streaming real speech at 1× to `serve` and reading frames.

Each client sends 20 ms PCM chunks (s16le, 44.1 kHz), each when its last sample would have been heard. A
frame's floor is when the chunk that completed its audio window was sent (`amnet.speech.window_ready_seconds`;
frames completed by the stream's end: the end); its latency is how long after that floor its picture arrived.
Per stream: fps (frames received per second of speech), latency above the floor p50/p95/p99, the share of
the frames due that arrived within the floor + ``ON_TIME_MS``, drops (frames due, not received), reconnects.
N is held when every stream has ≥ ``HELD_FPS`` fps and ≥ ``HELD_ON_TIME`` on time. ``--sweep 1,2,4`` runs each
N in turn and names the largest held. Loopback only unless ``--allow-remote``; bounded in streams and seconds.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
from pathlib import Path

import numpy as np

from amnet.core.errors import InputError
from amnet.serve import protocol as wire

HELD_FPS = 24.5
HELD_ON_TIME = 0.99
MAX_STREAMS = 64
MAX_SECONDS = 600.0
CHUNK_S = 0.02
RATE = 44100
MAX_RECONNECTS = 10  # per stream: a session refused (1013) or cut is opened again this many times at most
RETRY_S = 0.25  # between those: a lost replica's successor, or the proxy learning it is gone, takes a moment
CONNECT_TIMEOUT_S = 30.0  # a replica's first session finds its face with dlib: seconds on a busy machine


def _bounded(what: str, kind, low, high):
    """An argparse type: a finite ``kind`` in [low, high] (NaN and inf are usage errors)."""
    import argparse

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v) or not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{what} must be a number in [{low:g}, {high:g}], got {text!r}")
        return v
    return parse


def _counts(text: str) -> list[int]:
    """--sweep: comma-separated stream counts in [1, MAX_STREAMS]."""
    one = _bounded("--sweep", int, 1, MAX_STREAMS)
    values = sorted({one(v) for v in text.split(",") if v.strip()})
    if not values:
        return one(text)
    return values


def add_arguments(p) -> None:
    number = lambda what, low, high: _bounded(what, float, low, high)  # noqa: E731
    positive = lambda what, high: _bounded(what, int, 1, high)  # noqa: E731

    p.add_argument("url", help="the serve base URL, e.g. http://127.0.0.1:8000 (ws:// is the same)")
    p.add_argument("--streams", type=positive("--streams", MAX_STREAMS), default=1)
    p.add_argument("--sweep", type=_counts, help="comma-separated stream counts to run in turn (e.g. 1,2,4): the largest held")
    p.add_argument("--seconds", type=number("--seconds", 1, MAX_SECONDS), default=10.0, help="speech per stream")
    p.add_argument("--token", help="bearer token (default: $AMNET_SERVE_TOKEN)")
    p.add_argument("--audio", help="speech file (default: the shipped CMU ARCTIC clips, looped)")
    p.add_argument("--face", help="face image (default: a held-out calibration_data/ face)")
    p.add_argument("--fps", type=number("--fps", *wire.FPS_RANGE), default=25.0)
    p.add_argument("--output", choices=wire.OUTPUTS, default="jpeg")
    p.add_argument("--report", metavar="DIR", help="write loadtest.json, loadtest.md and loadtest.png here")
    p.add_argument("--allow-remote", action="store_true", help="send to a host that is not a loopback address")
    p.add_argument("--quiet", action="store_true")


def stream_url(url: str, allow_remote: bool = False) -> str:
    """The WebSocket URL of /v1/stream; a non-loopback host is refused unless allowed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise InputError(f"URL {url!r}: expected http://HOST:PORT or ws://HOST:PORT")
    if not allow_remote and not wire.is_loopback(parts.hostname):
        raise InputError(f"URL {url}: {parts.hostname} is not a loopback address (127.0.0.0/8, ::1, localhost); "
                         "pass --allow-remote to load another machine")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/v1/stream", "", ""))


def default_inputs() -> tuple[bytes, np.ndarray]:
    """(face image bytes, 44.1 kHz float speech): what `reenact`'s demo uses."""
    import tempfile

    from amnet.reenact import media
    from amnet.reenact.demo import write_inputs

    with tempfile.TemporaryDirectory(prefix="amnet-loadtest-") as tmp:
        face, speech = write_inputs(Path(tmp), seconds=60.0)
        return face.read_bytes(), media.decode_audio(speech)


def load_inputs(face: str | None, audio: str | None) -> tuple[bytes, np.ndarray]:
    from amnet.core.fileio import check_input_path
    from amnet.reenact import media

    face_bytes, samples = default_inputs() if not (face and audio) else (None, None)
    if face:
        path = check_input_path(face, "--face")
        if path.stat().st_size > wire.MAX_FACE_BYTES:
            raise InputError(f"--face {face} is over the server's {wire.MAX_FACE_BYTES}-byte limit")
        face_bytes = path.read_bytes()
    if audio:
        samples = media.decode_audio(check_input_path(audio, "--audio"))
    return face_bytes, samples


def to_pcm(samples: np.ndarray, seconds: float) -> bytes:
    """``seconds`` of the speech (looped) as s16le."""
    n = int(round(seconds * RATE))
    looped = np.resize(samples, n)  # repeats the clip
    return (np.clip(looped, -1, 1) * 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------- one client

async def one_stream(url: str, token: str | None, face: bytes, pcm: bytes, fps: float, output: str,
                     deadline: float, replicas: list | None = None) -> dict:
    """One stream to its end. A session cut short (a replica lost, or refused as full) is opened again,
    resumed at the next frame expected (protocol: resume), so the frame indices go on; the stream's clock stops
    while it is cut (``cut_s``) and the audio sent since the resume point is sent again at once. ``replicas``
    gets the id of each replica that took a session of it, as it does."""
    replicas = [] if replicas is None else replicas
    import websockets

    from amnet import speech

    chunk = int(RATE * CHUNK_S) * 2  # bytes
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    over: list[float] = []
    received = reconnects = 0
    expect = 0  # the next frame index
    sent = 0  # bytes of PCM sent so far, in any session
    cut_at, cut_s = None, 0.0
    codes: list[int] = []
    audio_s = len(pcm) / 2 / RATE
    finished = False
    while not finished and time.perf_counter() < deadline:
        try:
            async with websockets.connect(url, additional_headers=headers, open_timeout=CONNECT_TIMEOUT_S,
                                          max_size=wire.MAX_FACE_BYTES, close_timeout=5) as ws:
                await ws.send(wire.session_config(RATE, fps, output, resume=expect))
                await ws.send(face)
                ready = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S))
                if ready.get("type") != "ready":
                    raise InputError(f"the server answered {ready!r} instead of ready")
                delta = ready["audio_delta"]
                replicas.append(ready.get("replica"))
                now = time.perf_counter()
                if cut_at is not None:
                    cut_s, cut_at = cut_s + now - cut_at, None
                start = now - sent / 2 / RATE  # the stream's clock: sample 0 was sent then (its cuts left out)
                ended: dict[str, float] = {}

                async def send():
                    nonlocal sent
                    for lo in range(wire.resume_sample(expect, fps, RATE) * 2, len(pcm), chunk):
                        piece = pcm[lo:lo + chunk]
                        wait = start + (lo + len(piece)) / 2 / RATE - time.perf_counter()
                        if wait > 0:  # what was sent before the cut goes again at once
                            await asyncio.sleep(wait)
                        await ws.send(piece)
                        sent = max(sent, lo + len(piece))
                    ended["t"] = time.perf_counter()
                    await ws.send(wire.END)

                sender = asyncio.ensure_future(send())
                try:
                    while True:
                        message = await asyncio.wait_for(ws.recv(), max(1.0, deadline - time.perf_counter()))
                        header = json.loads(message)
                        if header.get("type") == "done":
                            finished = True
                            break
                        await ws.recv()  # the picture
                        now = time.perf_counter()
                        i = header["frame"]
                        if i < expect:  # never, unless the server breaks the resume contract
                            raise InputError(f"frame {i} came again after frame {expect - 1}")
                        expect = i + 1
                        ready_s = speech.window_ready_seconds(i, fps, delta)
                        floor = start + min(math.ceil(ready_s * RATE * 2 / chunk) * chunk / 2 / RATE, audio_s)
                        floor = ended["t"] if ready_s >= audio_s and "t" in ended else floor
                        over.append((now - floor) * 1000)
                        received += 1
                finally:
                    sender.cancel()
        except websockets.ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else 1006
            if code == wire.POLICY:
                raise InputError(f"the server refused the session: {e.rcvd.reason}") from None
            if code == wire.NORMAL:  # closed without its done message: nothing to resume
                break
            codes.append(code)
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
            codes.append(0)
            if reconnects >= MAX_RECONNECTS:
                raise InputError(f"cannot stream to {url}: {e or type(e).__name__}") from None
        if not finished:
            reconnects += 1
            cut_at = time.perf_counter() if cut_at is None else cut_at
            if reconnects > MAX_RECONNECTS:
                break
            await asyncio.sleep(RETRY_S)
    due = speech.video_frames(len(pcm) // 2, fps)
    lat = np.array(over)
    on_time = int((lat <= wire.ON_TIME_MS).sum())
    pct = lambda q: round(float(np.percentile(lat, q)), 1) if len(lat) else None  # noqa: E731
    return {"frames_due": due, "frames": received, "fps": round(received / audio_s, 2), "dropped": due - received,
            "on_time": round(on_time / due, 4) if due else 0.0, "over_floor_ms": {"p50": pct(50), "p95": pct(95),
                                                                                  "p99": pct(99), "max": pct(100)},
            "reconnects": reconnects, "close_codes": codes, "cut_s": round(cut_s, 2), "replicas": replicas}


async def run_streams(url: str, n: int, token, face: bytes, pcm: bytes, fps: float, output: str) -> list[dict]:
    deadline = time.perf_counter() + len(pcm) / 2 / RATE + 60 + 10 * n  # bounded: speech + setup
    # Sessions open 50 ms apart: the first frames of N streams do not all fall on one model call.
    async def staggered(k):
        await asyncio.sleep(0.05 * k)
        return await one_stream(url, token, face, pcm, fps, output, deadline)

    return list(await asyncio.gather(*(staggered(k) for k in range(n))))


def summarize(n: int, streams: list[dict]) -> dict:
    over = [s["over_floor_ms"]["p99"] for s in streams if s["over_floor_ms"]["p99"] is not None]
    held = all(s["fps"] >= HELD_FPS and s["on_time"] >= HELD_ON_TIME for s in streams)
    return {"streams": n, "held": held, "min_fps": min(s["fps"] for s in streams),
            "min_on_time": min(s["on_time"] for s in streams),
            "p50_ms": _median([s["over_floor_ms"]["p50"] for s in streams]),
            "p95_ms": max((s["over_floor_ms"]["p95"] for s in streams if s["over_floor_ms"]["p95"] is not None),
                          default=None),
            "p99_ms": max(over, default=None), "dropped": sum(s["dropped"] for s in streams),
            "reconnects": sum(s["reconnects"] for s in streams),
            "close_codes": sorted({c for s in streams for c in s["close_codes"]}), "per_stream": streams}


def _median(values):
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 1) if values else None


def loadtest(url: str, counts: list[int], seconds: float, token: str | None = None, face: str | None = None,
             audio: str | None = None, fps: float = 25.0, output: str = "jpeg", allow_remote: bool = False,
             say=print) -> dict:
    ws_url = stream_url(url, allow_remote)
    face_bytes, samples = load_inputs(face, audio)
    pcm = to_pcm(samples, seconds)
    runs = []
    for n in counts:
        result = summarize(n, asyncio.run(run_streams(ws_url, n, token, face_bytes, pcm, fps, output)))
        runs.append(result)
        say(f"{n} stream(s): {'held' if result['held'] else 'NOT held'}: min {result['min_fps']} fps, "
            f"min on time {result['min_on_time']:.1%}, over the floor p50 {result['p50_ms']} / p95 "
            f"{result['p95_ms']} / p99 {result['p99_ms']} ms, {result['dropped']} dropped, "
            f"{result['reconnects']} reconnects" + (f" (close codes {result['close_codes']})" if result["close_codes"]
                                                     else ""))
    held = [r["streams"] for r in runs if r["held"]]
    return {"url": url, "seconds": seconds, "fps": fps, "output": output, "on_time_ms": wire.ON_TIME_MS,
            "held_bar": {"fps": HELD_FPS, "on_time": HELD_ON_TIME}, "largest_held": max(held, default=0),
            "runs": runs}


def write_report(report: dict, folder: str) -> list[Path]:
    from amnet.core.fileio import atomic_write, check_output_dir, write_text

    out = check_output_dir(folder, "loadtest.json", "loadtest.md", "loadtest.png")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "loadtest.json", json.dumps(report, indent=1))
    rows = ["| streams | held | min fps | min on time | p50 ms | p95 ms | p99 ms | dropped | reconnects |",
            "| ---: | :-: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows += [f"| {r['streams']} | {'yes' if r['held'] else 'no'} | {r['min_fps']} | {r['min_on_time']:.1%} | "
             f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['dropped']} | {r['reconnects']} |"
             for r in report["runs"]]
    write_text(out / "loadtest.md", f"# Load test: {report['url']}\n\n{report['seconds']:g} s of speech per stream at "
               f"{report['fps']:g} fps; latency above the audio floor; on time = within the floor + "
               f"{report['on_time_ms']:g} ms. Held: every stream ≥ {HELD_FPS} fps and ≥ {HELD_ON_TIME:.0%} on time.\n"
               f"\n**Largest N held: {report['largest_held']}**\n\n" + "\n".join(rows) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["streams"] for r in report["runs"]]
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        ax.plot(n, [r[key] if r[key] is not None else np.nan for r in report["runs"]], "o-", label=key[:3])
    ax.axhline(report["on_time_ms"], color="grey", ls="--", label="on-time bound")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("latency above the audio floor (ms)")
    ax.legend()
    ax.grid(alpha=0.3)
    atomic_write(out / "loadtest.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return [out / "loadtest.json", out / "loadtest.md", out / "loadtest.png"]


def main_args(args) -> int:
    import os

    counts = args.sweep or [args.streams]
    stream_url(args.url, args.allow_remote)  # refused before any work
    if args.report:
        from amnet.core.fileio import check_output_dir

        check_output_dir(args.report, "loadtest.json", "loadtest.md", "loadtest.png")
    say = (lambda *_: None) if args.quiet else print
    report = loadtest(args.url, counts, args.seconds, args.token or os.environ.get("AMNET_SERVE_TOKEN"), args.face,
                      args.audio, args.fps, args.output, args.allow_remote, say)
    say(f"largest N held: {report['largest_held']}")
    if args.report:
        say("report → " + ", ".join(str(p) for p in write_report(report, args.report)))
    return 0
