"""The UI's use of :mod:`xcam.core.pipeline`: the same chain as ``xcam cam`` / ``xcam analyze``.

Two passes per image, both ``Pipeline.analyze``: first with no class picked (probabilities only,
so the page can offer the pathologies), then for the chosen pathology (CAM, mask and boxes per
model, and the ensembler's consolidated box when two or more models predict it). Ground truth is applied afterwards by :func:`with_ground_truth` (metrics from
:func:`xcam.core.pipeline.box_metrics`), so typing a box never recomputes a CAM. No Streamlit here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from xcam.core.pipeline import AnalysisSettings, ImageAnalysis, Pipeline, analysis_dict, box_metrics, label_key

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.manager import XcamPluginManager
    from xcam.core.weights import WeightsStore

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Options:
    """The plugin choices of the page (``None``: the ``plugins.toml`` default)."""

    method: str | None = None
    mask: str | None = None
    strategy: str | None = None
    ensembler: str | None = None

    def settings(self, pathology: str | None) -> AnalysisSettings:
        """Pipeline settings: the one target class, or none at all (``top_k=0``: predictions only)."""
        common = dict(method=self.method, mask=self.mask, strategy=self.strategy, ensembler=self.ensembler,
                      ground_truth_classes=False)
        if pathology is None:
            return AnalysisSettings(top_k=0, **common)
        return AnalysisSettings(target_classes=(pathology,), **common)


@dataclass(frozen=True)
class ModelSpec:
    """One selected model: plugin name and weight variant (a variant name or a checkpoint path)."""

    name: str
    variant: str


def pipeline(pm: "XcamPluginManager", models: Sequence[ModelSpec], options: Options, pathology: str | None,
             *, store: "WeightsStore | None", device: str, random_init: bool) -> Pipeline:
    """A pipeline for these models; ``pathology=None`` gives probabilities only."""
    return Pipeline(pm, [m.name for m in models], options.settings(pathology),
                    weights={m.name: m.variant for m in models}, device=device, store=store, random_init=random_init)


def missing_class(analysis: ImageAnalysis, pathology: str) -> list[str]:
    """Models that do not predict ``pathology`` (they have no finding for it)."""
    key = label_key(pathology)
    return [r.model for r in analysis.results if key not in {label_key(label) for label in r.predictions}]


def with_ground_truth(analysis: ImageAnalysis, gt: tuple[str, Box] | None) -> ImageAnalysis:
    """A copy whose findings of ``gt``'s class carry that box and its metrics (arrays shared, not copied)."""
    if gt is None:
        return analysis
    label, box = gt
    image = analysis.image

    def scored(item: Any) -> Any:
        if label_key(item.pathology) != label_key(label):
            return item
        metrics = box_metrics(item.boxes, item.cam, [box], image.width, image.height)
        return dataclasses.replace(item, ground_truth=[box], metrics=metrics)

    results = [dataclasses.replace(r, findings=[scored(f) for f in r.findings]) for r in analysis.results]
    return dataclasses.replace(analysis, results=results, consolidated=[scored(c) for c in analysis.consolidated],
                               ground_truth=[(label, box)])


def document(analysis: ImageAnalysis, name: str, **extra: Any) -> dict[str, Any]:
    """The page as JSON: the pipeline's ``analysis.json`` summary with the image's file name
    (never the server's temporary path) and the page settings in ``extra``."""
    from xcam import __version__

    data = analysis_dict(analysis)
    data["image"] = name
    data["xcam_version"] = __version__
    data.pop("seconds", None)
    for model in data["models"]:
        model.pop("seconds", None)
    data.update(extra)
    return data
