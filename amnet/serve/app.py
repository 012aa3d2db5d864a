"""The Ray Serve application: one deployment whose replicas each hold a model, its batcher and their sessions.

The WebSocket sessions and the batched model live in the same replica (deploy-facts: splitting them halved
the streams held). A WebSocket holds one of a replica's ``max_ongoing_requests`` for its whole life, so that
is set to the replica's stream capacity plus ``HEADROOM`` requests: health, metrics, offline jobs, and the
refusals (close 1013) of sessions beyond the capacity, which must reach the replica to be refused at all.

Endpoints: WS ``/v1/stream`` (amnet.serve.protocol), ``POST /v1/reenact`` (multipart face + audio → MP4, the
offline `reenact`), ``GET /metrics`` (Prometheus text), ``GET /healthz`` (no token). Every endpoint but health
wants ``Authorization: Bearer TOKEN`` (WS: or ``?token=``).

`build_app(args)` is the import path of the Serve config (`serve build`/`serve deploy` on a cluster);
`amnet.serve.local` starts it on this machine. (No `from __future__ import annotations` here: Serve's class
ingress rebuilds the endpoints' signatures, and FastAPI must see `WebSocket` itself, not the string.)
"""
import asyncio
import hmac
import os
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve

from amnet.core.errors import AmnetError, InputError, first_line
from amnet.serve import protocol as wire
from amnet.serve.batcher import Batcher
from amnet.serve.metrics import Metrics
from amnet.serve.session import Session

HEADROOM = 8  # requests a full replica still takes: health, metrics, one offline job, refusals
SEND_QUEUE = 8  # frames a session's client may leave unread before its oldest are dropped
IDLE_S = 10.0  # a session that sends nothing this long is closed
BATCH_WAIT_S = 0.004  # the longest a frame waits for others to share its model call
MAX_UPLOAD = 64 << 20  # POST /v1/reenact body
TOKEN_ENV = "AMNET_SERVE_TOKEN"

api = FastAPI(title="amnet-deploy serve", docs_url=None, redoc_url=None, openapi_url=None)


def _authorized(token: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _reason(text: str) -> str:
    """A close reason fits the control frame's 123 bytes."""
    return text.encode()[:123].decode(errors="ignore")


class _Gone(Exception):
    """The client closed or vanished: nothing to answer."""


class _Outbox:
    """A session's frames on their way out: at most SEND_QUEUE wait; a client that does not read loses its
    oldest frames (its own, counted), and the end message is never dropped."""

    def __init__(self, metrics):
        self.items: deque = deque()
        self.ready = asyncio.Event()
        self.metrics = metrics

    def put(self, header: dict | None, picture: bytes | None = None) -> None:
        frames = [i for i, (h, _) in enumerate(self.items) if h and h.get("type") == "frame"]
        if header and header.get("type") == "frame" and len(frames) >= SEND_QUEUE:
            del self.items[frames[0]]
            self.metrics.add("dropped", key="slow_client")
        self.items.append((header, picture))
        self.ready.set()

    async def send(self, ws: WebSocket) -> None:
        try:
            while True:
                while not self.items:
                    self.ready.clear()
                    await self.ready.wait()
                header, picture = self.items.popleft()
                if header is None:
                    return
                if header.get("type") == "frame":
                    latency = time.perf_counter() - header.pop("ready_at")
                    header["latency_ms"] = round(latency * 1000, 2)
                    self.metrics.observe("latency", latency)
                    self.metrics.add("frames")
                    await ws.send_json(header)
                    await ws.send_bytes(picture)
                else:
                    await ws.send_json(header)
        except Exception as e:  # noqa: BLE001 - the client went away mid-send
            raise _Gone() from e


async def _receive(ws: WebSocket, kind: str | None, limit: int, what: str, tasks=()) -> str | bytes:
    """The next message (of ``kind``, "text" or "bytes", when given), at most ``limit`` bytes; waits at most
    IDLE_S, and fails at once when one of the session's own tasks has failed."""
    receive = asyncio.ensure_future(ws.receive())
    watched = [t for t in tasks]
    done, _ = await asyncio.wait([receive, *watched], timeout=IDLE_S, return_when=asyncio.FIRST_COMPLETED)
    if receive not in done:
        receive.cancel()
        if not done:
            raise wire.ProtocolError(wire.POLICY, f"no message for {IDLE_S:g} s: session closed")
        for t in done:
            t.result()  # the task's own exception, raised here
        raise _Gone()
    message = receive.result()
    if message["type"] == "websocket.disconnect":
        raise _Gone()
    text, data = message.get("text"), message.get("bytes")
    value = text if text is not None else data
    if value is None or (kind == "text" and text is None) or (kind == "bytes" and data is None):
        raise wire.ProtocolError(wire.UNSUPPORTED, f"expected the {what} as a {kind or 'binary'} message")
    if len(value) > limit:
        raise wire.ProtocolError(wire.TOO_BIG, f"{what}: {len(value)} bytes, the limit is {limit}")
    return value


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code, _reason(reason))
    except Exception:  # noqa: BLE001 - already closed by the client
        pass


