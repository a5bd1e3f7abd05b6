"""From a decoded X-ray to the model's input, and back.

Non-square images are **padded** (not cropped) to a square, centred, with the image's own
minimum value, then resized to the model's input size. Padding keeps every original pixel, so
any box or CAM maps back to the original image exactly; :class:`Geometry` holds that mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from xcam.core.imageio import XrayImage


@dataclass(frozen=True)
class Geometry:
    """Mapping between model pixels (``size``×``size``) and original pixels.

    original = model * scale - (pad_x, pad_y)
    """

    original_width: int
    original_height: int
    size: int
    pad_x: int
    pad_y: int

    @property
    def side(self) -> int:
        return max(self.original_width, self.original_height)

    @property
    def scale(self) -> float:
        return self.side / self.size

    def box_to_original(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """A box in model pixels → the same box in original pixels, clipped to the image."""
        s = self.scale
        x0, y0 = x * s - self.pad_x, y * s - self.pad_y
        x1, y1 = (x + w) * s - self.pad_x, (y + h) * s - self.pad_y
        x0, x1 = np.clip([x0, x1], 0, self.original_width)
        y0, y1 = np.clip([y0, y1], 0, self.original_height)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    def box_to_model(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        s = self.scale
        return (x + self.pad_x) / s, (y + self.pad_y) / s, w / s, h / s

    def map_to_original(self, array: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """A map in model space (any square resolution, e.g. a 7×7 or 224×224 CAM) → original grid."""
        import cv2

        side = self.side
        flag = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST
        square = cv2.resize(array.astype(np.float32), (side, side), interpolation=flag)
        return square[self.pad_y : self.pad_y + self.original_height, self.pad_x : self.pad_x + self.original_width]


@dataclass(frozen=True)
class WorkGrid:
    """The original image at a bounded resolution: where masks and boxes are computed.

    The padded square of :class:`Geometry` is taken at ``side × side`` pixels and the padding is
    cropped off (rows ``y0:y1``, columns ``x0:x1``), so the grid covers exactly the original image.
    A work pixel ``(col, row)`` spans original pixels ``[col·sx, (col+1)·sx) × [row·sy, (row+1)·sy)``.
    ``side`` is the model's input size by default (a CAM holds no finer detail than that), or the
    original's longer side for full-resolution work.
    """

    width: int  # original image
    height: int
    side: int
    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def of(cls, geometry: Geometry, side: int | None = None) -> "WorkGrid":
        """The grid of ``geometry`` at ``side`` (default: the geometry's own model size)."""
        side = int(side or geometry.size)
        f = side / geometry.side
        x0, y0 = int(round(geometry.pad_x * f)), int(round(geometry.pad_y * f))
        x1 = max(x0 + 1, min(side, int(round((geometry.pad_x + geometry.original_width) * f))))
        y1 = max(y0 + 1, min(side, int(round((geometry.pad_y + geometry.original_height) * f))))
        return cls(geometry.original_width, geometry.original_height, side, x0, y0, x1, y1)

    @classmethod
    def full(cls, geometry: Geometry) -> "WorkGrid":
        """The original pixel grid itself."""
        return cls.of(geometry, geometry.side)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of a work map."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def scale_x(self) -> float:
        return self.width / (self.x1 - self.x0)

    @property
    def scale_y(self) -> float:
        return self.height / (self.y1 - self.y0)

    def from_model(self, maps: np.ndarray) -> np.ndarray:
        """Maps in model space (square, any resolution; ``[h, w]`` or ``[N, h, w]``) → work maps
        (bilinear resize to ``side`` when needed, then the padding cropped off), float32."""
        import cv2

        a = np.asarray(maps, dtype=np.float32)
        single = a.ndim == 2
        stack = a[None] if single else a
        if stack.shape[-1] != self.side or stack.shape[-2] != self.side:
            stack = np.stack([cv2.resize(m, (self.side, self.side), interpolation=cv2.INTER_LINEAR) for m in stack]) \
                if len(stack) else np.zeros((0, self.side, self.side), np.float32)
        out = stack[:, self.y0 : self.y1, self.x0 : self.x1]
        return out[0] if single else out

    def resample(self, work_map: np.ndarray, other: "WorkGrid") -> np.ndarray:
        """A map of ``other`` (the same image at another resolution) in this grid."""
        import cv2

        if other.shape == self.shape:
            return np.asarray(work_map, dtype=np.float32)
        return cv2.resize(np.asarray(work_map, dtype=np.float32), (self.shape[1], self.shape[0]),
                          interpolation=cv2.INTER_LINEAR)

    def box_to_original(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """A box in work pixels → original pixels, clipped to the image."""
        sx, sy = self.scale_x, self.scale_y
        x0, y0 = min(max(x * sx, 0.0), self.width), min(max(y * sy, 0.0), self.height)
        x1, y1 = min(max((x + w) * sx, 0.0), self.width), min(max((y + h) * sy, 0.0), self.height)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    def point_to_original(self, row: int, col: int) -> tuple[float, float]:
        """The centre of work pixel ``(row, col)`` as original ``(x, y)``."""
        return ((col + 0.5) * self.scale_x, (row + 0.5) * self.scale_y)

    def to_original(self, work_map: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """A work map at the original resolution (for rendering), float32 or bool as given."""
        import cv2

        a = np.asarray(work_map)
        if a.shape == (self.height, self.width):
            return a
        if a.dtype == bool:
            return cv2.resize(a.astype(np.uint8), (self.width, self.height), interpolation=cv2.INTER_NEAREST) > 0
        flag = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_NEAREST
        return cv2.resize(a.astype(np.float32), (self.width, self.height), interpolation=flag)

    def as_dict(self) -> dict[str, int]:
        return {"width": self.shape[1], "height": self.shape[0], "side": self.side,
                "original_width": self.width, "original_height": self.height}


def pad_to_square(pixels: np.ndarray) -> tuple[np.ndarray, int, int]:
    h, w = pixels.shape
    side = max(h, w)
    if h == w:
        return pixels, 0, 0
    pad_y, pad_x = (side - h) // 2, (side - w) // 2
    out = np.full((side, side), pixels.min(), dtype=pixels.dtype)
    out[pad_y : pad_y + h, pad_x : pad_x + w] = pixels
    return out, pad_x, pad_y


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    import cv2

    interpolation = cv2.INTER_AREA if pixels.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interpolation)


def xrv_scale(unit: np.ndarray) -> np.ndarray:
    """torchxrayvision's scaling: ``(2*img/maxval - 1) * 1024`` for an image already in [0, 1]."""
    return ((2.0 * unit - 1.0) * 1024.0).astype(np.float32)


def equalize(unit: np.ndarray) -> np.ndarray:
    """Histogram equalization (scikit-image, 256 bins) of an image in [0, 1]: every grey level becomes
    its rank, so any monotone change of brightness, contrast or gamma gives (nearly) the same input."""
    from skimage.exposure import equalize_hist

    return equalize_hist(np.asarray(unit, dtype=np.float32), nbins=256).astype(np.float32)


PIXEL_SCALERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "xrv": xrv_scale,  # [-1024, 1024], one channel (torchxrayvision models, JF baseline)
    "xrv-equalized": lambda unit: xrv_scale(equalize(unit)),  # histogram-equalized, then xrv's range
    "unit": lambda unit: unit.astype(np.float32),  # [0, 1]
    "imagenet-grey": lambda unit: ((unit - 0.449) / 0.226).astype(np.float32),
}


def preprocess(image: XrayImage, size: int, kind: str = "xrv") -> tuple[np.ndarray, Geometry]:
    """Image → ``[1, size, size]`` float32 model input and its :class:`Geometry`."""
    if kind not in PIXEL_SCALERS:
        raise ValueError(f"unknown preprocessing {kind!r}; known: {sorted(PIXEL_SCALERS)}")
    square, pad_x, pad_y = pad_to_square(image.pixels)
    resized = resize_square(square, size)
    geometry = Geometry(image.width, image.height, size, pad_x, pad_y)
    return PIXEL_SCALERS[kind](resized)[None, :, :], geometry
