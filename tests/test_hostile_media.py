"""Issue 26, `reenact`/`signals` media: each hostile input is one line on stderr, exit 2, nothing lost or left behind,
and memory does not grow with the length of the speech or of a video."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amnet.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FAST = ["--resolution", "16", "--fps", "1", "--quiet"]  # the shipped checkpoint's cheapest run: 1 frame a second


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(face.png, 5 s of speech.wav at 16 kHz)."""
    from amnet.reenact.demo import write_inputs

    return write_inputs(tmp_path_factory.mktemp("demo"), person=0, seconds=5.0)


def cli(*argv, stdin=None, **kw):
    return subprocess.run([sys.executable, "-m", "amnet.cli", *argv], cwd=ROOT, env=ENV, capture_output=True,
                          stdin=stdin, timeout=kw.pop("timeout", 120), **kw)


def one_line_exit_2(r, needle):
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err


def peak_rss_mb(*argv) -> float:
    """Peak RSS of one `amnet-deploy` run, measured by a fresh parent (RUSAGE_CHILDREN is the max over children)."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "amnet.cli", *argv], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    rc, kb = r.stdout.split()
    assert rc == "0", r.stderr
    return int(kb) / 1024


def write_wav(path, seconds, face_speech, scale=1.0, subtype="PCM_16"):
    import soundfile as sf

    wav, sr = sf.read(face_speech, dtype="float64")
    sf.write(path, scale * np.tile(wav, int(np.ceil(seconds * sr / len(wav))))[:int(seconds * sr)], sr,
             subtype=subtype)
    return path


def write_video(path, seconds, face_png, fps=25):
    """A still of the face as an H.264 clip (tiny on disk, 416×336 RGB per decoded frame)."""
    import av
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(face_png)), cv2.COLOR_BGR2RGB)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        s.options = {"preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        for i in range(int(seconds * fps)):
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def short_run(demo, tmp_path_factory):
    """Peak RSS of 5 s of speech with a 5 s source and drive video: the baseline of the two memory tests."""
    d = tmp_path_factory.mktemp("rss")
    face, wav = demo
    video = write_video(d / "v5.mp4", 5, face)
    return d, peak_rss_mb("reenact", "--source", str(video), "--drive", str(video), "--audio", str(wav),
                          "--output", str(d / "out.mp4"), *FAST)


# ---------------------------------------------------------------- 1. speech streamed, its rate capped

def test_speech_memory_does_not_grow_with_its_length(demo, short_run):
    """Decoded whole and expanded to 44.1 kHz, 60 s of speech cost ~350 MB more than 5 s (10 minutes: 4.25 GB)."""
    d, short = short_run
    face, wav = demo
    video = d / "v5.mp4"
    long = peak_rss_mb("reenact", "--source", str(video), "--drive", str(video),
                       "--audio", str(write_wav(d / "s60.wav", 60, wav)), "--output", str(d / "out60.mp4"), *FAST)
    assert long - short < 60, (short, long)


def test_a_sample_rate_outside_the_limits_is_refused_from_the_header(demo, tmp_path):
    import soundfile as sf

    from amnet.reenact.media import MAX_RATE, MIN_RATE

    face, _ = demo
    sf.write(tmp_path / "one_hz.wav", np.sin(np.arange(4000)).astype(np.float32), 1)  # 8 KB that says 1 Hz
    r = cli("reenact", "--source", str(face), "--audio", str(tmp_path / "one_hz.wav"),
            "--output", str(tmp_path / "r1.mp4"), *FAST)
    one_line_exit_2(r, f"[{MIN_RATE}, {MAX_RATE}] Hz")
    for rate in (1, MAX_RATE + 1):
        r = cli("reenact", "--source", str(face), "--audio", "-", "--pcm-rate", str(rate),
                "--output", str(tmp_path / "r1.mp4"), *FAST, input=b"\x01\x02" * 1024)
        one_line_exit_2(r, f"[{MIN_RATE}, {MAX_RATE}] Hz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one_hz.wav"]  # no .part left


# ---------------------------------------------------------------- 2. video frames streamed

def test_video_memory_does_not_grow_with_its_length(demo, short_run):
    """Every frame decoded into a list: a 60 s 416×336 source and drive held ~1.2 GB more than 5 s ones."""
    d, short = short_run
    face, wav = demo
    video = write_video(d / "v60.mp4", 60, face)
    long = peak_rss_mb("reenact", "--source", str(video), "--drive", str(video), "--audio", str(wav),
                       "--output", str(d / "outv60.mp4"), *FAST)
    assert long - short < 60, (short, long)


# ---------------------------------------------------------------- 3. a pixel cap, read from the header

def test_an_image_over_the_pixel_cap_is_refused_before_it_is_decoded(demo, tmp_path, capfd):
    from PIL import Image

    from amnet.reenact.media import MAX_PIXELS

    face, wav = demo
    side = int(np.sqrt(MAX_PIXELS)) + 1
    Image.new("1", (side, side)).save(tmp_path / "huge.png")  # a few KB on disk, ~3 GB as RGB
    capfd.readouterr()
    rc = main(["reenact", "--source", str(tmp_path / "huge.png"), "--audio", str(wav),
               "--output", str(tmp_path / "out.mp4"), *FAST])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{MAX_PIXELS / 1e6:g} MP limit" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.png"]


def test_a_video_over_the_pixel_cap_is_refused_from_its_stream_header(demo, tmp_path, monkeypatch):
    """The video path checks the stream's width × height against the same constant (lowered here: a real
    40 MP video is too big to make in a test)."""
    from amnet.reenact import media

    face, wav = demo
    video = write_video(tmp_path / "v.mp4", 0.2, face)
    monkeypatch.setattr(media, "MAX_PIXELS", 416 * 336 - 1)
    with pytest.raises(media.InputError, match="MP limit"):
        media.Video(video)


# ---------------------------------------------------------------- 4. FIFOs refused; no OpenCV line

def test_a_fifo_as_source_is_refused_not_waited_on(demo, tmp_path):
    face, wav = demo
    for flag in ("--source", "--drive", "--audio"):
        fifo = tmp_path / f"{flag[2:]}.mp4"
        os.mkfifo(fifo)
        argv = {"--source": str(face), "--audio": str(wav), flag: str(fifo)}
        r = cli("reenact", *[x for kv in argv.items() for x in kv], "--output", str(tmp_path / "out.mp4"), *FAST,
                timeout=60)  # the old code blocked in open() for ever
        one_line_exit_2(r, "FIFO")
        assert "WARN" not in r.stderr.decode()


def test_a_video_that_is_not_one_is_one_line_of_ours(demo, tmp_path):
    face, wav = demo
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
    r = cli("reenact", "--source", str(tmp_path / "junk.mp4"), "--audio", str(wav),
            "--output", str(tmp_path / "out.mp4"), *FAST)
    one_line_exit_2(r, "junk.mp4")
    assert "WARN" not in r.stderr.decode()


# ---------------------------------------------------------------- 5. an output that is an input

@pytest.mark.parametrize("flag", ["--source", "--audio", "--drive", "a link to --source"])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(demo, tmp_path, flag, capsys):
    face, wav = demo
    precious = tmp_path / "precious.mp4"
    precious.write_bytes(b"the only copy")
    argv = {"--source": str(face), "--audio": str(wav)}
    output = precious
    if flag.startswith("a link"):
        argv["--source"] = str(precious)
        output = tmp_path / "link.mp4"
        output.symlink_to(precious)
    else:
        argv[flag] = str(precious)
    rc = main(["reenact", *[x for kv in argv.items() for x in kv], "--output", str(output), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is also an input" in err[0], err
    assert precious.read_bytes() == b"the only copy"


# ---------------------------------------------------------------- 6. the default model is not the current folder's

def test_the_default_model_is_never_taken_from_the_current_folder(tmp_path, monkeypatch):
    from amnet import default_checkpoint
    from amnet.reenact.run import default_model

    planted = tmp_path / "anything.onnx"
    planted.write_text("loaded from wherever the user stands")
    reports = tmp_path / "reports" / "latest"
    reports.mkdir(parents=True)
    (reports / "choose_128.json").write_text(json.dumps({"build": str(tmp_path), "recommended": {"file": planted.name}}))
    monkeypatch.chdir(tmp_path)
    assert default_model(None) == (str(default_checkpoint()), "the shipped checkpoint")
    assert default_model(None, reports)[0] == str(planted)  # only when named (--from-report)


@pytest.mark.parametrize("content", ["[1, 2]", '{"build": 3, "recommended": []}', "[" * 100_000])
def test_a_malformed_report_named_by_from_report_is_one_line(demo, tmp_path, content, capsys):
    face, wav = demo
    (tmp_path / "choose_128.json").write_text(content)
    rc = main(["reenact", "--source", str(face), "--audio", str(wav), "--output", str(tmp_path / "o.mp4"),
               "--from-report", str(tmp_path), "--quiet"])  # no --resolution: the report at 128² is read
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "choose" in err[0] and "choose_128.json" in err[0], err


# ---------------------------------------------------------------- 7. closed stdin

def test_closed_stdin_is_one_line(demo, tmp_path):
    face, _ = demo
    r = cli("reenact", "--source", str(face), "--audio", "-", "--output", str(tmp_path / "o.mp4"), *FAST,
            stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    one_line_exit_2(r, "stdin is closed")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 8. absurd sample values

def test_absurd_float_samples_are_refused_by_reenact_and_signals(demo, tmp_path):
    from amnet.speech import MAX_SAMPLE

    face, wav = demo
    loud = write_wav(tmp_path / "loud.wav", 1.0, wav, scale=1e30, subtype="FLOAT")
    video = write_video(tmp_path / "v.mp4", 0.2, face)
    r = cli("reenact", "--source", str(face), "--audio", str(loud), "--output", str(tmp_path / "o.mp4"), *FAST)
    one_line_exit_2(r, f"over {MAX_SAMPLE:g}")
    r = cli("signals", str(video), "--audio", str(loud), "--output", str(tmp_path / "sig"), "--quiet")
    one_line_exit_2(r, f"over {MAX_SAMPLE:g}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loud.wav", "v.mp4"]


# ---------------------------------------------------------------- 9. latency against a pipe faster than real time

def test_stream_latency_from_a_fast_pipe_is_never_negative(demo, tmp_path):
    """5 s of PCM in one gulp: measured against start + i/fps, frame 2's latency was about -1.5 s; it is measured
    from the arrival of the frame's audio, which the encoded frame can only follow."""
    import soundfile as sf

    face, wav = demo
    pcm, sr = sf.read(wav, dtype="int16")
    r = cli("reenact", "--source", str(face), "--audio", "-", "--pcm-rate", str(sr), "--stream", "--json",
            "--output", str(tmp_path / "o.mp4"), *FAST, input=pcm.tobytes(), timeout=300)
    assert r.returncode == 0, r.stderr
    lat = json.loads(r.stdout)["latency_ms"]
    assert lat["p50"] >= lat["floor_p50"] >= 0 and lat.get("min", lat["p50"]) >= 0, lat


