"""The UI's use of :mod:`xcam.chain`: the same chain as ``xcam cam`` / ``xcam analyze``.

Two passes per image, both :meth:`xcam.chain.engine.Chain.analyze`: first with no class chosen
(:meth:`ClassChoice.none`: probabilities only, so the page can offer the pathologies), then for the
chosen pathology (CAM, mask and boxes per model, and the ensembler's consolidated box when two or
more models predict it). Settings are a profile (:func:`xcam.chain.settings.resolve_settings`) with
the page's explicit choices over it, exactly as the command line's options, so the page shows the
boxes ``xcam analyze --profile P --target-class X`` writes. Ground truth is applied afterwards by
:func:`with_ground_truth` (metrics from :func:`xcam.chain.localize.box_metrics`), so typing a box
never recomputes a CAM. The images of the page are made here too, at the original resolution
(:meth:`~xcam.core.preprocess.WorkGrid.to_original`), with the colour convention and legends of
:mod:`xcam.core.render`. No Streamlit here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from xcam.chain.localize import box_metrics
from xcam.chain.models import LoadOptions, ModelRef
from xcam.chain.settings import ChainSettings, ClassChoice, Overrides, resolve_settings
from xcam.core.errors import XcamError
from xcam.core.labels import label_key

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.chain.engine import Chain
    from xcam.chain.results import Consolidation, Finding, ImageResult, ModelResult
    from xcam.core.imageio import XrayImage
    from xcam.core.manager import XcamPluginManager
    from xcam.core.weights import WeightsStore

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Options:
    """The page's settings: a profile (``None``: ``[defaults] profile`` of plugins.toml) and the
    plugins chosen over it (``None``: the profile's, as an option left out on the command line)."""

    profile: str | None = None
    method: str | None = None
    mask: str | None = None
    strategy: str | None = None
    ensembler: str | None = None

    def overrides(self) -> Overrides:
        return Overrides(method=self.method or None, mask=self.mask or None, strategy=self.strategy or None,
                         ensembler=self.ensembler or None)

    def settings(self, pm: "XcamPluginManager") -> ChainSettings:
        """The resolved settings (what ``--profile P --method M ...`` gives); raises :class:`XcamError`."""
        return resolve_settings(pm, self.profile, self.overrides())


def settings_key(settings: ChainSettings) -> str:
    """A hashable, stable identity of resolved settings (memo keys)."""
    return json.dumps(settings.as_dict(), sort_keys=True, default=str)


@dataclass(frozen=True)
class ModelSpec:
    """One selected model: plugin name and weight variant (a variant name or a checkpoint path)."""

    name: str
    variant: str

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.variant, self.name)  # a model is selected at most once


def choice(pathology: str | None) -> ClassChoice:
    """The one pathology to explain, or none at all (predictions only); never ground-truth classes."""
    if pathology is None:
        return ClassChoice.none(ground_truth=False)
    return ClassChoice(targets=(pathology,), ground_truth=False)


def load_options(device: str, random_init: bool) -> LoadOptions:
    """PyTorch (CAM plugins need autograd), on ``device``; ``random_init`` gives the seeded random
    weights every command's ``--random-weights`` gives."""
    return LoadOptions(backend="torch", device=device, random_init=random_init)


def build(pm: "XcamPluginManager", models: Sequence[ModelSpec], settings: ChainSettings, pathology: str | None,
          *, store: "WeightsStore | None", device: str, random_init: bool) -> "Chain":
    """A chain over these models (loaded once per process by :mod:`xcam.chain.models`);
    ``pathology=None`` gives probabilities only."""
    from xcam.chain.engine import build_chain

    return build_chain(pm, [m.ref for m in models], settings, choice(pathology),
                       load=load_options(device, random_init), store=store, keep_images=True)


def analyze(chain: "Chain", image: "XrayImage") -> "ImageResult":
    """The chain on one decoded image; a failed result raises its one-line reason."""
    result = chain.analyze(image)
    if not result.ok:
        raise XcamError(str(result.error))
    return result


def missing_class(result: "ImageResult", pathology: str) -> list[str]:
    """Models that do not predict ``pathology`` (they have no finding for it)."""
    key = label_key(pathology)
    return [r.model for r in result.results if key not in {label_key(label) for label in r.predictions}]


