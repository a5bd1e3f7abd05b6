"""Sample inputs for parity reports, calibration and benchmarks: real X-rays when a folder is
given or found, generated ones otherwise (no file is ever copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def default_image_dir() -> Path | None:
    """``$XCAM_TEST_DATA`` or the development checkout's ``../shared/data``, when present."""
    candidates = []
    if os.environ.get("XCAM_TEST_DATA"):
        candidates.append(Path(os.environ["XCAM_TEST_DATA"]))
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    for folder in candidates:
        if (folder / "nih" / "images").is_dir():
            return folder / "nih" / "images"
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    return None


def image_files(folder: str | Path | None, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (sorted, recursive), at most ``limit``."""
    if folder is None:
        return []
    from xcam.core.imageio import iter_image_files

    files = iter_image_files(folder)
    return files[:limit] if limit is not None else files


def load_batch(files: list[Path], size: int, preprocessing: str = "xrv") -> np.ndarray:
    """Decode and preprocess files into a ``[N, 1, size, size]`` float32 batch."""
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import preprocess

    arrays = [preprocess(load_image(f), size, preprocessing)[0] for f in files]
    return np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, 1, size, size), np.float32)


def synthetic_batch(n: int, size: int, preprocessing: str = "xrv", seed: int = 0) -> np.ndarray:
    """``n`` generated chest-like images (smooth blobs in [0, 1]) preprocessed like real ones."""
    import cv2

    from xcam.core.preprocess import PIXEL_SCALERS

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = 0.3 + 0.2 * rng.random((size, size))
        for _ in range(6):
            cx, cy, r = rng.random(), rng.random(), 0.05 + 0.25 * rng.random()
            img += rng.uniform(-0.3, 0.4) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2.0)
        out.append(PIXEL_SCALERS[preprocessing](np.clip(img, 0, 1))[None])
    return np.stack(out).astype(np.float32)


def sample_batch(n: int, size: int, preprocessing: str = "xrv", folder: str | Path | None = None,
                 offset: int = 0) -> tuple[np.ndarray, str]:
    """``n`` images from ``folder`` (or the default real-image folder) starting at ``offset``;
    generated ones when none are available. Returns the batch and a description of its source."""
    folder = Path(folder) if folder is not None else default_image_dir()
    files = image_files(folder)[offset : offset + n] if folder is not None else []
    if files:
        return load_batch(files, size, preprocessing), f"{len(files)} images from {folder}"
    return synthetic_batch(n, size, preprocessing, seed=offset), f"{n} generated images"