# ---------------------------------------------------------------- 10. an unwritable cache is a warning

def test_a_cache_folder_that_cannot_be_made_is_a_warning(tmp_path, monkeypatch):
    from amnet.reenact.drive import KnownPeople
    from amnet.signals import FaceAnalyzer

    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    warnings = []
    people = KnownPeople(FaceAnalyzer(), warn=warnings.append)
    assert len(set(people.names)) == 3  # the run goes on, uncached
    assert len(warnings) == 1 and "not caching" in warnings[0] and "\n" not in warnings[0]


# ---------------------------------------------------------------- 11. a hostile calibration manifest

@pytest.mark.parametrize("content", ['{"clips": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"clips": [1]}'],
                         ids=["100k deep", "not clips"])
def test_a_hostile_calibration_manifest_is_one_input_error(tmp_path, monkeypatch, content):
    import shutil

    from amnet.core.errors import InputError
    from amnet.realdata import default_dir
    from amnet.reenact.drive import KnownPeople
    from amnet.signals import FaceAnalyzer

    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(default_dir() / "calib.npz", calib / "calib.npz")
    (calib / "manifest.json").write_text(content)
    monkeypatch.setenv("AMNET_CALIB_DIR", str(calib))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached: the manifest is read
    with pytest.raises(InputError, match="manifest"):
        KnownPeople(FaceAnalyzer())
