"""Speech + a face → a talking-head MP4 on any runner: offline (a whole file) or streaming (audio paced in real time).

Offline, the frames are batched for throughput. Streaming, a reader thread
delivers the audio as it would be heard (a file played at 1×, or PCM on stdin),
each frame is computed as soon as its audio window is complete, and its latency
is measured from the moment its audio centre was heard to the moment it is
encoded, beside the floor that the centred window imposes (`amnet.speech`).
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amnet import speech
from amnet.core.errors import InputError
from amnet.core.runner import MODEL_INPUTS, run_in_chunks, run_in_flight
from amnet.reenact import drive as drive_mod
from amnet.reenact import media

DEFAULT_RESOLUTION = 128  # the shipped model's training resolution, for checkpoints (artifacts fix their own)
OFFLINE_BATCH = 8  # frames per call for models without a fixed batch
STREAM_CHUNK = 256  # samples per delivery when a file is played at 1× (5.8 ms)
REPORTS = Path("reports/latest")


@dataclass
class Options:
    source: str
    audio: str  # a file, or "-" for s16le mono PCM on stdin
    output: str
    model: str | None = None
    runtime: str | None = None
    precision: str | None = None
    drive: str | None = None
    pose: str | None = None  # "YAW,PITCH,ROLL" degrees
    resolution: int | None = None
    fps: float = 25.0
    side_by_side: bool = False
    stream: bool = False
    drop_late: bool = False  # streaming on a CPU slower than real time: skip frames already a period late
    pcm_rate: int = speech.SAMPLE_RATE
    threads: int | None = None
    no_verify: bool = False  # run an artifact whose sha256 differs from its manifest
    progress: bool = True
    warn: object = print  # one-line warnings go here


@dataclass
class Timings:
    features: float = 0.0
    model: float = 0.0
    encode: float = 0.0
    latency: list[float] = field(default_factory=list)  # streaming: per frame, seconds
    floor: list[float] = field(default_factory=list)
    # streaming: the frame's window was completed by the end of the stream (padded), not by audio heard. Such
    # frames all become ready at the one moment the stream ends, a burst that a live session meets once.
    end: list[bool] = field(default_factory=list)
    dropped: int = 0  # streaming with drop_late: frames shown as the next computed one


# ---------------------------------------------------------------- the model

def default_model(resolution: int | None, reports: Path = REPORTS) -> tuple[str, str]:
    """(model path, why): the variant `choose` recommended in the last `make run` report, else the shipped weights."""
    import json

    from amnet import default_checkpoint

    sizes = [resolution] if resolution else [DEFAULT_RESOLUTION, 256]
    for r in sizes:
        report = reports / f"choose_{r}.json"
        if not report.is_file():
            continue
        try:
            found = json.loads(report.read_text())
        except (OSError, ValueError):
            continue
        top, build = found.get("recommended") or {}, found.get("build")
        if top.get("file") and build and (Path(build) / top["file"]).exists():
            return str(Path(build) / top["file"]), f"recommended by {report}"
    return str(default_checkpoint(resolution)), "the shipped checkpoint"


def open_model(opts: Options):
    from runtimes import registry
    from runtimes.registry import open_runner

    model, why = (opts.model, "--model") if opts.model else default_model(opts.resolution)
    backend = registry.get(opts.runtime) if opts.runtime else None if Path(model).is_dir() else registry.for_path(model)
    # Offline, frames are independent: OpenVINO's throughput mode keeps one request per stream in flight.
    # One face drives every frame: a runner that can, runs the encoder on it once (hold_source).
    declared = backend.options if backend is not None else ()
    options = {"mode": "throughput"} if not opts.stream and "mode" in declared else {}
    options |= {"hold_source": True} if "hold_source" in declared else {}
    runner = open_runner(model, threads=opts.threads, precision=opts.precision, runtime=opts.runtime,
                         verify=not opts.no_verify, **options)
    try:
        runner.activate()
    except BaseException:
        runner.close()
        raise
    names = {s.name for s in runner.inputs}
    if not set(MODEL_INPUTS) <= names:
        runner.close()
        raise InputError(f"{model} takes {', '.join(sorted(names))}: reenact needs a full model "
                         f"({', '.join(MODEL_INPUTS)} → face)")
    return runner, model, why


def model_resolution(runner, asked: int | None) -> int:
    shape = next(s.shape for s in runner.inputs if s.name == "source")
    fixed = shape[-1] if isinstance(shape[-1], int) and shape[-1] > 0 else None
    if fixed and asked and asked != fixed:
        raise InputError(f"this model was built for {fixed}², not --resolution {asked}: build one at {asked}²")
    return fixed or asked or DEFAULT_RESOLUTION


def to_image(face: np.ndarray) -> np.ndarray:
    """N×3×R×R in [-1, 1] → N×R×R×3 uint8."""
    return np.clip((face.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the job

class Job:
    """Everything one reenactment needs before the first frame: source, drive signals, runner, writer."""

    def __init__(self, opts: Options):
        from amnet.realdata import to_float
        from amnet.signals import FaceAnalyzer, read_video

        self.opts = opts
        if not 1 <= opts.fps <= 120:  # NaN too
            raise InputError(f"--fps must be in [1, 120], got {opts.fps}")
        media.check_writable(opts.output)
        if opts.audio != "-" and not Path(opts.audio).is_file():
            raise InputError(f"audio not found: {opts.audio}")
        self.pose_override = drive_mod.parse_pose(opts.pose) if opts.pose else None
        self.analyzer = FaceAnalyzer()
        images = [media.read_image(opts.source)] if media.is_image(opts.source) else read_video(opts.source)[0]
        self.source = drive_mod.find_source(images, self.analyzer, opts.source)
        self.drive_frames = read_video(opts.drive) if opts.drive else None
        known = drive_mod.KnownPeople(self.analyzer).nearest(self.source.crop)
        if known and known[1] > drive_mod.KNOWN_FACE_DISTANCE:
            opts.warn(f"warning: the face in {opts.source} is far from every person in calibration_data/ "
                      f"(nearest {known[0]} at {known[1]:.2f} > {drive_mod.KNOWN_FACE_DISTANCE}): the shipped "
                      "model only reenacts the people it was trained on")
        self.runner, self.model, self.model_why = open_model(opts)
        self.timings = Timings()
        try:
            self.resolution = model_resolution(self.runner, opts.resolution)
            self.delta = self.runner.metadata.get("audio_delta") or "official"
            self.batch = self.runner.inputs[0].batch
            self.source_held = bool(getattr(self.runner, "holds_source", False))  # encoder run once per face
            self.source_feed = to_float(self.source.crop[None], self.resolution)
            # Setup, not per-frame work: the feature basis (the first use imports librosa, ~2 s) and one
            # inference (runtimes compile lazily). A live stream must not pay either once audio flows.
            speech.warm_up()
            self.infer(self.feeds(lambda i: np.zeros((speech.WINDOW, 60), np.float32), [0],
                                  self.source.pose[None].astype(np.float32), self.source.eye[None].astype(np.float32)))
        except BaseException:
            self.runner.close()
            raise
        self.timings = Timings()  # after the warm-up: what follows is the per-frame work

    def signals(self, n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        """Pose and eye per output frame (and the drive crops, for --side-by-side)."""
        times = np.arange(n) / self.opts.fps
        if self.drive_frames is not None:
            frames, video_fps = self.drive_frames
            pose, eye, crops = drive_mod.drive_signals(frames, video_fps, n, self.opts.fps, self.analyzer,
                                                       self.source, self.opts.progress)
            if self.pose_override is not None:
                pose[:] = self.pose_override
            return pose, eye, crops
        pose = np.repeat((self.pose_override if self.pose_override is not None else self.source.pose)[None], n, 0)
        return pose.astype(np.float32), drive_mod.blink_eye(self.source.eye, times), None

    def compose(self, faces: np.ndarray, frames, crops) -> list[np.ndarray]:
        """Output pictures of the given frame indices: the face, or (--side-by-side) source or drive | face."""
        images = to_image(faces)
        if not self.opts.side_by_side:
            return list(images)
        import cv2

        r = self.resolution
        left = [cv2.resize(crops[i] if crops else self.source.crop, (r, r), interpolation=cv2.INTER_AREA)
                for i in frames]
        return [np.concatenate([a, b], axis=1) for a, b in zip(left, images)]

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        t = time.perf_counter()
        if getattr(self.runner, "mode", None) == "throughput" and self.batch:  # all batches in flight at once
            face = run_in_flight(self.runner.infer_many, feeds, self.batch, pad=True)["face"]
        else:
            face = run_in_chunks(self.runner.infer, feeds, self.batch or OFFLINE_BATCH,
                                 pad=self.batch is not None)["face"]
        self.timings.model += time.perf_counter() - t
        if not np.isfinite(face).all():
            raise InputError(f"{self.runner.name} produced non-finite pixels: the model file is broken")
        return face

    def feeds(self, window_of, frames, pose, eye) -> dict[str, np.ndarray]:
        """Model inputs of the given frame indices (a range or a list)."""
        idx = list(frames)
        audio = np.stack([window_of(i) for i in idx])[:, None].astype(np.float32)
        return {"source": np.repeat(self.source_feed, len(idx), 0), "audio": audio, "pose": pose[idx], "eye": eye[idx]}

    def writer(self) -> media.Mp4Writer:
        width = self.resolution * (2 if self.opts.side_by_side else 1)
        return media.Mp4Writer(self.opts.output, self.opts.fps, width, self.resolution, live=self.opts.stream)

    def close(self) -> None:
        self.runner.close()


def reenact(opts: Options) -> dict:
    t_setup = time.perf_counter()
    job = Job(opts)
    t_setup = time.perf_counter() - t_setup
    try:
        t0 = time.perf_counter()
        frames = stream(job) if opts.stream else offline(job)
        wall = time.perf_counter() - t0
    finally:
        job.close()
    t = job.timings
    summary = {"output": opts.output, "frames": frames, "fps": opts.fps, "resolution": job.resolution,
               "model": job.model, "model_from": job.model_why, "runtime": job.runner.name,
               "precision": str(job.runner.precision), "setup_s": round(t_setup, 3), "seconds": round(wall, 3),
               "fps_end_to_end": round(frames / wall, 2) if wall else None,
               "split_s": {"features": round(t.features, 3), "model": round(t.model, 3), "encode": round(t.encode, 3)},
               "mode": "stream" if opts.stream else "offline", "audio_delta": job.delta,
               "source_frame": job.source.frame, "source_held": job.source_held}
    if t.latency:
        summary["latency_ms"] = latency_summary(np.array(t.latency) * 1000, np.array(t.floor) * 1000,
                                                np.array(t.end, bool))
        summary["dropped_frames"] = t.dropped
    return summary


def latency_summary(lat: np.ndarray, floor: np.ndarray, end: np.ndarray) -> dict:
    """Per-frame latency (ms) over all frames, and apart for the live frames (windows completed by audio heard)
    and the end-of-stream ones (completed by the stream's end, all at once): a 5 s clip has 9 of 125 such frames
    (10 with time deltas), enough to decide its p99 alone, while a live session meets that burst once."""
    def pct(x: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(x, q)), 1) if len(x) else None

    end = np.asarray(end, bool)
    over = lat - floor
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100),
            "floor_p50": pct(floor, 50), "floor_max": pct(floor, 100), "over_floor_p99": pct(over, 99),
            "live_frames": int((~end).sum()), "live_p99": pct(lat[~end], 99),
            "live_over_floor_p99": pct(over[~end], 99), "live_over_floor_max": pct(over[~end], 100),
            "end_frames": int(end.sum()), "end_over_floor_max": pct(over[end], 100)}


def offline(job: Job) -> int:
    from amnet.core.progress import progress_bar

    opts = job.opts
    t = time.perf_counter()
    if opts.audio == "-":
        samples = speech.check_speech(np.concatenate([np.zeros(0), *media.pcm_chunks(sys.stdin.buffer, opts.pcm_rate)]),
                                     "stdin")
    else:
        samples = media.decode_audio(opts.audio)
    feats = speech.features(samples, job.delta, floor="causal")
    n = speech.video_frames(len(samples), opts.fps)
    pose, eye, crops = job.signals(n)
    job.timings.features += time.perf_counter() - t
    step = (job.batch or OFFLINE_BATCH) * 8
    with job.writer() as out:
        for start in progress_bar(range(0, n, step), desc=f"reenact {Path(opts.output).name}", unit="batch",
                                  disable=not opts.progress):
            frames = range(start, min(n, start + step))
            faces = job.infer(job.feeds(lambda i: speech.window(feats, i, opts.fps), frames, pose, eye))
            t = time.perf_counter()
            for i, image in zip(frames, job.compose(faces, frames, crops)):
                out.add_frame(image)  # then the speech of this frame's 1/fps, all that is left after the last
                out.add_audio(samples[_sample(i, opts.fps):_sample(i + 1, opts.fps) if i + 1 < n else None])
            job.timings.encode += time.perf_counter() - t
        return out.frames


def _sample(frame: int, fps: float) -> int:
    """The first audio sample of a video frame."""
    return int(round(frame / fps * speech.SAMPLE_RATE))


# ---------------------------------------------------------------- streaming

def _paced(samples: np.ndarray, chunk: int = STREAM_CHUNK):
    """A decoded file played at 1×: each chunk is delivered when its last sample would have been heard."""
    start = time.perf_counter()
    for lo in range(0, len(samples), chunk):
        hi = min(len(samples), lo + chunk)
        delay = start + hi / speech.SAMPLE_RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield samples[lo:hi]


def stream(job: Job) -> int:
    """Frames as soon as their audio windows are complete; per-frame latency against the window's floor."""
    opts = job.opts
    if opts.audio == "-":
        source, duration = media.pcm_chunks(sys.stdin.buffer, opts.pcm_rate), None
    else:
        samples = media.decode_audio(opts.audio)
        source, duration = _paced(samples), len(samples) / speech.SAMPLE_RATE
    # Pose and blinks are known ahead (a drive video is a file); a stdin stream gets ten minutes' schedule,
    # then holds the last pose and eyes.
    pose, eye, crops = job.signals(speech.video_frames(int((duration or 600) * speech.SAMPLE_RATE), opts.fps))
    chunks: queue.Queue = queue.Queue(maxsize=4096)
    clock: dict[str, float] = {}

    def read():
        try:
            for chunk in source:
                clock.setdefault("start", time.perf_counter() - len(chunk) / speech.SAMPLE_RATE)
                chunks.put(chunk)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
            chunks.put(e)
        chunks.put(None)

    threading.Thread(target=read, daemon=True, name="audio").start()
    feats = speech.SpeechFeatures(job.delta, floor="causal")
    done = ready_frames = 0  # frames encoded; frames whose windows are complete
    heard: list[np.ndarray] = []  # audio received, not yet encoded
    peak = 0.0  # a stream of silence is refused at its end, as a silent file is at its start
    ended = False
    with job.writer() as out:
        while True:
            # Block for audio only when no complete frame waits; otherwise take what queued up and go on.
            arrived = [] if ended else _take(chunks, block=ready_frames == done)
            if arrived and isinstance(arrived[-1], BaseException):
                raise arrived[-1]
            if arrived and arrived[-1] is None:
                ended, arrived = True, arrived[:-1]
            t = time.perf_counter()
            for a in arrived:
                feats.push(a)
                peak = max(peak, float(np.abs(a).max(initial=0.0)))
            if ended:
                feats.finish()
                ready_frames = speech.video_frames(feats.samples, opts.fps)
            else:
                while speech.frames_needed(ready_frames, opts.fps) <= feats.ready:
                    ready_frames += 1
            if ready_frames > len(pose):
                pose, eye = _extend(pose, ready_frames), _extend(eye, ready_frames)
                crops = crops + crops[-1:] * (ready_frames - len(crops)) if crops else crops
            job.timings.features += time.perf_counter() - t
            if ready_frames > done:
                # One frame per pass, encoded at once: a frame never waits for a later one's inference.
                audio_end = feats.samples / speech.SAMPLE_RATE if ended else float("inf")
                now = time.perf_counter()
                frame = next_frame(done, ready_frames, lambda i: now - clock["start"] - min(
                    speech.window_ready_seconds(i, opts.fps, job.delta), audio_end), 1 / opts.fps, opts.drop_late)
                face = job.infer(job.feeds(lambda i: feats.window(i, opts.fps), [frame], pose, eye))
                image = job.compose(face, [frame], crops)[0]
                t = time.perf_counter()
                heard_s = feats.samples / speech.SAMPLE_RATE
                for i in range(done, frame + 1):  # frames skipped by --drop-late show this one
                    out.add_frame(image)
                    job.timings.latency.append(time.perf_counter() - clock["start"] - i / opts.fps)
                    complete = speech.window_ready_seconds(i, opts.fps, job.delta)
                    job.timings.floor.append(min(complete, heard_s) - i / opts.fps)
                    job.timings.end.append(complete > heard_s)
                job.timings.encode += time.perf_counter() - t
                job.timings.dropped += frame - done
                done = frame + 1
            heard += arrived
            if heard and (done == ready_frames or ended):  # the sound waits while a frame does (one call, not one
                t = time.perf_counter()                   # per 6 ms chunk: each costs ~0.7 ms of AAC overhead)
                out.add_audio(np.concatenate(heard))
                heard = []
                job.timings.encode += time.perf_counter() - t
            if ended and done == ready_frames:
                if done == 0 or feats.samples < speech.SAMPLE_RATE // 10:
                    raise InputError(f"the audio stream ended after {feats.samples / speech.SAMPLE_RATE:.2f} s, "
                                     "before one frame's window was complete (need at least 0.1 s)")
                if not peak >= speech.SILENCE:  # NaN too
                    raise InputError("the audio stream was silent (peak below -60 dBFS): nothing to drive the mouth")
                return out.frames


def next_frame(done: int, ready: int, waited, period: float, drop_late: bool) -> int:
    """The frame to compute next of the ready ones [done, ready): the oldest; with drop_late the oldest that has
    waited (`waited(i)`, seconds since its window was complete) at most a frame period, else the newest."""
    if not drop_late:
        return done
    return next((i for i in range(done, ready) if waited(i) <= period), ready - 1)


def _take(chunks: queue.Queue, block: bool) -> list:
    """The chunks queued so far (waiting for one first if `block`); None marks the end, an exception a failure."""
    taken = [chunks.get()] if block else []
    while (not taken or taken[-1] is not None and not isinstance(taken[-1], BaseException)) and not chunks.empty():
        taken.append(chunks.get_nowait())
    return taken


def _extend(values: np.ndarray, n: int) -> np.ndarray:
    """Hold the last pose/eye for a stdin stream that outlasts the precomputed schedule."""
    return np.concatenate([values, np.repeat(values[-1:], n - len(values), 0)])
