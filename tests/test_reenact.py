"""`amnet-deploy reenact` and the speech features under it, on real speech (CMU ARCTIC) and real faces."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amnet import speech
from amnet.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "calibration_data" / "speech"


def arctic(seconds=None):
    """The two ARCTIC utterances back to back at their own 16 kHz (speech the model never saw)."""
    import soundfile as sf

    parts = [sf.read(SPEECH / f"arctic_a000{k}.flac", dtype="float64") for k in (7, 9)]
    wav = np.concatenate([w for w, _ in parts])
    return (wav if seconds is None else wav[:int(seconds * 16000)]), 16000


def at_44k(wav, sr):
    import librosa

    return librosa.resample(wav, orig_sr=sr, target_sr=speech.SAMPLE_RATE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from amnet.reenact.demo import write_inputs

    return write_inputs(tmp_path_factory.mktemp("demo"), person=0, seconds=5.0)


@pytest.fixture(scope="module")
def clip(demo):
    """5.00 s of ARCTIC speech as a 16 kHz stereo OGG (resampling and down-mixing on the way in)."""
    import soundfile as sf

    wav, sr = sf.read(demo[1], dtype="float64")
    assert len(wav) == 5 * sr
    path = demo[1].with_name("speech.ogg")
    sf.write(path, np.stack([wav, 0.8 * wav], axis=1), sr, format="OGG")
    return path


@pytest.fixture(scope="module")
def face(demo):
    """A held-out source face of calibration_data's first person, with some background around it."""
    return demo[0]


# ---------------------------------------------------------------- speech features

def test_features_equal_librosa_mfcc_and_deltas():
    """The frame-by-frame float64 features are librosa's, computed independently here."""
    import librosa

    y = at_44k(*arctic(2.0)).astype(np.float32)
    mfcc = librosa.feature.mfcc(y=y, sr=speech.SAMPLE_RATE, n_mfcc=20, n_fft=2048, hop_length=512)
    for convention, axis in (("official", 0), ("time", 1)):
        d1 = librosa.feature.delta(mfcc, width=5, axis=axis, mode="nearest")
        expected = np.concatenate([mfcc, d1, librosa.feature.delta(d1, width=5, axis=axis, mode="nearest")])
        got = speech.features(y, convention, floor="global")
        assert got.shape == expected.shape == (60, 1 + len(y) // 512)
        # librosa computes in float32: agreement to its precision (values reach several hundred)
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3 * np.abs(expected).max() / 100)


@pytest.mark.parametrize("convention", speech.DELTAS)
@pytest.mark.parametrize("floor", speech.FLOORS)
def test_stream_in_random_chunks_equals_the_whole_file(convention, floor):
    y = at_44k(*arctic(3.0))
    whole = speech.features(y, convention, floor)
    stream = speech.SpeechFeatures(convention, floor)
    rng = np.random.default_rng(1)
    i = 0
    while i < len(y):
        n = int(rng.integers(1, 5000))
        stream.push(y[i:i + n])
        i += n
    stream.finish()
    assert stream.total_frames == whole.shape[1]
    assert np.abs(stream.features() - whole).max() <= 1e-5


def test_causal_floor_is_the_global_one_once_the_peak_has_passed():
    """Speech louder than the prior peak: the causal floor equals librosa's from the loudest frame on, not before."""
    y = 3.0 * at_44k(*arctic(3.0))  # +9.5 dB: its loudest mel band is above PRIOR_PEAK_DB
    g, c = speech.features(y, floor="global"), speech.features(y, floor="causal")
    db = speech.mel_db(np.pad(y, 1024)[np.arange(2048)[None] + 512 * np.arange(g.shape[1])[:, None]])
    assert db.max() > speech.PRIOR_PEAK_DB + 3
    peak_at = int(np.argmax(db.max(axis=1)))
    np.testing.assert_allclose(c[:, peak_at:], g[:, peak_at:], atol=1e-9)
    assert np.abs(c[:, :peak_at] - g[:, :peak_at]).max() > 1.0  # before it, a stream cannot know the peak


