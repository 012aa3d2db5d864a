"""Drive-signal extraction on real faces (crops from calibration_data) and real-shaped audio."""
from pathlib import Path

import numpy as np
import pytest

from amnet.core.errors import InputError
from amnet.signals import SAMPLE_RATE, audio_features, audio_window



def speech_like(seconds=2.0, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))  # syllable-rate modulation
    return (env * (np.sin(2 * np.pi * 140 * t) + 0.3 * rng.standard_normal(len(t)))).astype(np.float32), sr


def test_audio_features_shape_and_delta_conventions():
    wav, sr = speech_like()
    official, time_ = audio_features(wav, sr, "official"), audio_features(wav, sr, "time")
    frames = int(np.ceil(2.0 * SAMPLE_RATE / 512))
    assert official.shape == time_.shape == (60, frames)
    np.testing.assert_array_equal(official[:20], time_[:20])  # same MFCC
    assert not np.allclose(official[20:40], time_[20:40])  # deltas along different axes
    # 'time' deltas are the ±2-frame regression along time.
    c = time_[:20]
    manual = sum(n * (np.roll(c, -n, 1) - np.roll(c, n, 1)) for n in (1, 2)) / 10
    np.testing.assert_allclose(time_[20:40, 2:-2], manual[:, 2:-2], rtol=1e-4, atol=1e-3)
    with pytest.raises(InputError, match="delta"):
        audio_features(wav, sr, "sideways")


def test_audio_window_is_centred_and_stops_at_the_end():
    feats = np.arange(60 * 200, dtype=np.float32).reshape(60, 200)
    w = audio_window(feats, frame=50, fps=25.0)
    c = int(50 / 25 * SAMPLE_RATE / 512)
    assert w.shape == (64, 60) and w[32, 0] == feats[0, c]
    assert audio_window(feats, frame=1000, fps=25.0) is None


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    import cv2
    import soundfile as sf

    d = tmp_path_factory.mktemp("video")
    with np.load(Path(__file__).resolve().parent.parent / "calibration_data" / "heldout.npz") as z:
        faces = z["images"][z["target_idx"][:6]]
    frames = [np.pad(f, ((40, 40), (80, 80), (0, 0)), mode="edge") for f in faces]
    frames.insert(3, np.full_like(frames[0], 128))  # a frame with no face
    path = d / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, frames[0].shape[1::-1])
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    wav, sr = speech_like(1.0)  # 1.0 s of audio for 1.4 s of video: the last frame (1.2 s) has none
    sf.write(d / "speech.wav", wav, sr)
    return path, d / "speech.wav"


def test_extract_real_faces_reports_skips(face_video):
    from amnet.signals import extract

    video, wav = face_video
    arrays, report = extract(video, wav, progress=False)
    assert report["no_face"] == [3] and report["no_audio"] == [6]
    assert arrays["face"].shape == (5, 256, 256, 3) and arrays["landmarks"].shape == (5, 136)
    assert arrays["audio"].shape == (5, 64, 60)
    assert ((arrays["landmarks"] > 0) & (arrays["landmarks"] < 1)).all()
    assert (np.abs(arrays["pose"][:, 2]) < 0.05).all()  # the clip's frames are eye-levelled crops: no roll
    assert ((arrays["eye"] > 0.05) & (arrays["eye"] < 0.6)).all()


@pytest.mark.parametrize("degrees", [10, -10])
def test_pose_follows_a_known_head_rotation(degrees):
    """Rotating the whole frame in the image plane changes roll by that angle and leaves yaw and pitch."""
    import cv2

    from amnet.signals import FaceAnalyzer

    analyzer = FaceAnalyzer()
    with np.load(Path(__file__).resolve().parent.parent / "calibration_data" / "heldout.npz") as z:
        faces = z["images"][z["target_idx"][[0, 16, 32]]]  # one face of each person
    for face in faces:
        frame = np.pad(face, ((60, 60), (60, 60), (0, 0)), mode="edge")
        h, w = frame.shape[:2]
        turned = cv2.warpAffine(frame, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                                borderMode=cv2.BORDER_REPLICATE)
        before, after = analyzer.analyze(frame).pose, analyzer.analyze(turned).pose
        # OpenCV turns counter-clockwise for positive angles (y down): roll moves the other way.
        assert after[2] - before[2] == pytest.approx(-np.radians(degrees), abs=0.02)
        assert np.abs(after[:2] - before[:2]).max() < 0.06


def test_unreadable_inputs_are_clear_errors(tmp_path, face_video):
    from amnet.signals import extract, read_video

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot open video|no frames"):
        read_video(bad)
    video, _ = face_video
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    with pytest.raises(InputError, match="cannot read audio"):
        extract(video, tmp_path / "bad.wav", progress=False)


def test_dithered_landmark_shift_sees_motion_not_rounding():
    """The parity gate's landmark metric: ~0 for an invisible change, ≈ the true shift for a moved face."""
    from amnet.realdata import load_inputs
    from benchmarks.parity import face_checks

    faces = load_inputs("heldout", 256, 4)["target"]
    rng = np.random.default_rng(0)
    tiny = (faces + rng.uniform(-2e-3, 2e-3, faces.shape)).astype(np.float32)  # ≈ ¼ grey level
    moved = np.roll(faces, 3, axis=-1)  # every face 3 px to the right
    same, shifted = face_checks(faces, tiny), face_checks(faces, moved)
    assert same["detected_where_reference_detected"] == 1.0
    assert same["landmark_shift_px"] < 0.6
    assert 2.0 < shifted["landmark_shift_px"] < 4.0
