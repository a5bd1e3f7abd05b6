"""Built-in mask extractors: float CAM in [0, 1] → boolean mask of the same shape.

Each ``extract(cam, **options)`` checks its options (``extract.check_options``, which the settings
also run before any model loads: a value out of range is one line, not empty masks), then cleans the CAM (NaN → 0) and returns an empty mask for a
constant or empty CAM (nothing stands out, so nothing is localized). NumPy, OpenCV and scikit-image
are imported inside the functions so that ``xcam plugins`` stays fast.

* ``threshold``  — min–max normalized CAM ``≥ t`` (``threshold=0.5``).
* ``otsu``       — CAM ``> t_otsu`` with ``skimage.filters.threshold_otsu``.
* ``percentile`` — the hottest ``p`` % of the pixels (``percent=10``): CAM ``≥`` its
  ``(100 − p)``-th percentile and above the CAM's minimum (so a mostly-flat CAM is not all selected).
* ``legacy-red`` — the earlier pipeline's rule "red channel of the ``cv2.COLORMAP_JET``-coloured
  ``uint8`` heatmap ``> 127``", computed from the float CAM through the jet look-up table
  (``u = uint8(255 · clip(cam, 0, 1))``, mask ``= LUT_red[u] > 127``), never from a PNG.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from xcam.core.hookspecs import hookimpl
from xcam.core.types import MaskExtractorRegistration

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _number_in(options: Mapping[str, Any], key: str, lo: float, hi: float, integer: bool = False) -> None:
    """``ValueError`` unless ``options[key]`` (when given) is a finite number (an integer when
    ``integer``) in ``[lo, hi]``."""
    if key not in options:
        return
    value = options[key]
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise ValueError(f"{key} must be {what} in [{lo:g}, {hi:g}], got {value!r}")


def check_threshold_options(options: Mapping[str, Any]) -> None:
    """``threshold`` in [0, 1]."""
    _number_in(options, "threshold", 0.0, 1.0)


def check_percentile_options(options: Mapping[str, Any]) -> None:
    """``percent`` in [0, 100]."""
    _number_in(options, "percent", 0.0, 100.0)


def check_legacy_red_options(options: Mapping[str, Any]) -> None:
    """``level`` an integer in [0, 255]."""
    _number_in(options, "level", 0, 255, integer=True)


def _checked(check: Callable[[Mapping[str, Any]], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach ``check`` as the extractor's ``check_options`` (see :mod:`xcam.chain.settings`)."""

    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.check_options = check  # type: ignore[attr-defined]
        return fn

    return attach


def _clean(cam: Any) -> "np.ndarray | None":
    """The CAM as float32 without NaN/inf, or ``None`` when it is empty or constant."""
    import numpy as np

    a = np.asarray(cam, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
    if a.size == 0 or float(a.max()) - float(a.min()) <= 1e-12:
        return None
    return a


def normalize_cam(cam: Any) -> "np.ndarray":
    """Min–max normalization ``(cam − min) / (max − min)`` as float32; a constant CAM → zeros."""
    import numpy as np

    a = _clean(cam)
    if a is None:
        return np.zeros(np.shape(cam), dtype=np.float32)
    lo = a.min()
    return ((a - lo) / (a.max() - lo)).astype(np.float32)


@_checked(check_threshold_options)
def threshold_mask(cam: Any, threshold: float = 0.5, **_: Any) -> "np.ndarray":
    """``normalize(cam) ≥ threshold``."""
    import numpy as np

    check_threshold_options({"threshold": threshold})
    a = _clean(cam)
    if a is None:
        return np.zeros(np.shape(cam), dtype=bool)
    lo, hi = float(a.min()), float(a.max())
    return a >= np.float32(lo + float(threshold) * (hi - lo))


def otsu_mask(cam: Any, **_: Any) -> "np.ndarray":
    """``cam > threshold_otsu(cam)`` (Otsu's between-class-variance threshold)."""
    import numpy as np
    from skimage.filters import threshold_otsu

    a = _clean(cam)
    if a is None:
        return np.zeros(np.shape(cam), dtype=bool)
    return a > threshold_otsu(a)


@_checked(check_percentile_options)
def percentile_mask(cam: Any, percent: float = 10.0, **_: Any) -> "np.ndarray":
    """The top ``percent`` % of the area: ``cam ≥ percentile(cam, 100 − percent)`` and ``cam > min``."""
    import numpy as np

    check_percentile_options({"percent": percent})
    a = _clean(cam)
    if a is None:
        return np.zeros(np.shape(cam), dtype=bool)
    p = min(max(float(percent), 0.0), 100.0)
    if p == 0.0:
        return np.zeros(a.shape, dtype=bool)
    cut = np.percentile(a, 100.0 - p)
    return (a >= cut) & (a > a.min())


@lru_cache(maxsize=1)
def jet_red_lut() -> "np.ndarray":
    """Red channel (0–255) of OpenCV's ``COLORMAP_JET`` for each ``uint8`` input value (computed once)."""
    import cv2
    import numpy as np

    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    lut = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[:, 0, 2].copy()  # BGR: index 2 is red
    lut.setflags(write=False)
    return lut


@_checked(check_legacy_red_options)
def legacy_red_mask(cam: Any, level: int = 127, **_: Any) -> "np.ndarray":
    """``jet_red_lut()[uint8(255 · clip(cam, 0, 1))] > level``: the ``_P2`` red channel ``> 127`` rule."""
    import numpy as np

    check_legacy_red_options({"level": level})
    a = _clean(cam)
    if a is None:
        return np.zeros(np.shape(cam), dtype=bool)
    u = (255.0 * np.clip(a, 0.0, 1.0)).astype(np.uint8)  # truncation, as np.uint8(255 * cam)
    return jet_red_lut()[u] > int(level)


@hookimpl
def xcam_mask_extractors() -> Iterable[MaskExtractorRegistration]:
    yield MaskExtractorRegistration(
        name="threshold", extract=threshold_mask, description="normalized CAM >= threshold (default 0.5)"
    )
    yield MaskExtractorRegistration(name="otsu", extract=otsu_mask, description="CAM > Otsu's threshold")
    yield MaskExtractorRegistration(
        name="percentile", extract=percentile_mask, description="hottest percent of the image (default 10%)"
    )
    yield MaskExtractorRegistration(
        name="legacy-red",
        extract=legacy_red_mask,
        description="red channel of the jet-coloured uint8 heatmap > 127 (earlier pipeline)",
    )