# Defined after everything its endpoints use: `serve.ingress` pickles them with the globals they see now.
@serve.deployment(name="AmnetReplica")
@serve.ingress(api)
class AmnetReplica:
    def __init__(self, model: str, token: str, runtime: str | None = None, precision: str | None = None,
                 threads: int | None = None, streams: int = 4, max_session_s: float = 600.0, verify: bool = True):
        from amnet import speech
        from amnet.signals import FaceAnalyzer
        from amnet.serve.model import open_model

        self.token, self.streams, self.max_session_s = token, streams, max_session_s
        self.model_args = dict(model=model, runtime=runtime, precision=precision, threads=threads, verify=verify)
        self.runner, self.resolution, self.max_batch = open_model(**self.model_args, max_batch=streams)
        self.delta = self.runner.metadata.get("audio_delta") or "official"
        self.analyzer = FaceAnalyzer()
        speech.warm_up()
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (a unit test): one id is as good as another
            replica = "0"
        self.metrics = Metrics(replica)
        self.batcher = Batcher(self.runner, self.max_batch, BATCH_WAIT_S, self.metrics, lambda: self.metrics.sessions)
        self.offline = asyncio.Semaphore(1)

    # ------------------------------------------------------------ plain HTTP
    @api.get("/healthz")
    def healthz(self):
        return {"status": "ok", "sessions": self.metrics.sessions, "capacity": self.streams}

    @api.get("/metrics")
    def metrics_text(self, request: Request):
        if not _authorized(self.token, wire.token_from(request.headers, request.query_params)):
            return PlainTextResponse("missing or wrong bearer token\n", status_code=401)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    @api.post("/v1/reenact")
    async def reenact_file(self, request: Request):
        """multipart/form-data with ``face`` (an image) and ``audio`` (any file FFmpeg reads) → video/mp4."""
        if not _authorized(self.token, wire.token_from(request.headers, request.query_params)):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        size = int(request.headers.get("content-length") or 0)
        if not 0 < size <= MAX_UPLOAD:
            return JSONResponse({"error": f"the body must be 1 to {MAX_UPLOAD} bytes, got {size}"}, status_code=413)
        if self.offline.locked():
            return JSONResponse({"error": "an offline job is running on this replica: try again later"},
                                status_code=503, headers={"Retry-After": "10"})
        async with self.offline:
            try:
                form = await request.form()
                face, audio = form.get("face"), form.get("audio")
                if face is None or audio is None or isinstance(face, str) or isinstance(audio, str):
                    raise InputError("the form needs two files: face (an image) and audio")
                data = await face.read(), await audio.read()
                video = await asyncio.get_running_loop().run_in_executor(None, self._offline, *data,
                                                                         Path(face.filename or "face.png").suffix)
            except AmnetError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
        return Response(video, media_type="video/mp4")

    def _offline(self, face: bytes, audio: bytes, suffix: str) -> bytes:
        from amnet.reenact import media
        from amnet.reenact.run import Options, reenact

        with tempfile.TemporaryDirectory(prefix="amnet-serve-") as tmp:
            face_path = Path(tmp) / f"face{suffix if media.is_image('x' + suffix) else '.png'}"
            face_path.write_bytes(face)
            (Path(tmp) / "audio").write_bytes(audio)
            out = Path(tmp) / "out.mp4"
            a = self.model_args
            reenact(Options(source=str(face_path), audio=str(Path(tmp) / "audio"), output=str(out), model=a["model"],
                            runtime=a["runtime"], precision=a["precision"], threads=a["threads"],
                            no_verify=not a["verify"], progress=False, warn=lambda *_: None))
            return out.read_bytes()

    # ------------------------------------------------------------ the stream
    @api.websocket("/v1/stream")
    async def stream(self, ws: WebSocket):
        await ws.accept()
        if not _authorized(self.token, wire.token_from(ws.headers, ws.query_params)):
            self.metrics.add("refused", key="auth")
            await ws.close(wire.POLICY, "missing or wrong bearer token")
            return
        if self.metrics.sessions >= self.streams:
            self.metrics.add("refused", key="full")
            await ws.close(wire.TRY_AGAIN, f"this replica holds its {self.streams} sessions: try again later")
            return
        self.metrics.add("sessions")
        self.metrics.add("sessions_total")
        try:
            await self._session(ws)
        except wire.ProtocolError as e:
            self.metrics.add("refused", key="protocol")
            await _close(ws, e.code, str(e))
        except InputError as e:  # a face dlib cannot find: this session's own input
            self.metrics.add("refused", key="protocol")
            await _close(ws, wire.INVALID, str(e))
        except _Gone:
            pass
        except Exception as e:  # noqa: BLE001 - ours (a broken model file ...): this session ends, the replica goes on
            await _close(ws, wire.INTERNAL, f"internal error: {first_line(e)}")
        finally:
            self.metrics.add("sessions", -1)

    async def _session(self, ws: WebSocket) -> None:
        loop = asyncio.get_running_loop()
        config = wire.parse_config(await _receive(ws, "text", wire.MAX_CONFIG_BYTES, "session config"))
        face = await _receive(ws, "bytes", wire.MAX_FACE_BYTES, "source face")
        source, feed = await loop.run_in_executor(None, self._source, face)
        session = Session(config, source, feed, self.delta, self.max_session_s)
        await ws.send_json({"type": "ready", "resolution": self.resolution, "fps": session.fps,
                            "audio_delta": self.delta, "max_session_s": self.max_session_s,
                            "on_time_ms": wire.ON_TIME_MS, "resume": config["resume"],
                            "replica": self.metrics.replica})
        outbox = _Outbox(self.metrics)
        wake = asyncio.Event()
        tasks = [loop.create_task(self._compute(session, outbox, wake)), loop.create_task(outbox.send(ws))]
        started = time.perf_counter()
        try:
            while not session.ended:
                if time.perf_counter() - started > self.max_session_s + IDLE_S:
                    raise wire.ProtocolError(wire.POLICY, f"session passed {self.max_session_s:g} s")
                message = await _receive(ws, None, wire.MAX_PCM_BYTES, "PCM chunk", tasks)
                if isinstance(message, str):
                    if not wire.is_end(message):
                        raise wire.ProtocolError(wire.UNSUPPORTED, 'text after the face must be {"type": "end"}')
                    session.finish()
                else:
                    session.push(message)
                wake.set()
            await tasks[0]  # every frame still due
            outbox.put({"type": "done", "frames": session.served, "dropped": session.dropped})
            outbox.put(None)
            await tasks[1]
            await _close(ws, wire.NORMAL, "done")
        finally:
            for t in tasks:
                t.cancel()

    def _source(self, image: bytes):
        """The face of the session: decoded, found and cropped as `reenact` does (amnet.reenact.drive)."""
        import cv2

        from amnet.realdata import to_float
        from amnet.reenact.drive import find_source

        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise wire.ProtocolError(wire.INVALID, "the source face is not a decodable image")
        source = find_source([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)], self.analyzer, "the source face")
        return source, to_float(source.crop[None], self.resolution)

    async def _compute(self, session: Session, outbox: "_Outbox", wake: asyncio.Event) -> None:
        """Frames as their windows complete, one in the batcher at a time, the newest ready one each time."""
        while not session.finished:
            before = session.dropped
            frame = session.take()
            if frame is None:
                wake.clear()
                await wake.wait()
                continue
            self.metrics.add("dropped", session.dropped - before, key="late")
            picture = await self.batcher.frame(session.feeds(frame), session.output)
            index = session.base + frame  # the stream's own numbering, across a resume
            outbox.put({"type": "frame", "frame": index, "t_audio": round(index / session.fps, 4),
                        "ready_at": session.ready_at[frame], "dropped": session.dropped}, picture)

    def __del__(self):
        try:
            self.batcher.close()
            self.runner.close()
        except Exception:  # noqa: BLE001 - a replica going away frees what it can
            pass


def replica_options(streams: int, threads: int, replicas: int) -> dict:
    """Serve deployment options: capacity, pinned threads (the runtime's and OMP's), replicas."""
    return {"num_replicas": replicas, "max_ongoing_requests": streams + HEADROOM,
            "ray_actor_options": {"num_cpus": threads,
                                  "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads)}}}}


def build_app(args: dict):
    """The application of a Serve config's ``import_path``: args are model, streams_per_replica, threads,
    replicas, runtime, precision, max_session_s; the token comes from the environment (never from a file)."""
    token = args.get("token") or os.environ.get(TOKEN_ENV)
    if not token:
        raise InputError(f"set {TOKEN_ENV} where the application is built: every endpoint but health needs it")
    streams, threads = int(args.get("streams_per_replica", 4)), int(args.get("threads", 1))
    return AmnetReplica.options(**replica_options(streams, threads, int(args.get("replicas", 1)))).bind(
        args["model"], token, runtime=args.get("runtime"), precision=args.get("precision"), threads=threads,
        streams=streams, max_session_s=float(args.get("max_session_s", 600.0)), verify=args.get("verify", True))