def test_a_frame_is_ready_exactly_when_its_window_has_been_heard():
    """window_ready_seconds is the latency floor: one sample earlier the window is not complete."""
    y = at_44k(*arctic(3.0))
    fps = 25.0
    for frame in (0, 7, 40):
        need = int(round(speech.window_ready_seconds(frame, fps) * speech.SAMPLE_RATE))
        for heard, ready in ((need - 1, False), (need, True)):
            s = speech.SpeechFeatures()
            s.push(y[:heard])
            assert (s.ready >= speech.frames_needed(frame, fps)) is ready
    floor = speech.window_ready_seconds(0, fps)
    assert abs(floor - (31 * 512 + 1024) / 44100) < 1e-12  # 371.5 ms of future hops + the 23.2 ms half window


def test_blink_schedule_is_natural_and_fixed():
    from amnet.reenact.drive import CLOSED_EYE, blink_eye, blink_starts

    starts = blink_starts(60.0)
    assert 15 <= len(starts) <= 20  # blinks per minute, as people do
    assert blink_starts(60.0) == starts and min(np.diff(starts)) > 2.0
    times = np.arange(0, 10, 1 / 25)
    eye = blink_eye(np.array([0.3, 0.28], np.float32), times)
    assert eye.min() == pytest.approx(CLOSED_EYE, abs=0.01) and eye.max() == pytest.approx(0.3)
    assert (eye[:, 0] < 0.2).mean() < 0.1  # eyes mostly open


# ---------------------------------------------------------------- the command

def test_five_second_clip_on_openvino_int8(ov_build, clip, face, tmp_path, capsys):
    """The issue's bar: 125 ± 1 frames at 25 fps, 5.00 ± 0.05 s of AAC, a face in ≥ 95 % of the frames."""
    from amnet.reenact.media import probe
    from amnet.signals import FaceAnalyzer

    d, arts = ov_build
    out = tmp_path / "talk.mp4"
    rc = main(["reenact", "--source", str(face), "--audio", str(clip), "--output", str(out),
               "--model", str(d / arts["int8"]["file"]), "--quiet", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["runtime"], summary["precision"], summary["resolution"]) == ("openvino", "int8", 128)
    info = probe(out)
    assert abs(len(info["frames"]) - 125) <= 1 and summary["frames"] == len(info["frames"])
    assert info["fps"] == 25.0 and info["video_codec"] in ("h264", "mpeg4") and info["audio_codec"] == "aac"
    assert abs(info["audio_stream_seconds"] - 5.0) <= 0.05 and abs(info["audio_decoded_seconds"] - 5.0) <= 0.05
    analyzer = FaceAnalyzer()
    found = sum(analyzer.landmarks(f) is not None for f in info["frames"])
    assert found >= 0.95 * len(info["frames"])
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]  # no temp file left


def test_stream_emits_the_offline_frames_after_the_floor(face, tmp_path, capsys, monkeypatch):
    """Played at 1×, every frame comes after its window's floor, and the frames are those of a file run.

    On the PyTorch checkpoint: one runtime configuration for both runs (OpenVINO runs offline in throughput
    mode, whose kernels may round differently from the stream's latency mode), and one encoder setting
    (a stream encodes with x264's zerolatency tune, which codes the same picture a little differently)."""
    import soundfile as sf

    from amnet import default_checkpoint
    from amnet.reenact import media
    from amnet.reenact.media import probe

    writer = media.Mp4Writer
    monkeypatch.setattr(media, "Mp4Writer", lambda *a, **k: writer(*a, **{**k, "live": True}))

    wav, sr = arctic(2.0)
    sf.write(tmp_path / "speech.wav", wav, sr)
    model = str(default_checkpoint())
    runs = {}
    for mode in ("offline", "stream"):
        out = tmp_path / f"{mode}.mp4"
        extra = ["--stream"] if mode == "stream" else []
        assert main(["reenact", "--source", str(face), "--audio", str(tmp_path / "speech.wav"), "--output", str(out),
                     "--model", model, "--quiet", "--json", *extra]) == 0
        runs[mode] = (json.loads(capsys.readouterr().out), probe(out)["frames"])
    (s_off, f_off), (s_str, f_str) = runs["offline"], runs["stream"]
    assert s_off["frames"] == s_str["frames"] == 50
    lat = s_str["latency_ms"]
    assert lat["p50"] >= lat["floor_p50"] - 1.0  # nothing can beat the window (1 ms: clock granularity)
    # The frames whose windows reach past the audio's end are completed by the end of the stream, not by audio.
    from amnet import speech
    heard = len(media.decode_audio(tmp_path / "speech.wav")) / speech.SAMPLE_RATE
    ends = sum(speech.window_ready_seconds(i, 25.0, s_str["audio_delta"]) > heard for i in range(50))
    assert 0 < ends < 50 and (lat["end_frames"], lat["live_frames"]) == (ends, 50 - ends)
    # The same model inputs (the causal features are stream-exact), so the same pictures up to the video codec.
    diff = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(f_off, f_str)])
    assert diff < 1.0


