"""Built-in bounding-box strategies: boolean mask (+ optional CAM for scores) → scored boxes.

Boxes are pixel-aligned: a component whose pixels span columns ``c0 … c1`` and rows ``r0 … r1``
gives ``ScoredBox(x=c0, y=r0, width=c1 − c0 + 1, height=r1 − r0 + 1)`` in the mask's grid.
Components are 8-connected (``connectivity=8``; pass 4 for edge-connected only).

Score of a box (all strategies): with a ``cam`` of the mask's shape, the ``mean`` (default) or
``max`` (``score="max"``) CAM value over the component's pixels; without one, the component's
area as a fraction of the image. An empty mask gives ``[]``.

Each strategy checks its options (``boxes.check_options``, which the settings also run before any
model loads): ``score`` ``mean``/``max``, ``connectivity`` 4/8, ``min_area ≥ 0``, ``max_boxes ≥ 1``.

* ``tight``      — one box around every mask pixel.
* ``largest``    — the largest connected component (ties: the first in raster order).
* ``components`` — every component with area ``≥ min_area`` (a fraction of the image when ``< 1``,
  else pixels; default 0.01), sorted by score (highest first), at most ``max_boxes``.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from xcam.core.hookspecs import hookimpl
from xcam.core.types import BboxStrategyRegistration, ScoredBox

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def check_box_options(options: Mapping[str, Any]) -> None:
    """``ValueError`` for a bad ``score`` (``mean``/``max``) or ``connectivity`` (4/8)."""
    if "score" in options and options["score"] not in ("mean", "max"):
        raise ValueError(f"score must be 'mean' or 'max', got {options['score']!r}")
    if "connectivity" in options and (isinstance(options["connectivity"], bool)
                                      or options["connectivity"] not in (4, 8)):
        raise ValueError(f"connectivity must be 4 or 8, got {options['connectivity']!r}")


def check_component_options(options: Mapping[str, Any]) -> None:
    """:func:`check_box_options`, and ``min_area`` a finite number ``≥ 0`` (a fraction of the image
    when ``< 1``, else pixels), ``max_boxes`` an integer ``≥ 1`` (``None``: no limit)."""
    check_box_options(options)
    if "min_area" in options:
        value = options["min_area"]
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and value >= 0):
            raise ValueError(f"min_area must be a number >= 0 (a fraction < 1 or pixels), got {value!r}")
    if options.get("max_boxes") is not None:
        value = options["max_boxes"]
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"max_boxes must be an integer >= 1, got {value!r}")


def _checked(check: Callable[[Mapping[str, Any]], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach ``check`` as the strategy's ``check_options`` (see :mod:`xcam.chain.settings`)."""

    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.check_options = check  # type: ignore[attr-defined]
        return fn

    return attach


def _as_mask(mask: Any) -> "np.ndarray":
    import numpy as np

    m = np.asarray(mask)
    if m.ndim != 2:
        from xcam.core.errors import UsageError

        raise UsageError(f"a mask must be 2-D, got shape {m.shape}")
    return m.astype(bool)


def _score(pixels: "np.ndarray", cam: Any, total: int, how: str) -> float:
    """``mean``/``max`` of ``cam`` over ``pixels`` (a boolean selector), else ``|pixels| / total``."""
    import numpy as np

    if cam is None:
        return float(np.count_nonzero(pixels)) / float(total)
    values = np.nan_to_num(np.asarray(cam)[pixels].astype(np.float64), nan=0.0)
    if values.size == 0:
        return 0.0
    return float(values.max() if how == "max" else values.mean())


def _check_cam(mask: "np.ndarray", cam: Any) -> None:
    import numpy as np

    if cam is not None and np.shape(cam) != mask.shape:
        from xcam.core.errors import UsageError

        raise UsageError(f"CAM shape {np.shape(cam)} differs from mask shape {mask.shape}")


def _components(mask: "np.ndarray", connectivity: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Labels image and stats rows ``[x, y, w, h, area]`` for every component (background dropped)."""
    import cv2
    import numpy as np

    if connectivity not in (4, 8):
        from xcam.core.errors import UsageError

        raise UsageError(f"connectivity must be 4 or 8, got {connectivity}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    return labels, stats[1:n]


def _box(stat: Any, score: float) -> ScoredBox:
    x, y, w, h = (float(v) for v in stat[:4])
    return ScoredBox(x=x, y=y, width=w, height=h, score=score)


@_checked(check_box_options)
def tight_box(mask: Any, cam: Any = None, score: str = "mean", **_: Any) -> list[ScoredBox]:
    """One box around all mask pixels."""
    import numpy as np

    check_box_options({"score": score})
    m = _as_mask(mask)
    _check_cam(m, cam)
    ys, xs = np.nonzero(m)
    if xs.size == 0:
        return []
    stat = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    return [_box(stat, _score(m, cam, m.size, score))]


@_checked(check_box_options)
def largest_box(mask: Any, cam: Any = None, score: str = "mean", connectivity: int = 8, **_: Any) -> list[ScoredBox]:
    """The box of the largest connected component."""
    import numpy as np

    check_box_options({"score": score, "connectivity": connectivity})
    m = _as_mask(mask)
    _check_cam(m, cam)
    if not m.any():
        return []
    labels, stats = _components(m, connectivity)
    i = int(np.argmax(stats[:, 4]))
    if len(stats) == 1:  # one component: the mask itself selects it (no second pass over the labels)
        return [_box(stats[0], _score(m, cam, m.size, score))]
    return [_box(stats[i], _score(labels == i + 1, cam, m.size, score))]


@_checked(check_component_options)
def component_boxes(
    mask: Any,
    cam: Any = None,
    score: str = "mean",
    min_area: float = 0.01,
    max_boxes: int | None = None,
    connectivity: int = 8,
    **_: Any,
) -> list[ScoredBox]:
    """A box per component with area ``≥ min_area``, best score first, at most ``max_boxes``."""
    check_component_options({"score": score, "min_area": min_area, "max_boxes": max_boxes,
                             "connectivity": connectivity})
    m = _as_mask(mask)
    _check_cam(m, cam)
    if not m.any():
        return []
    labels, stats = _components(m, connectivity)
    min_pixels = float(min_area) * m.size if float(min_area) < 1 else float(min_area)
    boxes = [
        _box(stat, _score(labels == i + 1, cam, m.size, score))
        for i, stat in enumerate(stats)
        if stat[4] >= min_pixels
    ]
    boxes.sort(key=lambda b: -b.score)  # stable: equal scores keep raster order
    return boxes if max_boxes is None else boxes[: int(max_boxes)]


@hookimpl
def xcam_bbox_strategies() -> Iterable[BboxStrategyRegistration]:
    yield BboxStrategyRegistration(name="tight", boxes=tight_box, description="one box around all mask pixels")
    yield BboxStrategyRegistration(
        name="largest", boxes=largest_box, description="box of the largest connected component"
    )
    yield BboxStrategyRegistration(
        name="components",
        boxes=component_boxes,
        description="a scored box per component of at least min_area (default 1% of the image)",
    )