def with_ground_truth(result: "ImageResult",
                      gt: "tuple[str, Box] | Sequence[tuple[str, Box]] | None") -> "ImageResult":
    """A copy whose findings (and consolidations) of the ground truth's class carry its boxes and
    their metrics, computed as the chain computes them (against the box the top box overlaps most;
    arrays shared, not copied). ``gt``: one ``(label, box)`` or several (a box list's rows)."""
    if not gt:
        return result
    pairs = [gt] if isinstance(gt[0], str) else list(gt)  # type: ignore[list-item]
    truth = [(str(label), tuple(float(v) for v in box)) for label, box in pairs]  # type: ignore[union-attr]

    def scored(item: Any) -> Any:
        boxes = [box for label, box in truth if label_key(label) == label_key(item.pathology)]
        if not boxes:
            return item
        metrics = box_metrics(item.boxes, item.peak, boxes, result.width, result.height)
        return dataclasses.replace(item, ground_truth=boxes, metrics=metrics)

    results = [dataclasses.replace(r, findings=[scored(f) for f in r.findings]) for r in result.results]
    return dataclasses.replace(result, results=results, consolidated=[scored(c) for c in result.consolidated],
                               ground_truth=truth)


def document(result: "ImageResult", name: str, settings: ChainSettings | None = None, **extra: Any) -> dict[str, Any]:
    """The page as JSON: the chain's ``analysis.json`` summary (:func:`xcam.chain.results.result_dict`)
    with the image's file name (never the server's temporary path), no timings, and the page's
    settings in ``extra``."""
    from xcam.chain.results import result_dict

    data = result_dict(result, None, settings.as_dict() if settings is not None else None)
    data["image"] = name
    data.pop("seconds", None)
    data.update(extra)
    return data


# -- images of the page ------------------------------------------------------------------------
def finding_images(grey: "np.ndarray", result: "ImageResult", model: "ModelResult", finding: "Finding",
                   alpha: float) -> dict[str, "np.ndarray"]:
    """One model's finding at the original resolution, named as ``xcam cam`` names its files:
    ``_P0`` overlay, ``_P3`` mask and ``_PBBox`` boxes (drawn as ``xcam cam`` draws them: prediction
    magenta, ground truth green, with a legend)."""
    from xcam.chain.outputs import box_items, box_legend, finding_names, finding_prefix
    from xcam.core import render

    assert result.grid is not None
    names = finding_names(finding_prefix(model.model, finding.pathology))
    items = box_items(finding.boxes, finding.ground_truth, finding.pathology)
    return {
        names["P0"]: render.overlay(grey, result.grid.to_original(finding.cam), alpha),
        names["P3"]: render.mask_png(result.grid.to_original(finding.mask)),
        names["boxes"]: render.draw_annotated(grey, items, box_legend(bool(finding.ground_truth))),
    }


def consolidated_images(grey: "np.ndarray", result: "ImageResult", c: "Consolidation",
                        alpha: float) -> dict[str, "np.ndarray"]:
    """A consolidation at the original resolution: ``_P0`` overlay, mask, and ``_bbox`` with each
    member model's top box (:data:`~xcam.core.render.PALETTE`), the consolidated boxes
    (:data:`~xcam.core.render.PREDICTION`) and the ground truth (:data:`~xcam.core.render.TRUTH`)."""
    from xcam.chain.outputs import box_items, consolidated_names, consolidated_prefix
    from xcam.core import render

    assert result.grid is not None
    names = consolidated_names(consolidated_prefix(c.pathology))
    key = label_key(c.pathology)
    members = [(r.model, f) for r, f in result.findings if r.model in c.models and label_key(f.pathology) == key]
    items: list[tuple[Any, ...]] = []
    legend: list[tuple[tuple[int, int, int], str]] = []
    for i, (model, f) in enumerate(members):
        color = render.PALETTE[i % len(render.PALETTE)]
        legend.append((color, model))
        if f.box is not None:
            items.append((f.box, color, model))
    items += box_items(c.boxes, c.ground_truth, c.pathology)
    legend.append((render.PREDICTION, f"consolidated ({c.ensembler})"))
    if c.ground_truth:
        legend.append((render.TRUTH, "ground truth"))
    return {
        names["P0"]: render.overlay(grey, result.grid.to_original(c.cam), alpha),
        names["P3"]: render.mask_png(result.grid.to_original(c.mask)),
        names["boxes"]: render.draw_annotated(grey, items, legend),
    }
