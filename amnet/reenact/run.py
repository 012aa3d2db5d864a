"""Speech + a face → a talking-head MP4 on any runner: offline (a whole file) or streaming (audio paced in real time).

Offline, the frames are batched for throughput. Streaming, a reader thread
delivers the audio as it would be heard (a file played at 1×, or PCM on stdin),
each frame is computed as soon as its audio window is complete, and its latency
is measured from the moment its audio centre was heard to the moment it is
encoded, beside the floor that the centred window imposes (`amnet.speech`).
"""
from __future__ import annotations

import queue
import shutil
import sys
import tempfile
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


@dataclass
class Options:
    source: str
    audio: str  # a file, or "-" for s16le mono PCM on stdin
    output: str
    model: str | None = None
    runtime: str | None = None
    precision: str | None = None
    drive: str | None = None
    from_report: str | None = None  # a `make run` report folder whose `choose` recommendation is the model
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

def default_model(resolution: int | None, reports: str | Path | None = None) -> tuple[str, str]:
    """(model path, why): the shipped weights, or with ``reports`` (--from-report DIR: a `make run` report
    folder) the variant `choose` recommended there. Nothing is taken from the current folder unless named."""
    from amnet import default_checkpoint
    from amnet.core.fileio import read_json

    if reports is None:
        return str(default_checkpoint(resolution)), "the shipped checkpoint"
    sizes = [resolution] if resolution else [DEFAULT_RESOLUTION, 256]
    for r in sizes:
        report = Path(reports) / f"choose_{r}.json"
        if not report.exists():
            continue
        found = read_json(report, "choose report")
        top, build = (found.get("recommended"), found.get("build")) if isinstance(found, dict) else (None, None)
        if not (isinstance(top, dict) and isinstance(top.get("file"), str) and isinstance(build, str)):
            raise InputError(f"{report} is not a `choose` report: it names no build and recommended file")
        model = Path(build) / top["file"]
        if not model.exists():
            raise InputError(f"{report} recommends {model}, which does not exist")
        return str(model), f"recommended by {report}"
    names = " or ".join(f"choose_{r}.json" for r in sizes)
    raise InputError(f"--from-report {reports} holds no {names}: run `amnet-deploy choose` (or make run) there")


