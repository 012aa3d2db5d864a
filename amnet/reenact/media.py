"""Media in and out through PyAV (FFmpeg's libraries, bundled in the wheel): speech, faces, an MP4 with sound.

Nothing here calls a system ffmpeg. The MP4 is written to a hidden temp file
beside the output and renamed onto it only when complete; any exception,
Ctrl-C included, removes the temp file.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from amnet.core.errors import InputError, first_line
from amnet.core.fileio import check_input_path, lazy_import
from amnet.speech import SAMPLE_RATE, SpeechCheck

AV_HINT = "pip install av (PyAV: FFmpeg's libraries in a wheel)"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def _av():
    return lazy_import("av", AV_HINT, "12.0")


def _ffmpeg_said(e: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without errno numbers or the path again."""
    return first_line(getattr(e, "strerror", None) or e, 160)


def resampler(rate: int = SAMPLE_RATE):
    """FFmpeg's resampler to float64 mono at ``rate`` (stateful: feed a stream's frames in order, then None)."""
    return _av().AudioResampler(format="dbl", layout="mono", rate=rate)


def _resampled(resample, frame) -> list[np.ndarray]:
    return [f.to_ndarray().reshape(-1) for f in resample.resample(frame)]


MIN_RATE, MAX_RATE = 8_000, 192_000  # Hz: telephone speech to studio audio. 1 Hz would ask for GBs at 44.1 kHz
MAX_PIXELS = 40_000_000  # a face image or video frame above 40 MP is not a photo of a face (8000² PNG: 3.2 GB)


def check_rate(rate, what) -> int:
    if not (isinstance(rate, int) and MIN_RATE <= rate <= MAX_RATE):
        raise InputError(f"{what}: sample rate {rate} Hz is outside [{MIN_RATE}, {MAX_RATE}] Hz")
    return rate


def check_pixels(width: int, height: int, what) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"{what} is {width}×{height} ({width * height / 1e6:.1f} MP), over the "
                         f"{MAX_PIXELS / 1e6:g} MP limit for a face")


def speech_chunks(path: str | os.PathLike):
    """Any file FFmpeg reads (WAV, FLAC, MP3, OGG, the sound of a video, …) → float64 mono 44.1 kHz chunks, one
    decoded frame at a time: memory does not grow with the length. Pair with speech.SpeechCheck."""
    av = _av()
    check_input_path(path, "audio")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"cannot read audio {path}: {_ffmpeg_said(e)}") from None
    with container:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        if stream.rate:  # the header's rate, before one sample is decoded (0: unknown until the first frame)
            check_rate(stream.rate, path)
        resample = resampler()
        try:
            for frame in container.decode(stream):
                check_rate(frame.sample_rate, path)  # a rate may change inside a stream
                yield from _resampled(resample, frame)
        except av.error.FFmpegError as e:
            raise InputError(f"cannot decode audio {path}: {_ffmpeg_said(e)}") from None
        yield from _resampled(resample, None)


def decode_audio(path: str | os.PathLike) -> np.ndarray:
    """A whole (checked) speech file in memory: for short clips (tests, tools); reenact streams it."""
    check = SpeechCheck(path)
    samples = np.concatenate([np.zeros(0), *map(check.push, speech_chunks(path))])
    check.finish()
    return samples


def pcm_chunks(stream, rate: int, chunk: int = 1024):
    """Signed 16-bit little-endian mono PCM from a binary stream → 44.1 kHz float64 chunks as they arrive."""
    check_rate(rate, "--pcm-rate")
    return _pcm_chunks(stream, rate, chunk)