def test_drop_late_computes_the_oldest_frame_not_yet_late():
    from amnet.reenact.run import next_frame

    period = 0.04
    waited = {3: 0.095, 4: 0.055, 5: 0.015, 6: 0.0}.get  # frames 3–6 ready, 3 and 4 over a period late
    assert next_frame(3, 7, waited, period, drop_late=False) == 3  # without it: in order, whatever the wait
    assert next_frame(3, 7, waited, period, drop_late=True) == 5
    assert next_frame(3, 5, waited, period, drop_late=True) == 4  # all late: the newest, shown for the others
    assert next_frame(5, 6, waited, period, drop_late=True) == 5


def test_a_live_writer_codes_each_frame_when_given(tmp_path):
    """--stream measures latency to the encoded frame: with lookahead the packet would come frames later."""
    from amnet.reenact.media import Mp4Writer, video_encoder

    if video_encoder() != "libx264":
        pytest.skip("the bundled FFmpeg has no libx264 (MPEG-4 Part 2 has no lookahead to turn off)")
    rng = np.random.default_rng(0)
    for live in (False, True):
        with Mp4Writer(tmp_path / f"live{live}.mp4", 25, 64, 64, live=live) as out:
            for i in range(12):
                out.add_frame(rng.integers(0, 256, (64, 64, 3), np.uint8))
                if live:
                    assert out.coded == out.frames
            if not live:
                assert out.coded < out.frames  # lookahead holds frames back


def test_an_unknown_face_gets_a_one_line_warning(tmp_path):
    import cv2
    import matplotlib

    from amnet.reenact.drive import KnownPeople
    from amnet.signals import FaceAnalyzer

    people = KnownPeople(FaceAnalyzer())
    assert len(set(people.names)) == 3
    hopper = cv2.cvtColor(cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
                          cv2.COLOR_BGR2RGB)
    name, dist = people.nearest(hopper)
    assert dist > 0.6
    with np.load(ROOT / "calibration_data" / "heldout.npz") as z:
        known = z["images"][z["target_idx"][0]]  # a held-out frame of person 0, not one of the references
    name, dist = people.nearest(known)
    assert dist < 0.6 and name == people.names[0]


def test_known_faces_are_embedded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from amnet.reenact.drive import KnownPeople
    from amnet.signals import FaceAnalyzer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    analyzer = FaceAnalyzer()
    calls = []
    embed = KnownPeople.embed
    monkeypatch.setattr(KnownPeople, "embed", lambda self, rgb: calls.append(1) or embed(self, rgb))
    first = KnownPeople(analyzer)
    [cache] = (tmp_path / "amnet-deploy").iterdir()
    assert len(calls) == len(first.embeddings) > 0
    calls.clear()
    second = KnownPeople(analyzer)
    assert not calls and second.names == first.names
    np.testing.assert_array_equal(np.stack(second.embeddings), np.stack(first.embeddings))
    cache.write_bytes(b"not an npz")  # damaged: embedded again, and rewritten
    third = KnownPeople(analyzer)
    assert len(calls) == len(first.embeddings) and third.names == first.names
    assert KnownPeople(analyzer).names == first.names and len(calls) == len(first.embeddings)


