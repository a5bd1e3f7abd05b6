"""OpenCV rendering of CAMs, masks and boxes (BGR ``uint8`` images, as OpenCV writes them).

Every function takes a float CAM already in the original image grid (``H × W``, values in
[0, 1]); nothing here resizes. Output names used by the commands: ``{model}_{pathology}_P0.png``
overlay (:func:`overlay`), ``_P1`` heatmap (:func:`heatmap_bgr`), ``_P2`` red channel
(:func:`red_channel`), ``_P3`` binary mask (:func:`mask_png`), ``_PBBox.png`` (:func:`draw_boxes`).
OpenCV is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from xcam.core.errors import ImageLoadError, UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

Color = tuple[int, int, int]
GREEN: Color = (0, 255, 0)  # BGR
RED: Color = (0, 0, 255)
MAGENTA: Color = (255, 0, 255)

# The one box colour convention of every rendered image (each also carries a legend):
TRUTH: Color = GREEN
"""Ground-truth boxes."""
PREDICTION: Color = MAGENTA
"""xcam's predicted box (a model's, or the consolidated one): magenta, a colour the jet heatmap never shows."""
PALETTE: tuple[Color, ...] = (
    (255, 128, 0), (0, 200, 255), (255, 255, 0), (128, 0, 255), (0, 128, 255), (200, 200, 200), (0, 0, 255),
)
"""Colours for per-model boxes beside a consolidated one (BGR); never the truth or prediction colour."""


def cam_to_uint8(cam: Any) -> "np.ndarray":
    """``uint8(255 · clip(cam, 0, 1))`` (truncating, as ``np.uint8(255 * cam)``; NaN → 0)."""
    import numpy as np

    a = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=0.0)
    if a.ndim != 2:
        raise UsageError(f"a CAM must be 2-D, got shape {a.shape}")
    return (255.0 * np.clip(a, 0.0, 1.0)).astype(np.uint8)


def heatmap_bgr(cam: Any) -> "np.ndarray":
    """``cv2.applyColorMap(cam_to_uint8(cam), COLORMAP_JET)``: ``H × W × 3`` BGR (the ``_P1`` image)."""
    import cv2

    return cv2.applyColorMap(cam_to_uint8(cam), cv2.COLORMAP_JET)


def red_channel(heatmap: Any) -> "np.ndarray":
    """The red channel of a BGR heatmap (index 2): the ``_P2`` image."""
    import numpy as np

    h = np.asarray(heatmap)
    if h.ndim != 3 or h.shape[2] < 3:
        raise UsageError(f"a BGR heatmap must be H x W x 3, got shape {h.shape}")
    return np.ascontiguousarray(h[:, :, 2])


def mask_png(mask: Any) -> "np.ndarray":
    """A boolean mask as ``uint8`` 0/255 (the ``_P3`` image)."""
    import numpy as np

    return np.where(np.asarray(mask).astype(bool), 255, 0).astype(np.uint8)


def to_bgr(image: Any) -> "np.ndarray":
    """Any grey/BGR/BGRA image as ``uint8`` BGR: floats are taken in [0, 1], ``uint16`` in [0, 65535]."""
    import cv2
    import numpy as np

    a = np.asarray(image)
    if a.dtype == np.bool_:
        a = mask_png(a)
    elif np.issubdtype(a.dtype, np.floating):
        a = (255.0 * np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) + 0.5).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = (a // 257).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    if a.ndim == 3 and a.shape[2] == 1:
        return cv2.cvtColor(a[:, :, 0], cv2.COLOR_GRAY2BGR)
    if a.ndim == 3 and a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2BGR)
    if a.ndim == 3 and a.shape[2] == 3:
        return a.copy()
    raise UsageError(f"cannot render an image of shape {a.shape}")


def overlay(image: Any, cam: Any, alpha: float = 0.4) -> "np.ndarray":
    """``(1 − α) · image + α · heatmap_bgr(cam)`` as BGR ``uint8`` (the ``_P0`` image)."""
    import cv2

    base = to_bgr(image)
    heat = heatmap_bgr(cam)
    if base.shape[:2] != heat.shape[:2]:
        raise UsageError(
            f"CAM grid {heat.shape[1]}x{heat.shape[0]} differs from the image {base.shape[1]}x{base.shape[0]}"
        )
    a = min(max(float(alpha), 0.0), 1.0)
    return cv2.addWeighted(base, 1.0 - a, heat, a, 0.0)


def draw_boxes(image: Any, boxes: Iterable[Sequence[Any]], thickness: int | None = None) -> "np.ndarray":
    """Draw ``(box, colour)`` or ``(box, colour, label)`` items on a BGR copy of ``image``.

    ``box`` is ``(x, y, w, h)`` or a :class:`ScoredBox`; ``colour`` is BGR; a label is written
    above the box. Line width and font scale grow with the image (≈ 1/300 of its longer side).
    """
    import cv2

    from xcam.core.metrics import as_xywh

    out = to_bgr(image)
    side = max(out.shape[:2])
    width = thickness or max(1, round(side / 300))
    font = max(0.4, side / 1000)
    weight = max(1, width // 2)
    placed: list[tuple[int, int, int, int]] = []  # label rectangles already drawn
    for item in boxes:
        box, color = item[0], tuple(int(c) for c in item[1])
        label = item[2] if len(item) > 2 else None
        if box is None:
            continue
        x, y, w, h = as_xywh(box)
        p1 = (int(round(x)), int(round(y)))
        p2 = (int(round(x + w)) - 1, int(round(y + h)) - 1)
        cv2.rectangle(out, p1, p2, color, width)
        if label:
            (tw, th), base = cv2.getTextSize(str(label), cv2.FONT_HERSHEY_SIMPLEX, font, weight)
            tx, ty = p1[0], max(p1[1] - 4, th + 2)
            while any(tx < r[2] and r[0] < tx + tw and ty - th < r[3] and r[1] < ty + base for r in placed):
                ty += th + base + 2  # stack labels that would overlap
            placed.append((tx, ty - th, tx + tw, ty + base))
            cv2.putText(out, str(label), (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font, color, weight, cv2.LINE_AA)
    return out


def add_legend(image: Any, entries: Sequence[tuple[Color, str]]) -> "np.ndarray":
    """``image`` (BGR copy) with a key in its lower-left corner: a line in each colour and its meaning."""
    import cv2

    out = to_bgr(image)
    entries = list(dict.fromkeys((tuple(int(c) for c in color), str(text)) for color, text in entries))
    if not entries:
        return out
    side = max(out.shape[:2])
    font = max(0.3, side / 1600)
    weight = max(1, round(side / 800))
    sizes = [cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, weight) for _, text in entries]
    line_h = max(h + b for (_, h), b in sizes) + 6
    swatch = max(12, line_h)
    width = swatch + 10 + max(w for (w, _), _ in sizes) + 8
    height = line_h * len(entries) + 6
    x0, y0 = 4, max(0, out.shape[0] - height - 4)
    x1, y1 = min(out.shape[1] - 1, x0 + width), min(out.shape[0] - 1, y0 + height)
    region = out[y0:y1, x0:x1]
    region[:] = (region * 0.35).astype(region.dtype)  # darkened backdrop keeps the key readable
    for i, ((color, text), ((_, th), _)) in enumerate(zip(entries, sizes)):
        cy = y0 + 3 + i * line_h + line_h // 2
        cv2.line(out, (x0 + 4, cy), (x0 + 4 + swatch, cy), color, max(2, weight + 1))
        cv2.putText(out, text, (x0 + swatch + 10, cy + th // 2), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    weight, cv2.LINE_AA)
    return out


def draw_annotated(image: Any, boxes: Iterable[Sequence[Any]], legend: Sequence[tuple[Color, str]]) -> "np.ndarray":
    """:func:`draw_boxes` then :func:`add_legend`: what every rendered box image uses."""
    return add_legend(draw_boxes(image, boxes), legend)


def write_png(path: str | Path, array: Any) -> Path:
    """Write ``array`` (``uint8``/``uint16`` grey or BGR; bool → 0/255) as PNG, creating parent folders."""
    import cv2
    import numpy as np

    p = Path(path)
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = mask_png(a)
    p.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise XcamError(f"{p}: could not encode a PNG from an array of shape {a.shape} and type {a.dtype}")
    p.write_bytes(buf.tobytes())  # also handles non-ASCII paths, unlike cv2.imwrite
    return p


def read_png(path: str | Path, color: bool = False) -> "np.ndarray":
    """Read an image written by xcam: grey ``H × W`` (``color=False``) or BGR ``H × W × 3``, ``uint8``.

    Raises :class:`ImageLoadError` naming the file when it is missing or not an image.
    """
    import cv2
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(p, "file not found" if not p.exists() else "not a file")
    data = np.frombuffer(p.read_bytes(), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ImageLoadError(p, "not a readable image")
    return image


def read_mask(path: str | Path) -> "np.ndarray":
    """Read a binary mask PNG (``_P3``, ``_consolidated``) as a boolean ``H × W`` array.

    A mask has at most two grey levels (0/255, 0/1, …; a colour file must have equal channels);
    the higher level is the foreground, a single level is all-foreground when it is non-zero.
    Raises :class:`ImageLoadError` naming the file when it is missing, unreadable or not a mask.
    """
    import cv2
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(p, "file not found" if not p.exists() else "not a file")
    data = np.frombuffer(p.read_bytes(), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageLoadError(p, "not a readable image")
    if image.ndim == 3:
        channels = image[:, :, :3]
        if image.shape[2] >= 3 and not (
            np.array_equal(channels[:, :, 0], channels[:, :, 1]) and np.array_equal(channels[:, :, 0], channels[:, :, 2])
        ):
            raise ImageLoadError(p, "not a binary mask (a colour image)")
        image = channels[:, :, 0]
    levels = np.unique(image)
    if levels.size > 2:
        raise ImageLoadError(p, f"not a binary mask ({levels.size} grey levels, expected 2)")
    if levels.size == 1:
        return np.full(image.shape, bool(levels[0] > 0))
    return image == levels[1]
