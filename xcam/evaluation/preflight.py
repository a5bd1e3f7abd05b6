"""Checks shared by ``xcam analyze`` and ``xcam evaluate``: options checked before any work,
and ground-truth boxes checked against the size of their image once it is decoded.

* :func:`check_output_dir`, :func:`check_output_file`: an output path can be created (no file in
  the way, a writable folder above it), so a bad ``--output-dir``/``--coco`` fails before the run.
* :func:`parse_model_weights`: ``--model-weights`` as the ``weighted`` ensembler accepts them.
* :func:`fit_box`, :func:`check_result_truth`: a ground-truth box outside its image by more than
  :data:`BOX_TOLERANCE` pixels is a data error (reported, not scored); one that overhangs by less
  (rounding) is clipped to the image.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from xcam.core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.results import ImageResult
    from xcam.core.metrics import Box

BOX_TOLERANCE = 2.0  # pixels a ground-truth box may overhang its image (rounding) before it is rejected


def _creatable(path: Path, option: str) -> None:
    """Raise :class:`UsageError` unless the folders above ``path`` exist or can be created."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: cannot create it, {parent} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {path}: cannot create it, {parent} is not writable")
            return


def check_output_dir(path: str | Path, option: str) -> None:
    """``path`` is a folder or can be made one (checked before any work; nothing is created)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{option} {path}: a file is in the way (a folder is needed)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: folder is not writable")
        return
    _creatable(path, option)


def check_output_file(path: str | Path, option: str) -> None:
    """``path`` can be written as a file (checked before any work; nothing is created)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder (a file name is needed)")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: file is not writable")
        return
    _creatable(path, option)


def parse_model_weights(text: str | None, n_models: int) -> list[float] | None:
    """``"0.6,0.4"`` → one finite non-negative weight per model, not all 0 (``None`` when not given)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--model-weights {text!r}: expected comma-separated numbers") from None
    if len(values) != n_models:
        raise UsageError(f"--model-weights has {len(values)} values for {n_models} models")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise UsageError(f"--model-weights {text!r}: weights must be non-negative with a positive sum")
    return values


def fit_box(box: "Box", width: int, height: int, tolerance: float = BOX_TOLERANCE) -> "Box | None":
    """``box`` (x, y, w, h) clipped to the ``width``×``height`` image when it lies in it within
    ``tolerance`` pixels; ``None`` when it does not (or is empty)."""
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0 or x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def box_problem(csv: str | Path, image: str, label: str, box: "Box", width: int, height: int) -> str:
    """The one-line report of a ground-truth box that does not lie in its image."""
    x, y, w, h = (float(v) for v in box)
    return (f"{csv}: ground-truth box {label} (x={x:g}, y={y:g}, w={w:g}, h={h:g}) of {image} lies outside "
            f"the {int(width)}x{int(height)} image; not scored")


def check_result_truth(result: "ImageResult", csv: str | Path) -> list[str]:
    """Clip ``result``'s ground-truth boxes to its image, drop those outside it and recompute the
    metrics of its findings and consolidations without them; the problems, one line each."""
    from xcam.chain.localize import box_metrics, ground_truth_for

    kept: list[tuple[str, "Box"]] = []
    problems: list[str] = []
    for label, box in result.ground_truth:
        fitted = fit_box(box, result.width, result.height)
        if fitted is None:
            problems.append(box_problem(csv, Path(result.path).name, label, box, result.width, result.height))
        else:
            kept.append((label, fitted))
    if kept == [(label, tuple(float(v) for v in box)) for label, box in result.ground_truth]:
        return problems
    result.ground_truth = kept
    items: Sequence = [f for r in result.results for f in r.findings] + list(result.consolidated)
    for item in items:
        item.ground_truth = ground_truth_for(item.pathology, kept)
        item.metrics = box_metrics(item.boxes, item.peak, item.ground_truth, result.width, result.height)
    return problems