def test_default_model_is_the_last_recommendation(ov_build, tmp_path):
    from amnet import default_checkpoint
    from amnet.core.errors import InputError
    from amnet.reenact.run import default_model

    d, arts = ov_build
    assert default_model(128) == (str(default_checkpoint()), "the shipped checkpoint")
    with pytest.raises(InputError, match="choose_128.json"):  # a report folder named, but no report in it
        default_model(128, tmp_path)
    (tmp_path / "choose_128.json").write_text(json.dumps(
        {"build": str(d), "recommended": {"file": arts["int8"]["file"], "runtime": "openvino"}}))
    path, why = default_model(None, tmp_path)
    assert path == str(d / arts["int8"]["file"]) and "choose_128.json" in why


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing left

def _bad_inputs(tmp: Path, face: Path, clip: Path):
    import cv2
    import soundfile as sf

    (tmp / "noise.wav").write_text("not audio")
    sf.write(tmp / "silent.wav", np.zeros(16000), 16000)
    cv2.imwrite(str(tmp / "wall.png"), np.full((200, 200, 3), 128, np.uint8))
    (tmp / "empty.mp4").write_bytes(b"\x00" * 64)
    import av

    with av.open(str(tmp / "sound_only.mp4"), "w") as c:  # a valid MP4 without one video frame
        stream = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            c.mux(packet)
    (tmp / "model.onnx").write_text("not a model")
    (tmp / "model.txt").write_text("not a model")
    (tmp / "folder.mp4").mkdir()
    ok = ["--source", str(face), "--audio", str(clip)]
    return {
        "unreadable audio": (["--source", str(face), "--audio", str(tmp / "noise.wav")], "audio"),
        "silent audio": (["--source", str(face), "--audio", str(tmp / "silent.wav")], "silent"),
        "no face": (["--source", str(tmp / "wall.png"), "--audio", str(clip)], "no face"),
        "broken video": (["--source", str(tmp / "empty.mp4"), "--audio", str(clip)], "empty.mp4"),
        "video without frames": (["--source", str(tmp / "sound_only.mp4"), "--audio", str(clip)], "without a video stream"),
        "broken model": ([*ok, "--model", str(tmp / "model.onnx")], "model.onnx"),
        "model of the wrong kind": ([*ok, "--model", str(tmp / "model.txt")], "model.txt"),
        "bad pose": ([*ok, "--pose", "10,20"], "--pose"),
        "a frame rate that rounds to nothing": ([*ok, "--fps", "1e-9"], "--fps"),
        "a checkpoint asked for int8": ([*ok, "--model", str(ROOT / "amnet" / "default" / "amnet.safetensors"),
                                         "--precision", "int8"], "runs in fp32"),
        "output is a folder": ([*ok, "--output", str(tmp / "folder.mp4")], "folder"),
        "output folder not writable": ([*ok, "--output", "/proc/out.mp4"], "not writable"),
        "output folder missing": ([*ok, "--output", str(tmp / "nowhere" / "out.mp4")], "does not exist"),
    }


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(ov_build, face, clip, tmp_path, capfd):
    """capfd: what C libraries (FFmpeg, dlib) print to the file descriptors counts as output too."""
    d, arts = ov_build
    cases = _bad_inputs(tmp_path, face, clip)
    before = set(tmp_path.iterdir())
    capfd.readouterr()  # what the fixtures printed
    for what, (argv, needle) in cases.items():
        if "--output" not in argv:
            argv = [*argv, "--output", str(tmp_path / "out.mp4")]
        if "--model" not in argv:
            argv = [*argv, "--model", str(d / arts["int8"]["file"])]
        rc = main(["reenact", *argv, "--quiet"])
        err = capfd.readouterr().err.strip().splitlines()
        assert rc == 2, what
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (what, err)
        assert set(tmp_path.iterdir()) == before, what  # no output, no temp file


@pytest.mark.parametrize("pcm, needle", [(np.zeros(32000, np.int16).tobytes(), "silent"), (b"abc", "0.1 s")],
                         ids=["one second of silence", "three bytes"])
