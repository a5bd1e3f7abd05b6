"""Reading chest X-rays: PNG/JPEG (8/16-bit, grey/RGB/RGBA) and DICOM, with one-line errors.

Every failure raises :class:`ImageLoadError` naming the file and the problem. Images larger
than :data:`MAX_PIXELS` are refused before decoding (decompression-bomb guard). DICOM: the first
frame only, pydicom's modality LUT, optional VOI LUT/window (:class:`DicomReadOptions`), scaled by
the modality LUT's full output range as torchxrayvision's ``read_xray_dcm`` does (docs/dicom.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xcam.core.errors import ImageLoadError, UsageError


def env_limit(name: str, default: int) -> int:
    """A positive integer limit from the environment variable ``name`` (``default`` when unset);
    a one-line :class:`UsageError` naming the variable otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{name}={os.environ[name]!r}: expected a positive integer")
    return value


MAX_PIXELS = env_limit("XCAM_MAX_PIXELS", 100_000_000)  # 10k x 10k
MAX_FILE_BYTES = env_limit("XCAM_MAX_FILE_BYTES", 512 * 1024 * 1024)
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


# -- DICOM ------------------------------------------------------------------------------------
VOI_CHOICES = ("none", "auto")


@dataclass(frozen=True)
class DicomReadOptions:
    """How DICOM pixel values become the [0, 1] grey the models see (docs/dicom.md).

    Always: pydicom's modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence), then the
    full range the modality LUT can output mapped to [0, 1], MONOCHROME1 inverted. ``voi``:
    ``"none"`` (default: no VOI LUT, as torchxrayvision's ``read_xray_dcm``), ``"auto"`` (the
    file's VOI LUT Sequence, else its first window; neither: as ``"none"``) or ``"window"`` with
    ``window = (center, width)`` (a window of your own, applied as pydicom applies a file's).
    """

    voi: str = "none"
    window: tuple[float, float] | None = None

    @classmethod
    def parse(cls, text: str | None) -> "DicomReadOptions":
        """``none``, ``auto`` or ``CENTER,WIDTH`` (e.g. ``2048,4096``); ``ValueError`` otherwise."""
        value = (text or "none").strip().lower()
        if value in VOI_CHOICES:
            return cls(voi=value)
        try:
            center, width = (float(v) for v in value.split(","))
        except ValueError:
            raise ValueError(f"{text!r}: expected none, auto or CENTER,WIDTH (e.g. 2048,4096)") from None
        if not (math.isfinite(center) and math.isfinite(width)):
            raise ValueError(f"{text!r}: the window center and width must be finite numbers")
        if not width > 0:
            raise ValueError(f"{text!r}: the window width must be > 0")
        return cls(voi="window", window=(center, width))

    def describe(self) -> str:
        return f"window {self.window[0]:g},{self.window[1]:g}" if self.window else self.voi


_dicom_options = DicomReadOptions()


def set_dicom_options(options: DicomReadOptions) -> DicomReadOptions:
    """Make ``options`` what :func:`load_image` uses for DICOM files in this process (commands'
    ``--dicom-voi``); returns the previous options."""
    global _dicom_options
    previous, _dicom_options = _dicom_options, options
    return previous


def dicom_options() -> DicomReadOptions:
    """The DICOM reading options :func:`load_image` uses when it is given none."""
    return _dicom_options


def _first_frame(ds, path: Path) -> np.ndarray:
    """The pixel array of a single-frame image, or only the first frame of a multi-frame one."""
    from pydicom.pixels import pixel_array

    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageLoadError(path, f"cannot decode DICOM pixel data ({reason})") from None


def modality_range(ds) -> tuple[float, float]:
    """The values the modality LUT can output (what pydicom's windowing maps to): a Modality LUT
    Sequence's ``0 … 2**bits - 1``, else the stored range (signed or not) through Rescale Slope and
    Intercept."""
    lut = ds.get("ModalityLUTSequence")
    if lut:
        return 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 16) or 16)
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    else:
        lo, hi = 0.0, 2.0**bits - 1
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    lo, hi = lo * slope + intercept, hi * slope + intercept
    return (min(lo, hi), max(lo, hi))


def _apply_voi(values: np.ndarray, ds, options: DicomReadOptions) -> tuple[np.ndarray, tuple[float, float]]:
    """``options``' VOI transform of modality values and the range its output is in."""
    from pydicom.pixels import apply_voi_lut

    full = modality_range(ds)
    if options.voi == "window" and options.window is not None:
        ds = ds.copy()  # a window of our own, applied by pydicom exactly as a file's window is
        for keyword in ("VOILUTSequence", "VOILUTFunction"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.WindowCenter, ds.WindowWidth = options.window
        return apply_voi_lut(values, ds, index=0, prefer_lut=False), full
    if options.voi == "auto":
        if ds.get("VOILUTSequence"):
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            return apply_voi_lut(values, ds, index=0, prefer_lut=True), (0.0, float(2**bits - 1))
        if "WindowCenter" in ds and "WindowWidth" in ds:
            return apply_voi_lut(values, ds, index=0, prefer_lut=False), full
    return values, full


def _read_dicom(path: Path, data: bytes, options: DicomReadOptions) -> XrayImage:
    import io

    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise ImageLoadError(path, f"not a readable DICOM file ({type(exc).__name__})") from None
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows <= 0 or cols <= 0 or "PixelData" not in ds:
        raise ImageLoadError(path, "DICOM file has no image (Rows/Columns/Pixel Data missing or zero)")
    if rows * cols > MAX_PIXELS:
        raise ImageLoadError(path, f"image too large ({cols}x{rows} > {MAX_PIXELS} pixels)")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 16) or 16)
    array = _first_frame(ds, path)
    if photometric.startswith("MONOCHROME"):
        if array.ndim != 2:
            raise ImageLoadError(path, f"unexpected {photometric} pixel array shape {array.shape}")
        try:
            values, (lo, hi) = _apply_voi(apply_modality_lut(array, ds), ds, options)
        except Exception as exc:  # a malformed LUT or window in the file
            raise ImageLoadError(path, f"cannot apply the DICOM grey-scale transforms ({exc})") from None
        values = np.asarray(values, dtype=np.float64)
        pixels = ((values - lo) / (hi - lo)).clip(0.0, 1.0) if hi > lo else np.zeros_like(values)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT") and array.ndim == 3:
        pixels = array[..., :3].astype(np.float64).mean(axis=-1) / float(2**bits - 1)  # pydicom gives RGB
    else:
        raise ImageLoadError(path, f"unsupported DICOM Photometric Interpretation {photometric} "
                                   f"(pixel array shape {array.shape})")
    return XrayImage(str(path), pixels.astype(np.float32), bits, "dicom")


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is DICOM as :func:`load_image` decides it (suffix or the ``DICM`` preamble)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return _is_dicom(path, head)


def load_image(path: str | Path, dicom: DicomReadOptions | None = None) -> XrayImage:
    """Decode an X-ray file; raises :class:`ImageLoadError` (one line) on any problem. DICOM files
    are read with ``dicom`` (default: :func:`dicom_options`, the process's ``--dicom-voi``)."""
    path = Path(path)
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read ({exc.strerror})") from None
    if _is_dicom(path, data[:132]):
        return _read_dicom(path, data, dicom or _dicom_options)
    return _read_raster(path, data)


def iter_image_files(folder: str | Path) -> list[Path]:
    """Image files in a folder (recursively), sorted, by suffix."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
