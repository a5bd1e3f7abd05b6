"""Boxes that use no model, printed beside every result so a reader sees what the CAMs add.

* ``lung field`` — a box around both lungs, estimated from the image alone: the two largest dark
  regions inside the body (Otsu threshold on a smoothed, downsampled copy; regions touching the
  image border — air outside the body — are dropped; when only one lung stands out, its mirror image about the vertical midline is added).
  When that finds nothing lung-like, a fixed
  box (x 12–88 %, y 10–80 % of the image) stands in.
* ``centre`` — a box at the image centre with the mean area and aspect ratio of the class's
  ground-truth boxes (an oracle size prior, and still no position information).

Their pointing-game "point" is the box centre.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

FIXED_LUNG_FRACTIONS = (0.12, 0.10, 0.88, 0.80)  # x0, y0, x1, y1 as fractions of the image


def fixed_lung_box(width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = FIXED_LUNG_FRACTIONS
    return (x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height)


def lung_field_box(pixels: np.ndarray) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` of both lung fields in ``pixels`` (2-D float in [0, 1], 0 = black)."""
    import cv2
    from skimage.filters import threshold_otsu

    h, w = pixels.shape
    side = 256
    small = cv2.resize(pixels.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.0)
    core = small[side // 10 : -side // 10, side // 10 : -side // 10]
    if float(core.max() - core.min()) < 1e-6:
        return fixed_lung_box(w, h)
    dark = (small < threshold_otsu(core)).astype(np.uint8)
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    keep = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        touches = x == 0 or y == 0 or x + bw >= side or y + bh >= side
        if not touches and area >= 0.01 * side * side:
            keep.append(i)
    keep = sorted(keep, key=lambda i: -stats[i][4])[:2]
    if not keep:
        return fixed_lung_box(w, h)
    x0 = min(stats[i][0] for i in keep)
    y0 = min(stats[i][1] for i in keep)
    x1 = max(stats[i][0] + stats[i][2] for i in keep)
    y1 = max(stats[i][1] + stats[i][3] for i in keep)
    if (x1 - x0) * (y1 - y0) < 0.08 * side * side:  # one small dark patch is not a lung field
        return fixed_lung_box(w, h)
    if len(keep) == 1 or stats[keep[1]][4] < 0.25 * stats[keep[0]][4]:  # one lung found: mirror it
        x0, x1 = min(x0, side - x1), max(x1, side - x0)
    sx, sy = w / side, h / side
    return (x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)


def centre_box(width: int, height: int, mean_w: float, mean_h: float) -> tuple[float, float, float, float]:
    """A ``mean_w × mean_h`` box (clipped to the image) centred on the image."""
    bw, bh = min(mean_w, width), min(mean_h, height)
    return ((width - bw) / 2, (height - bh) / 2, bw, bh)


def mean_size(boxes: Sequence[tuple[float, float, float, float]], widths: Sequence[int], heights: Sequence[int]
              ) -> tuple[float, float]:
    """Mean box size as fractions of the image (so images of different sizes mix)."""
    fw = [b[2] / w for b, w in zip(boxes, widths)]
    fh = [b[3] / h for b, h in zip(boxes, heights)]
    return float(np.mean(fw)), float(np.mean(fh))


def box_centre_point(box: tuple[float, float, float, float]) -> tuple[float, float]:
    x, y, w, h = box
    return (x + w / 2, y + h / 2)