def test_a_silent_or_empty_stdin_stream_is_refused_and_leaves_nothing(ov_build, face, tmp_path, pcm, needle):
    d, arts = ov_build
    out = tmp_path / "live.mp4"
    r = subprocess.run([sys.executable, "-m", "amnet.cli", "reenact", "--source", str(face), "--audio", "-",
                        "--pcm-rate", "16000", "--stream", "--output", str(out),
                        "--model", str(d / arts["int8"]["file"]), "--quiet"], input=pcm, capture_output=True, cwd=ROOT, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_half_way_removes_the_partial_file(ov_build, face, clip, tmp_path, sig, code):
    d, arts = ov_build
    out = tmp_path / "talk.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "amnet.cli", "reenact", "--source", str(face), "--audio", str(clip), "--output",
         str(out), "--model", str(d / arts["int8"]["file"]), "--stream", "--quiet"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".part") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.name.endswith(".part") for p in tmp_path.iterdir()), "never started writing"
    time.sleep(1.0)  # a second of speech into the stream: frames are being written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert list(tmp_path.iterdir()) == []


def test_drop_late_bounds_the_latency_of_a_slow_model(ov_build, face, tmp_path, monkeypatch):
    """A model slower than real time (OpenVINO INT8 + 100 ms per call): without --drop-late the lag grows
    with the clip; with it, late frames repeat the newest one and the latency stays within a few calls."""
    import soundfile as sf

    from amnet.reenact import run

    d, arts = ov_build
    wav, sr = arctic(2.0)
    sf.write(tmp_path / "speech.wav", wav, sr)
    infer = run.Job.infer
    delay = 0.1

    def slow(self, feeds):
        time.sleep(delay * len(feeds["source"]))
        return infer(self, feeds)

    monkeypatch.setattr(run.Job, "infer", slow)
    results = {}
    for drop in (False, True):
        opts = run.Options(str(face), str(tmp_path / "speech.wav"), str(tmp_path / f"{drop}.mp4"),
                           model=str(d / arts["int8"]["file"]), stream=True, drop_late=drop, progress=False,
                           warn=lambda line: None)
        results[drop] = run.reenact(opts)
    slow_lag, dropped = results[False]["latency_ms"], results[True]
    assert results[False]["frames"] == dropped["frames"] == 50 and results[False]["dropped_frames"] == 0
    assert slow_lag["over_floor_p99"] > 1000 * delay * 10  # 50 frames × ≥ 100 ms for 2 s of audio: seconds behind
    assert dropped["dropped_frames"] > 0
    # Bounded by a few model calls (timed in this run, so a loaded machine does not fail it), not by the clip:
    # a frame that became ready just after a call began waits for that call and its own, 2 calls + slack.
    per_call_ms = 1000 * (dropped["split_s"]["model"] / (dropped["frames"] - dropped["dropped_frames"]) + delay)
    assert dropped["latency_ms"]["over_floor_p99"] < 4 * per_call_ms
    assert dropped["latency_ms"]["over_floor_p99"] < slow_lag["over_floor_p99"] / 4


def test_stream_window_waits_for_its_audio_and_pcm_keeps_odd_bytes():
    import io

    from amnet.core.errors import InputError
    from amnet.reenact.media import pcm_chunks

    y = at_44k(*arctic(1.0))
    s = speech.SpeechFeatures()
    s.push(y[:20000])
    assert s.ready < speech.frames_needed(10, 25.0)
    with pytest.raises(InputError, match="only"):
        s.window(10, 25.0)  # never an edge-padded guess while the stream is still running
    s.push(y[20000:])
    s.finish()
    np.testing.assert_array_equal(s.window(10, 25.0), speech.window(s.features(), 10, 25.0))
    pcm = (np.sin(np.arange(4410) / 7) * 8000).astype("<i2").tobytes()
    whole = np.concatenate(list(pcm_chunks(io.BytesIO(pcm), 44100)))
    class Pipe(io.BytesIO):  # a pipe may hand over any number of bytes, odd ones included
        def read(self, n=-1):
            return super().read(min(n, 333))

    odd = np.concatenate(list(pcm_chunks(Pipe(pcm + b"\x01"), 44100)))  # odd reads, and a lone byte at the end
    assert len(whole) == 4410 and np.array_equal(whole, odd)
