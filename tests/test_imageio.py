"""Image I/O: every supported format, geometry back to original pixels, and one-line errors."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from xcam.core.errors import ImageLoadError
from xcam.core.imageio import load_image
from xcam.core.preprocess import preprocess


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_png_8_and_16_bit_rgb_rgba(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    cv2.imwrite(str(tmp_path / "g8.png"), (ramp * 255).round().astype(np.uint8))
    cv2.imwrite(str(tmp_path / "g16.png"), (ramp * 65535).round().astype(np.uint16))
    bgr = np.dstack([(ramp * 255).round().astype(np.uint8)] * 3)
    cv2.imwrite(str(tmp_path / "rgb.png"), bgr)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, np.full((48, 64), 128, np.uint8)]))
    cv2.imwrite(str(tmp_path / "rgb.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    for name, depth in [("g8.png", 8), ("g16.png", 16), ("rgb.png", 8), ("rgba.png", 8), ("rgb.jpg", 8)]:
        image = load_image(tmp_path / name)
        assert (image.width, image.height, image.bit_depth) == (64, 48, depth), name
        np.testing.assert_allclose(image.pixels, ramp, atol=0.02, err_msg=name)


def test_real_formats(shared_data):
    samples = shared_data / "xrv-samples"
    jpg = load_image(samples / "16747_3_1.jpg")
    assert (jpg.width, jpg.height) == (1036, 885)
    rgba = load_image(shared_data / "nih" / "images" / "00001369_000.png")
    assert rgba.pixels.ndim == 2 and rgba.width == 1024
    dicoms = sorted(samples.glob("1.2.276*.dcm"))
    mono2 = load_image(dicoms[0])
    mono1 = load_image(samples / "Fake_MONOHR1.dcm")
    assert mono2.source_format == "dicom" and mono2.width == 1024
    # the same image tagged MONOCHROME1 is inverted on load
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-5)


def test_non_square_is_padded_and_maps_back(tmp_path):
    pixels = np.zeros((300, 500), np.uint8)
    pixels[100:150, 400:450] = 255  # a bright square at x=400..450, y=100..150
    cv2.imwrite(str(tmp_path / "wide.png"), pixels)
    image = load_image(tmp_path / "wide.png")
    x, geometry = preprocess(image, 100)
    assert x.shape == (1, 100, 100) and (geometry.pad_x, geometry.pad_y) == (0, 100)
    ys, xs = np.nonzero(x[0] > 0)
    box = geometry.box_to_original(xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    np.testing.assert_allclose(box, (400, 100, 50, 50), atol=5)
    back = geometry.map_to_original(x[0])
    assert back.shape == (300, 500)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("missing.png", None, "file not found"),
        ("empty.png", b"", "empty file"),
        ("text.png", b"hello, I am not an image" * 10, "not a readable image"),
        ("bomb.png", _png_header_claiming(100_000, 100_000), "image too large"),
        ("zero.png", _png_header_claiming(0, 0), "zero-size image"),
    ],
)
def test_bad_files_raise_one_line(tmp_path, name, content, problem):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert problem in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_png(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(truncated)


def test_bad_dicom(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(ImageLoadError, match="DICOM"):
        load_image(path)


def test_cli_bad_input_is_one_line_without_traceback(tmp_path, random_weights):
    random_weights("densenet121")
    (tmp_path / "empty.png").write_bytes(b"")
    for bad in ["missing.png", "empty.png"]:
        proc = subprocess.run(
            [sys.executable, "-m", "xcam.cli", "classify", "--input", str(tmp_path / bad)],
            capture_output=True, text=True,
        )
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(tmp_path / bad) in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "xcam.cli", "--debug", "classify", "--input", str(tmp_path / "empty.png")],
                           capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # --debug shows where it failed
    assert debug.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'empty.png'}")


def test_equalized_preprocessing_ignores_brightness_contrast_and_gamma():
    """xrv-equalized: a monotone change of grey levels leaves the model input (nearly) unchanged."""
    from xcam.core.imageio import XrayImage
    from xcam.core.preprocess import preprocess

    rng = np.random.default_rng(0)
    base = np.clip(rng.normal(0.5, 0.15, (96, 80)), 0, 1).astype(np.float32)
    changed = (0.2 + 0.6 * base ** 1.8).astype(np.float32)
    a, _ = preprocess(XrayImage("base", base, 8, "png"), 64, "xrv-equalized")
    b, _ = preprocess(XrayImage("changed", changed, 8, "png"), 64, "xrv-equalized")
    plain_a, _ = preprocess(XrayImage("base", base, 8, "png"), 64, "xrv")
    plain_b, _ = preprocess(XrayImage("changed", changed, 8, "png"), 64, "xrv")
    assert a.min() >= -1024 and a.max() <= 1024
    # 256 bins quantize the ranks (gamma crowds the dark levels into few bins): ~5× smaller, not zero
    assert np.abs(a - b).mean() < 0.25 * np.abs(plain_a - plain_b).mean()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