def _pcm_chunks(stream, rate: int, chunk: int):
    resample, av = resampler(), _av()
    pts, carry = 0, b""
    while True:
        data = stream.read(chunk * 2)
        if not data:
            break
        data = carry + data
        carry = data[len(data) // 2 * 2:]  # an odd byte waits for its other half
        if len(data) < 2:
            continue
        pcm = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
        pts += len(pcm)
        out = _resampled(resample, frame)
        if out:
            yield np.concatenate(out)
    tail = _resampled(resample, None)
    if tail:
        yield np.concatenate(tail)


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 image: its size read from the header (Pillow) and capped before OpenCV decodes it."""
    import warnings

    import cv2
    from PIL import Image

    check_input_path(path, "image")
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the cap below is ours, and lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{path} has over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP, over the "
                         f"{MAX_PIXELS / 1e6:g} MP limit for a face") from None
    except (OSError, ValueError, SyntaxError):  # not an image Pillow knows: nor one to trust OpenCV with
        raise InputError(f"cannot decode image {path}") from None
    check_pixels(width, height, path)
    from amnet.core.progress import native_stderr_dropped

    with native_stderr_dropped():  # libpng/libjpeg print their own line for a damaged file
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)  # bytes: no findDecoder warning
    if bgr is None:
        raise InputError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Video:
    """A video's frames, RGB uint8, decoded one at a time as they are iterated: a 60 s clip holds one frame,
    not 1500. Frames above MAX_PIXELS are refused from the stream's header, before one is decoded."""

    def __init__(self, path: str | os.PathLike):
        av = _av()
        self.path = check_input_path(path, "video")
        try:
            self._container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as e:
            raise InputError(f"cannot open video {path}: {_ffmpeg_said(e)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"cannot open video {path}: not a video file, or one without a video stream")
        self._stream = self._container.streams.video[0]
        try:
            check_pixels(self._stream.codec_context.width, self._stream.codec_context.height, path)
        except InputError:
            self._container.close()
            raise
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 25.0

    def __iter__(self):
        av = _av()
        try:
            for frame in self._container.decode(self._stream):
                check_pixels(frame.width, frame.height, self.path)
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise InputError(f"cannot decode video {self.path}: {_ffmpeg_said(e)}") from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def video_encoder() -> str:
    """H.264 where the bundled FFmpeg has an encoder for it, else MPEG-4 Part 2 (both play everywhere)."""
    av = _av()
    for name in ("libx264", "libopenh264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError or ValueError by version
            continue
    raise InputError("the installed PyAV has neither an H.264 nor an MPEG-4 encoder")


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse early: an output that is a folder, a folder that does not exist or cannot be written."""
    from amnet.core.fileio import check_output_path

    path = check_output_path(path)
    if path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise InputError(f"{path}: the output is an MP4 file, name it *.mp4")
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist")
    import tempfile

    try:  # a real try (root passes every access() check; a read-only mount does not pass this)
        fd, probe_file = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe_file)
    except OSError as e:
        raise InputError(f"output folder {folder} is not writable ({e.strerror})") from None
    return path


class Mp4Writer:
    """Video frames (RGB uint8) and 44.1 kHz mono speech → one MP4 (H.264 or MPEG-4, AAC), published by rename."""

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int, crf: int = 18,
                 live: bool = False):
        self.path = check_writable(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.size = (width, height)
        self.crf, self.live = crf, live
        self.frames = 0
        self.coded = 0  # video packets out of the encoder so far (live: one per frame given)
        self.audio_samples = 0
        self.codec = video_encoder()
        self._container = None

    def __enter__(self) -> "Mp4Writer":
        av = _av()
        self._container = av.open(str(self.tmp), "w", format="mp4")
        try:
            video = self._container.add_stream(self.codec, rate=self.fps)
            video.width, video.height = self.size
            video.pix_fmt = "yuv420p"
            if self.codec == "libx264":
                video.options = {"crf": str(self.crf), "preset": "veryfast"}
                if self.live:  # no lookahead or B-frames: a frame is coded when given, not frames later on
                    video.options |= {"tune": "zerolatency"}  # threads that would run beside the model
            else:
                video.bit_rate = 4_000_000
            audio = self._container.add_stream("aac", rate=SAMPLE_RATE)
            audio.layout = "mono"
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        self._video, self._audio = video, audio
        return self

    def add_frame(self, rgb: np.ndarray) -> None:
        av = _av()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = self.frames, 1 / self.fps
        packets = self._video.encode(frame)
        self._mux(packets)
        self.coded += len(packets)
        self.frames += 1

    def add_audio(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        av = _av()
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self.audio_samples, Fraction(1, SAMPLE_RATE)
        self._mux(self._audio.encode(frame))
        self.audio_samples += len(samples)

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def __exit__(self, kind, error, tb) -> None:
        container, self._container = self._container, None
        try:
            if kind is None:
                for packets in (self._video.encode(), self._audio.encode()):  # flush the encoders
                    for packet in packets:
                        container.mux(packet)
            container.close()
            container = None
            if kind is None:
                with open(self.tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(self.tmp, self.path)
        finally:
            if container is not None:  # failing already: closing must not replace the first error
                try:
                    container.close()
                except Exception:  # noqa: BLE001
                    pass
            if self.tmp.exists():  # a failure or Ctrl-C anywhere above: no half-written video under any name
                self.tmp.unlink()


def probe(path: str | os.PathLike) -> dict:
    """What a player sees: codecs, decoded video frames, frame rate, audio seconds (decoded samples / rate)."""
    av = _av()
    with av.open(str(path)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        info = {"video_codec": v.codec_context.name, "audio_codec": a.codec_context.name,
                "fps": float(v.average_rate), "width": v.codec_context.width, "height": v.codec_context.height,
                "audio_stream_seconds": float(a.duration * a.time_base) if a.duration else None}
        info["frames"] = [f.to_ndarray(format="rgb24") for f in container.decode(v)]
    with av.open(str(path)) as container:
        info["audio_decoded_seconds"] = sum(f.samples for f in container.decode(audio=0)) / SAMPLE_RATE
    return info

