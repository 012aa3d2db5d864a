"""Fidelity metrics on numpy arrays (no torch): images are N×3×H×W in [-1, 1]."""
from __future__ import annotations

import numpy as np


def psnr(ref: np.ndarray, test: np.ndarray, data_range: float = 2.0) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range ** 2 / mse)


def ssim_per_image(ref: np.ndarray, test: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """SSIM (Wang et al. 2004: Gaussian window σ = 1.5, K1 0.01, K2 0.03) of each image, mean over channels."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ref, test = np.broadcast_arrays(ref, test)
    x = ref.astype(np.float64).reshape(-1, *ref.shape[-2:])
    y = test.astype(np.float64).reshape(-1, *test.shape[-2:])

    def blur(a):
        return gaussian_filter(a, sigma=(0, 1.5, 1.5), truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    per_plane = s[:, 5:-5, 5:-5].mean(axis=(1, 2))  # skip the border, where the window is truncated
    return per_plane.reshape(len(ref), -1).mean(axis=1) if ref.ndim == 4 else per_plane


def ssim(ref: np.ndarray, test: np.ndarray, data_range: float = 2.0) -> float:
    """Mean SSIM over images and channels."""
    return float(ssim_per_image(ref, test, data_range).mean())


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.ravel().astype(np.float64), test.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def compare(ref: np.ndarray, test: np.ndarray, image: bool) -> dict:
    d = np.abs(ref.astype(np.float64) - test.astype(np.float64))
    out = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "cosine": cosine(ref, test)}
    if image:
        out["psnr"] = psnr(ref, test)
        out["ssim"] = ssim(ref, test)
    return out
