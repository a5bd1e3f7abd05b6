"""The chain's result model: plain dataclasses, no I/O.

:class:`ImageResult` → :class:`ModelResult` (one per model) → :class:`Finding` (one per explained
pathology), plus :class:`Consolidation` (several models' CAMs of one pathology combined). CAMs and
masks are held in the image's :class:`~xcam.core.preprocess.WorkGrid` (bounded resolution); boxes,
peaks and ground truth are in original pixels. :func:`result_dict` is the JSON form that
``analysis.json``, ``xcam score`` rows and the UI share; :mod:`xcam.chain.outputs` writes and
reads it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.core.imageio import XrayImage
    from xcam.core.preprocess import WorkGrid
    from xcam.core.types import ScoredBox

Box = tuple[float, float, float, float]

STAGES: tuple[str, ...] = ("load", "model", "cam", "mask_box", "write")
"""Timed stages: decode + preprocess, classification, CAMs, masks/boxes/metrics/consolidation, files."""


@dataclass
class Timings:
    """Seconds per stage (:data:`STAGES`)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, other: "Timings | Mapping[str, float]", share: float = 1.0) -> None:
        values = other.seconds if isinstance(other, Timings) else other
        for k, v in values.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + float(v) * share

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Finding:
    """One pathology of one model: CAM and mask in the work grid, boxes in original pixels."""

    pathology: str
    class_index: int
    probability: float
    reason: str  # "target", "top-k", "threshold", "all" or "ground-truth"
    cam: "np.ndarray"  # float32, work grid, [0, 1]
    mask: "np.ndarray"  # bool, work grid
    boxes: list["ScoredBox"]  # original pixels, best score first
    peak: tuple[float, float] | None  # the CAM's maximum, original (x, y); None for a flat CAM
    ground_truth: list[Box] = field(default_factory=list)
    metrics: dict[str, float] | None = None  # against the best-matching ground-truth box

    @property
    def box(self) -> "ScoredBox | None":
        return self.boxes[0] if self.boxes else None


@dataclass
class ModelResult:
    """One model on one image."""

    model: str
    weights: str
    backend: str
    method: str  # CAM method, with "(in-graph)" when the backend computed it in its forward pass
    layers: tuple[str, ...]
    aug_smooth: bool
    mask_extractor: str
    strategy: str
    predictions: dict[str, float]  # calibrated, the model's valid labels
    findings: list[Finding]
    input_size: int

    @property
    def target_layer(self) -> str:
        return "+".join(self.layers)


@dataclass
class Consolidation:
    """Several models' CAMs for one pathology combined by an ensembler, in the work grid."""

    pathology: str
    models: list[str]
    probability: float | None
    ensembler: str
    cam: "np.ndarray"
    mask: "np.ndarray"
    boxes: list["ScoredBox"]
    peak: tuple[float, float] | None
    ground_truth: list[Box] = field(default_factory=list)
    metrics: dict[str, float] | None = None

    @property
    def box(self) -> "ScoredBox | None":
        return self.boxes[0] if self.boxes else None


@dataclass
class ImageResult:
    """Everything the chain computed for one image (``error`` set: nothing else is)."""

    path: str
    width: int = 0
    height: int = 0
    grid: "WorkGrid | None" = None
    results: list[ModelResult] = field(default_factory=list)
    consolidated: list[Consolidation] = field(default_factory=list)
    combined_predictions: dict[str, float] | None = None
    ensembler: str | None = None
    ground_truth: list[tuple[str, Box]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    image: "XrayImage | None" = None  # kept when files are to be rendered
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def stem(self) -> str:
        from pathlib import Path

        return Path(self.path).stem

    @property
    def findings(self) -> list[tuple[ModelResult, Finding]]:
        return [(r, f) for r in self.results for f in r.findings]

    def localized(self) -> dict[str, Finding | Consolidation]:
        """Per pathology key (:func:`~xcam.core.labels.label_key`): the consolidation when several
        models explained it, else the one model's finding (what an evaluation scores)."""
        from xcam.core.labels import label_key

        out: dict[str, Finding | Consolidation] = {}
        for _, finding in self.findings:
            out.setdefault(label_key(finding.pathology), finding)
        for c in self.consolidated:
            out[label_key(c.pathology)] = c
        return out


# -- JSON ------------------------------------------------------------------------------------
def _item_dict(item: Finding | Consolidation, files: list[str]) -> dict[str, Any]:
    from xcam.core.metrics import box_dict as box_entry

    return {
        "pathology": item.pathology, "probability": item.probability,
        "box": box_entry(item.box) if item.box else None, "boxes": [box_entry(b) for b in item.boxes],
        "peak": list(item.peak) if item.peak else None,
        "mask_fraction": float(item.mask.mean()) if item.mask.size else 0.0,
        "ground_truth": [list(g) for g in item.ground_truth], "metrics": item.metrics, "files": files,
    }


def result_dict(result: ImageResult, files: Mapping[str, list[str]] | None = None,
                settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary of an :class:`ImageResult` (no arrays). ``files`` maps a finding's file
    prefix (:func:`xcam.chain.outputs.finding_prefix`) to the names written for it."""
    from xcam import __version__
    from xcam.core.labels import safe_name

    files = files or {}
    if result.error is not None:
        return {"image": result.path, "status": "error", "error": result.error}
    return {
        "image": result.path,
        "status": "ok",
        "xcam_version": __version__,
        "image_size": {"width": result.width, "height": result.height},
        "work_grid": result.grid.as_dict() if result.grid is not None else None,
        "settings": dict(settings) if settings else None,
        "ground_truth": [{"label": label, "box": list(box)} for label, box in result.ground_truth],
        "models": [
            {
                "model": r.model, "weights": r.weights, "backend": r.backend, "method": r.method,
                "layers": list(r.layers), "aug_smooth": r.aug_smooth, "mask_extractor": r.mask_extractor,
                "strategy": r.strategy, "input_size": r.input_size, "predictions": r.predictions,
                "findings": [dict(_item_dict(f, list(files.get(f"{r.model}_{safe_name(f.pathology)}", []))),
                                  reason=f.reason) for f in r.findings],
            }
            for r in result.results
        ],
        "ensembler": result.ensembler,
        "combined_predictions": result.combined_predictions,
        "consolidated": [
            dict(_item_dict(c, list(files.get(f"{safe_name(c.pathology)}_consolidated", []))),
                 models=c.models, ensembler=c.ensembler)
            for c in result.consolidated
        ],
        "seconds": dict(result.timings.seconds),
    }
