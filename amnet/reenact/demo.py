"""Demo inputs from the shipped data: a known face and speech the model never heard, plus a strip of frames.

The face is a held-out source crop of one calibration_data/ person, with some
edge-padded background around it (as a photo would have); the speech is CMU
ARCTIC a0007 + a0009 (calibration_data/speech/, never used in training).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from amnet.core.errors import InputError

SPEECH_FILES = ("arctic_a0007.flac", "arctic_a0009.flac")


def write_inputs(folder: Path, person: int = 0, seconds: float = 5.0) -> tuple[Path, Path]:
    """(face.png, speech.wav) in ``folder``: ``seconds`` of speech at its own 16 kHz."""
    import cv2
    import soundfile as sf

    from amnet.core.fileio import load_npz
    from amnet.realdata import default_dir

    held = load_npz(default_dir() / "heldout.npz")
    rows = np.flatnonzero(held["identity"] == person)
    if not len(rows):
        raise InputError(f"calibration_data/ has no person {person}")
    crop = held["images"][held["source_idx"][rows[0]]]
    from amnet.core.fileio import atomic_write

    face = folder / f"face{person}.png"
    _, png = cv2.imencode(".png", cv2.cvtColor(np.pad(crop, ((40, 40), (80, 80), (0, 0)), mode="edge"),
                                                cv2.COLOR_RGB2BGR))
    atomic_write(face, lambda tmp: Path(tmp).write_bytes(png.tobytes()))
    parts = [sf.read(default_dir() / "speech" / name, dtype="float64") for name in SPEECH_FILES]
    rate = parts[0][1]
    wav = np.concatenate([w for w, _ in parts])[: int(seconds * rate)]
    speech = folder / "speech.wav"
    atomic_write(speech, lambda tmp: sf.write(tmp, wav, rate, subtype="PCM_16", format="WAV"))
    return face, speech


def strip(video: Path, out: Path, frames: int = 8, scale: int = 1) -> Path:
    """Every n-th frame of an MP4 side by side in one PNG (for a README)."""
    import cv2

    from amnet.core.fileio import atomic_write
    from amnet.reenact.media import probe

    images = probe(video)["frames"]
    pick = np.linspace(0, len(images) - 1, frames).round().astype(int)
    cols = frames if images[0].shape[1] <= images[0].shape[0] else max(1, frames // 2)  # side by side: 2 rows
    tiles = [images[i] for i in pick]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)  # a short last row is filled with black
    row = np.concatenate([np.concatenate(tiles[k:k + cols], axis=1) for k in range(0, len(tiles), cols)], axis=0)
    if scale != 1:
        row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    _, data = cv2.imencode(".png", cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data.tobytes()))
    return out


def main(argv=None) -> int:
    """python -m amnet.reenact.demo OUT_DIR [--person N] [--seconds S]  |  --strip VIDEO.mp4 OUT.png"""
    import argparse

    p = argparse.ArgumentParser(description="demo inputs from the shipped data, or a PNG strip of a video")
    p.add_argument("folder", nargs="?", default="work/demo", help="where face<N>.png and speech.wav go")
    p.add_argument("--person", type=int, default=0, help="which calibration_data/ person (0, 1, 2)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--strip", nargs=2, metavar=("VIDEO", "PNG"), help="write every n-th frame of VIDEO to PNG")
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args(argv)
    if args.strip:
        print(strip(Path(args.strip[0]), Path(args.strip[1]), args.frames))
        return 0
    face, speech = write_inputs(Path(args.folder), args.person, args.seconds)
    print(f"amnet-deploy reenact --source {face} --audio {speech} --output {Path(args.folder) / 'talk.mp4'}")
    return 0


if __name__ == "__main__":
    import sys

    try:
        raise SystemExit(main())
    except InputError as e:
        print(f"amnet.reenact.demo: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