def open_model(opts: Options, model: str, why: str):
    from runtimes import registry
    from runtimes.registry import open_runner

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
        from amnet.core.fileio import check_input_path, refuse_overwriting
        from amnet.realdata import to_float
        from amnet.signals import FaceAnalyzer

        self.opts = opts
        if not 1 <= opts.fps <= 120:  # NaN too
            raise InputError(f"--fps must be in [1, 120], got {opts.fps}")
        # Cheap refusals first, before any decoding, dlib or model: no input is read through a FIFO or device,
        # none is replaced by the output.
        check_input_path(opts.source, "--source")
        if opts.drive:
            check_input_path(opts.drive, "--drive")
        if opts.audio != "-":
            check_input_path(opts.audio, "audio")
        refuse_overwriting(opts.output, opts.source, opts.audio, opts.drive, opts.model)
        media.check_writable(opts.output)
        self.pose_override = drive_mod.parse_pose(opts.pose) if opts.pose else None
        model, why = (opts.model, "--model") if opts.model else default_model(opts.resolution, opts.from_report)
        self.speech = Speech(opts.audio, opts.pcm_rate, opts.stream)
        self.runner = None
        try:
            self.analyzer = FaceAnalyzer()
            if media.is_image(opts.source):
                self.source = drive_mod.find_source([media.read_image(opts.source)], self.analyzer, opts.source)
            else:
                with media.Video(opts.source) as video:  # decoded only until a frame has a face
                    self.source = drive_mod.find_source(video, self.analyzer, opts.source)
            if opts.drive:
                media.Video(opts.drive).close()  # a video, not too large: its frames are read by signals()
            known = drive_mod.KnownPeople(self.analyzer, opts.warn).nearest(self.source.crop)
            if known and known[1] > drive_mod.KNOWN_FACE_DISTANCE:
                opts.warn(f"warning: the face in {opts.source} is far from every person in calibration_data/ "
                          f"(nearest {known[0]} at {known[1]:.2f} > {drive_mod.KNOWN_FACE_DISTANCE}): the shipped "
                          "model only reenacts the people it was trained on")
            self.runner, self.model, self.model_why = open_model(opts, model, why)
            self.timings = Timings()
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
            self.close()
            raise
        self.timings = Timings()  # after the warm-up: what follows is the per-frame work

    def signals(self, n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        """Pose and eye per output frame (and the drive crops, for --side-by-side)."""
        times = np.arange(n) / self.opts.fps
        if self.opts.drive:
            pose, eye, crops = drive_mod.drive_signals(self.opts.drive, n, self.opts.fps, self.analyzer,
                                                       self.source, self.opts.progress, self.opts.side_by_side)
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
        self.speech.close()
        if self.runner is not None:
            self.runner.close()


class Speech:
    """The run's speech as 44.1 kHz chunks, never held whole, checked before the first frame is made.

    A file is decoded twice: once to check it (`speech.SpeechCheck`) and count its samples, then chunk by
    chunk as the frames need it. Offline, stdin is first spooled to an anonymous temp file (no name, so
    nothing is left whatever ends the process) and read the same way. A stdin stream is read once, as it
    arrives: ``samples`` is None and the stream is checked at its end.
    """

    def __init__(self, audio: str, pcm_rate: int, stream: bool):
        self.audio, self.rate, self.name = audio, pcm_rate, "stdin" if audio == "-" else audio
        self._spool = None
        self.samples: int | None = None
        if audio == "-":
            if getattr(sys.stdin, "buffer", None) is None:
                raise InputError("--audio -: stdin is closed; pipe signed 16-bit mono PCM into it")
            media.check_rate(pcm_rate, "--pcm-rate")
            if stream:
                return
            self._spool = tempfile.TemporaryFile()
            shutil.copyfileobj(sys.stdin.buffer, self._spool)
        try:
            check = speech.SpeechCheck(self.name)
            for chunk in self.chunks():
                check.push(chunk)
            self.samples = check.finish()
        except BaseException:
            self.close()
            raise

    def chunks(self):
        if self.audio != "-":
            return media.speech_chunks(self.audio)
        if self._spool is None:
            return media.pcm_chunks(sys.stdin.buffer, self.rate)
        self._spool.seek(0)
        return media.pcm_chunks(self._spool, self.rate)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


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
    """Per-frame latency (ms, from the arrival of the frame's audio centre: never negative) over all frames, and apart for the live frames (windows completed by audio heard)
    and the end-of-stream ones (completed by the stream's end, all at once): a 5 s clip has 9 of 125 such frames
    (10 with time deltas), enough to decide its p99 alone, while a live session meets that burst once."""
    def pct(x: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(x, q)), 1) if len(x) else None

    end = np.asarray(end, bool)
    over = lat - floor
    return {"min": pct(lat, 0), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100),
            "floor_p50": pct(floor, 50), "floor_max": pct(floor, 100), "over_floor_p99": pct(over, 99),
            "live_frames": int((~end).sum()), "live_p99": pct(lat[~end], 99),
            "live_over_floor_p99": pct(over[~end], 99), "live_over_floor_max": pct(over[~end], 100),
            "end_frames": int(end.sum()), "end_over_floor_max": pct(over[end], 100)}


def offline(job: Job) -> int:
    """Frames in batches, as the speech is decoded: only a batch's audio (and its windows' look-ahead) is held."""
    from amnet.core.progress import progress_bar

    opts, fps = job.opts, job.opts.fps
    t = time.perf_counter()
    n = speech.video_frames(job.speech.samples, fps)
    pose, eye, crops = job.signals(n)
    job.timings.features += time.perf_counter() - t
    feats = speech.SpeechFeatures(job.delta, floor="causal")
    chunks = job.speech.chunks()
    heard, sound, offset = [], np.zeros(0), 0  # decoded audio not yet in the sound track, from sample `offset`
    step = (job.batch or OFFLINE_BATCH) * 8
    with job.writer() as out:
        for start in progress_bar(range(0, n, step), desc=f"reenact {Path(opts.output).name}", unit="batch",
                                  disable=not opts.progress):
            frames = range(start, min(n, start + step))
            t = time.perf_counter()
            while not feats.finished and feats.ready < speech.frames_needed(frames[-1], fps):
                chunk = next(chunks, None)
                if chunk is None:
                    feats.finish()
                else:
                    feats.push(chunk)
                    heard.append(chunk)
            job.timings.features += time.perf_counter() - t
            faces = job.infer(job.feeds(lambda i: feats.window(i, fps), frames, pose, eye))
            t = time.perf_counter()
            sound, heard = np.concatenate([sound, *heard]), []
            for i, image in zip(frames, job.compose(faces, frames, crops)):
                out.add_frame(image)  # then the speech of this frame's 1/fps (the rest after the last frame)
                if i + 1 < n:
                    out.add_audio(sound[_sample(i, fps) - offset:_sample(i + 1, fps) - offset])
            cut = min(len(sound), _sample(min(frames[-1] + 1, n - 1), fps) - offset)  # the last frame's: kept
            sound, offset = sound[cut:], offset + cut
            job.timings.encode += time.perf_counter() - t
        out.add_audio(np.concatenate([sound, *heard, *chunks]))
        return out.frames


