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


PIXEL_SCALERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "xrv": xrv_scale,  # [-1024, 1024], one channel (torchxrayvision models, JF baseline)
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
