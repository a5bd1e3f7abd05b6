"""Reading chest X-rays: PNG/JPEG (8/16-bit, grey/RGB/RGBA) and DICOM, with one-line errors.

Every failure raises :class:`ImageLoadError` naming the file and the problem. Images larger
than :data:`MAX_PIXELS` are refused before decoding (decompression-bomb guard).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xcam.core.errors import ImageLoadError

MAX_PIXELS = int(os.environ.get("XCAM_MAX_PIXELS", 100_000_000))  # 10k x 10k
MAX_FILE_BYTES = int(os.environ.get("XCAM_MAX_FILE_BYTES", 512 * 1024 * 1024))
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES


@dataclass(frozen=True)
class XrayImage:
    """A decoded X-ray.

    ``pixels`` is a 2-D float32 array in [0, 1] (0 = black, MONOCHROME1 already inverted);
    ``width``/``height`` are the original image's size, the grid all boxes are reported in.
    """

    path: str
    pixels: np.ndarray
    bit_depth: int
    source_format: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def stem(self) -> str:
        return Path(self.path).stem

    def to_uint8(self) -> np.ndarray:
        """8-bit greyscale for display and rendering."""
        return np.clip(self.pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read ({exc.strerror})") from None
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageLoadError(path, f"file too large ({size} bytes > {MAX_FILE_BYTES})")
    if not os.access(path, os.R_OK):
        raise ImageLoadError(path, "permission denied")


def _is_dicom(path: Path, head: bytes) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM"


def _header_size(path: Path, data: bytes) -> tuple[int, int]:
    """Image size from the header only (no pixel decoding): PNG's IHDR, else Pillow."""
    import io
    import struct

    from PIL import Image

    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, with a clear message
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        raise ImageLoadError(path, "not a readable image (unknown or corrupt format)") from None


def _normalise(array: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Any decoded raster → float32 grey in [0, 1] and its bit depth."""
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 4:  # RGBA / BGRA: drop alpha
            array = array[:, :, :3]
        if array.shape[2] == 3:
            weights = np.array([0.114, 0.587, 0.299], dtype=np.float64)  # OpenCV order: BGR
            array = (array.astype(np.float64) @ weights)
        elif array.shape[2] == 1:
            array = array[:, :, 0]
        else:
            raise ImageLoadError(path, f"unsupported channel count {channels}")
    if array.ndim != 2:
        raise ImageLoadError(path, f"unsupported image shape {array.shape}")
    if array.dtype in (np.uint8, np.uint16):  # integers are in range already: one scaling pass, in place
        depth = 8 if array.dtype == np.uint8 else 16
        out = array.astype(np.float32)
        out *= np.float32(1.0 / (255.0 if depth == 8 else 65535.0))
        return out, depth
    if array.dtype.kind == "f" and array.max() > 255:
        depth, maxval = 16, 65535.0
    elif array.dtype.kind == "f" and array.max() <= 1.0:
        depth, maxval = 32, 1.0
    else:
        depth, maxval = 8, 255.0
    return (array.astype(np.float32) / np.float32(maxval)).clip(0, 1), depth


def _read_raster(path: Path, data: bytes) -> XrayImage:
    import cv2

    width, height = _header_size(path, data)
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, f"zero-size image ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageLoadError(path, f"image too large ({width}x{height} > {MAX_PIXELS} pixels)")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # we report bad data in one line
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise ImageLoadError(path, "truncated or corrupt image data")
    pixels, depth = _normalise(array, path)
    return XrayImage(str(path), pixels, depth, path.suffix.lower().lstrip(".") or "raster")


def _read_dicom(path: Path) -> XrayImage:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise ImageLoadError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ImageLoadError(path, "DICOM file has no image (Rows/Columns missing or zero)")
    if rows * cols > MAX_PIXELS:
        raise ImageLoadError(path, f"image too large ({cols}x{rows} > {MAX_PIXELS} pixels)")
    try:
        array = ds.pixel_array
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageLoadError(path, f"cannot decode DICOM pixel data ({reason})") from None
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].mean(axis=-1)
    elif array.ndim == 3:  # multi-frame: first frame
        array = array[0]
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    array = array * slope + intercept
    lo, hi = float(array.min()), float(array.max())
    pixels = ((array - lo) / (hi - lo)) if hi > lo else np.zeros_like(array)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    return XrayImage(str(path), pixels.astype(np.float32), bits, "dicom")


def load_image(path: str | Path) -> XrayImage:
    """Decode an X-ray file; raises :class:`ImageLoadError` (one line) on any problem."""
    path = Path(path)
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read ({exc.strerror})") from None
    if _is_dicom(path, data[:132]):
        return _read_dicom(path)
    return _read_raster(path, data)


def iter_image_files(folder: str | Path) -> list[Path]:
    """Image files in a folder (recursively), sorted, by suffix."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