def _sample(frame: int, fps: float) -> int:
    """The first audio sample of a video frame."""
    return int(round(frame / fps * speech.SAMPLE_RATE))


# ---------------------------------------------------------------- streaming

def _paced(chunks, piece: int = STREAM_CHUNK):
    """A file played at 1× as it is decoded: each piece is delivered when its last sample would have been heard."""
    start, heard = time.perf_counter(), 0
    for chunk in chunks:
        for lo in range(0, len(chunk), piece):
            part = chunk[lo:lo + piece]
            heard += len(part)
            delay = start + heard / speech.SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield part


class Arrivals:
    """When each piece of audio arrived. Latency is measured from the arrival of a frame's audio centre, not
    from the start plus the frame's time: a pipe faster than real time delivers a frame's audio long before
    its moment would have come, and "encoded before it was said" (a negative latency) means nothing. At 1×,
    from a file or a microphone, the two agree (to a delivery: 5.8 ms)."""

    def __init__(self):
        self.ends: list[int] = []  # samples received when each piece had arrived
        self.times: list[float] = []

    def add(self, samples: int, at: float) -> None:
        self.ends.append((self.ends[-1] if self.ends else 0) + samples)
        self.times.append(at)

    def at(self, sample: int) -> float:
        """When audio sample ``sample`` (or, past the end, the last one) had arrived."""
        import bisect

        return self.times[min(bisect.bisect_right(self.ends, sample), len(self.ends) - 1)]


def stream(job: Job) -> int:
    """Frames as soon as their audio windows are complete; per-frame latency against the window's floor."""
    opts, fps, rate = job.opts, job.opts.fps, speech.SAMPLE_RATE
    live = job.speech.samples is None  # stdin: as it arrives; a (checked) file: played at 1×
    source = job.speech.chunks() if live else _paced(job.speech.chunks())
    # Pose and blinks are known ahead (a drive video is a file); a stdin stream gets ten minutes' schedule,
    # then holds the last pose and eyes.
    pose, eye, crops = job.signals(speech.video_frames(600 * rate if live else job.speech.samples, fps))
    chunks: queue.Queue = queue.Queue(maxsize=4096)  # (audio, when it arrived)
    arrivals = Arrivals()

    def complete_at(i: int) -> int:
        """The last audio sample frame i's window needs (past the end: the stream's end completes it)."""
        return int(round(speech.window_ready_seconds(i, fps, job.delta) * rate)) - 1

    def read():
        try:
            for chunk in source:
                chunks.put((chunk, time.perf_counter()))
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
            for a, at in arrived:
                feats.push(a)
                arrivals.add(len(a), at)
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
                now = time.perf_counter()
                frame = next_frame(done, ready_frames, lambda i: now - arrivals.at(complete_at(i)), 1 / fps,
                                   opts.drop_late)
                face = job.infer(job.feeds(lambda i: feats.window(i, opts.fps), [frame], pose, eye))
                image = job.compose(face, [frame], crops)[0]
                t = time.perf_counter()
                heard_s = feats.samples / speech.SAMPLE_RATE
                for i in range(done, frame + 1):  # frames skipped by --drop-late show this one
                    out.add_frame(image)
                    centre = arrivals.at(_sample(i, fps))
                    job.timings.latency.append(time.perf_counter() - centre)
                    job.timings.floor.append(arrivals.at(complete_at(i)) - centre)
                    job.timings.end.append(speech.window_ready_seconds(i, fps, job.delta) > heard_s)
                job.timings.encode += time.perf_counter() - t
                job.timings.dropped += frame - done
                done = frame + 1
            heard += [a for a, _ in arrived]
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
