"""Held-out quality of a trained model: SSIM/PSNR vs the real target, dlib face detection rate, a picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from amnet.core.errors import InputError, RuntimeMissing
from amnet.core.fileio import load_npz


def evaluate(model, resolution: int = 128, grid: Path | None = None, train: Path | None = None) -> dict:
    """Held-out metrics; with the training set, also the retrieval ceiling (see `retrieval_ceiling`)."""
    from amnet.core.metrics import psnr, ssim, ssim_per_image
    from amnet.realdata import heldout_identity, load_inputs
    from benchmarks.parity import face_checks
    from runtimes.pytorch_runner import reference_outputs

    frames = _training_frames(train) if train is not None else None  # checked before the minutes of work
    data = load_inputs("heldout", resolution)
    out = reference_outputs(model, data, gc_form="grouped")  # the loop's function (tested), one conv per GC
    face, target, source = out["face"], data["target"], data["source"]
    if not np.isfinite(face).all():
        raise InputError(f"the checkpoint produced {int((~np.isfinite(face)).sum())} non-finite pixels: its weights "
                         "are broken, there is nothing to score")
    found = face_checks(target, face)  # detection on the real targets and on the generated faces
    if found.get("reference_detected") is None:
        raise RuntimeMissing(f"face detection unavailable: {found['unavailable']}")
    identity, per_image = heldout_identity(), ssim_per_image(target, face)
    result = {"resolution": resolution, "samples": len(face),
              "ssim_generated_vs_target": float(per_image.mean()), "psnr_generated_vs_target": psnr(target, face),
              "ssim_source_vs_target": ssim(target, source),
              "ssim_per_identity": {int(i): float(per_image[identity == i].mean()) for i in np.unique(identity)},
              "dlib_detection_rate_generated": found["variant_detected"] / len(face),
              "dlib_detection_rate_real_targets": found["reference_detected"] / len(face)}
    if train is not None:
        result["ssim_retrieval_ceiling"] = retrieval_ceiling(target, identity, frames, resolution)
    if grid is not None:
        save_grid(source, target, face, grid)
    return result


def _training_frames(train: Path) -> tuple[np.ndarray, np.ndarray]:
    """(faces, identity) of a training npz, or one InputError saying what it lacks."""
    t = load_npz(train)
    faces, ids = t.get("face"), t.get("identity")
    if faces is None or ids is None or faces.ndim != 4 or ids.ndim != 1 or len(faces) != len(ids) or not len(ids):
        raise InputError(f"{Path(train).name} is not a training set from `amnet-deploy dataset` (it needs 'face' "
                         "N×H×W×3 and 'identity' N)")
    return faces, ids


def retrieval_ceiling(target: np.ndarray, identity: np.ndarray, frames: tuple[np.ndarray, np.ndarray],
                      resolution: int) -> dict:
    """SSIM of each held-out target vs its best-matching training frame of the same person, averaged.

    What a model that only recalls training frames could score at best: a bar at or above it asks the
    model to render poses and expressions it never saw, from the signals alone.
    """
    from amnet.realdata import to_float
    from amnet.core.metrics import ssim_per_image

    faces, ids = frames
    best = np.empty(len(target))
    for person in np.unique(identity):
        frames = to_float(faces[ids == person], resolution)
        for k in np.flatnonzero(identity == person):
            best[k] = ssim_per_image(target[k][None], frames).max()
    return {"mean": float(best.mean()),
            "per_identity": {int(i): float(best[identity == i].mean()) for i in np.unique(identity)}}


def save_grid(source, target, generated, path: Path, columns: int = 8) -> None:
    """Rows: source | real target | generated, for evenly spaced held-out samples."""
    from benchmarks.plots import pyplot, save

    plt = pyplot()
    idx = np.linspace(0, len(source) - 1, columns).astype(int)
    fig, axes = plt.subplots(3, columns, figsize=(1.6 * columns, 5.2))
    for row, (name, imgs) in enumerate((("source", source), ("real target", target), ("generated", generated))):
        for col, i in enumerate(idx):
            ax = axes[row, col]
            ax.imshow(((imgs[i].transpose(1, 2, 0) + 1) / 2).clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    save(fig, path, dpi=90)
