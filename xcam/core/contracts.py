"""What a plugin's results must look like: one set of checks for the chain (which turns a broken
contract into an error naming the plugin, :mod:`xcam.chain.guard`) and for plugin authors'
tests (:mod:`xcam.testing`). Each function returns what is wrong, in a few words, or ``None``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CAM_TOLERANCE = 1e-3
"""How far outside [0, 1] a CAM value may stray by rounding."""


def cam_problem(maps: Any, count: int, tolerance: float = CAM_TOLERANCE) -> str | None:
    """CAMs must be ``[count, h, w]``, finite, in [0, 1]."""
    try:
        a = np.asarray(maps, dtype=np.float64)
    except (TypeError, ValueError):
        return f"returned {type(maps).__name__}, not an array"
    if a.ndim != 3 or a.shape[0] != count or a.shape[1] < 1 or a.shape[2] < 1:
        return f"maps of shape {a.shape} for {count} image(s) (expected [{count}, h, w])"
    if not np.isfinite(a).all():
        return "NaN or infinite values in the maps"
    if a.size and (a.min() < -tolerance or a.max() > 1 + tolerance):
        return f"values outside [0, 1] (min {a.min():.3g}, max {a.max():.3g})"
    return None


def mask_problem(mask: Any, shape: tuple[int, ...]) -> str | None:
    """A mask must have the CAM's shape."""
    found = np.shape(mask)
    return None if tuple(found) == tuple(shape) else f"mask of shape {tuple(found)} for a CAM of shape {tuple(shape)}"


def box_problem(box: Any, shape: tuple[int, int]) -> str | None:
    """A box (``x, y, width, height, score`` attributes) must be finite and inside the
    ``(rows, columns)`` grid it was computed in."""
    try:
        values = tuple(float(v) for v in (box.x, box.y, box.width, box.height, box.score))
    except (AttributeError, TypeError, ValueError):
        return f"returned {type(box).__name__}, not a box"
    if not all(math.isfinite(v) for v in values):
        return f"non-finite box {values}"
    x, y, w, h, _ = values
    rows, cols = shape
    if x < -1e-6 or y < -1e-6 or w < 0 or h < 0 or x + w > cols + 1e-6 or y + h > rows + 1e-6:
        return f"box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) outside the {cols}x{rows} mask"
    return None


def probabilities_problem(probs: Any, count: int, classes: int) -> str | None:
    """A classifier's output must be ``[count, classes]`` finite values."""
    a = np.asarray(probs)
    if a.shape != (count, classes):
        return f"output of shape {a.shape} for {count} images and {classes} labels"
    if not np.isfinite(a).all():
        return "NaN or infinite output"
    return None
