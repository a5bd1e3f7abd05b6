"""CAMs and boxes for ``xcam score --with-cams/--boxes``, the same chain as ``xcam analyze``.

Per model, the CAMs of a whole batch come from :func:`xcam.core.pipeline.compute_cams` (fast
paths such as the ONNX in-graph Grad-CAM included) for the selected classes (``positive``:
probability ≥ threshold; ``all``: every valid label). Then per image, one class at a time (so
memory stays at a few full-size maps): the CAM is mapped to the original pixel grid
(:meth:`~xcam.core.preprocess.Geometry.map_to_original`: padding undone), and
:func:`xcam.core.pipeline.localize` (mask extractor + bbox strategy plugins) gives boxes in
original pixels. With several models, a label that two or more models localize also gets the
ensembler's combined CAM and its boxes (``model: "ensemble"``). Without ``--boxes`` each entry
is the CAM's peak in original pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from xcam.core.preprocess import Geometry
from xcam.score.schema import ENSEMBLE

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.manager import XcamPluginManager
    from xcam.score.scorer import LoadedModel, Prepared, ScoreOptions

CamsByClass = dict[int, np.ndarray]  # output index → CAM at the model's input resolution


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


class Localizer:
    """Plugin lookups done once; :meth:`cams` per model batch, :meth:`entries` per image."""

    def __init__(self, pm: "XcamPluginManager", options: "ScoreOptions") -> None:
        from xcam.core.pipeline import AnalysisSettings

        self.pm = pm
        self.options = options
        self.method = pm.cam_method(options.cam_method)
        self.cam_options = pm.config.plugin_options(self.method.name)
        self.settings = AnalysisSettings(method=self.method.name, mask=options.mask_extractor,
                                         strategy=options.bbox_strategy, threshold=options.threshold)
        if options.boxes:  # unknown plugin names fail now, not on the first positive finding
            pm.mask_extractor(options.mask_extractor)
            pm.bbox_strategy(options.bbox_strategy)

    def selected(self, model: "LoadedModel", probs: np.ndarray) -> list[list[int]]:
        """Output indices to localize, per image."""
        valid = model.clf.valid_indices
        if self.options.cam_classes == "all":
            return [list(valid) for _ in range(len(probs))]
        return [[i for i in valid if probs[b, i] >= self.options.threshold] for b in range(len(probs))]

    def cams(self, model: "LoadedModel", batch: np.ndarray, probs: np.ndarray) -> list[CamsByClass]:
        """Model-resolution CAMs of the selected classes, per image of ``batch`` ``[B, 1, S, S]``."""
        from xcam.core.pipeline import compute_cams

        out: list[CamsByClass] = [{} for _ in range(len(batch))]
        pairs = [(b, c) for b, classes in enumerate(self.selected(model, probs)) for c in classes]
        if not pairs:
            return out
        maps = compute_cams(model.clf, batch[[b for b, _ in pairs]], [c for _, c in pairs], self.method, pm=self.pm,
                            cam_classifier=model.cam_clf, **self.cam_options)
        for (b, c), cam in zip(pairs, maps):
            out[b][c] = cam
        return out

    def entries(self, item: "Prepared", models: Sequence["LoadedModel"], probs: Sequence[Mapping[str, float]],
                cams: Sequence[CamsByClass], ensembler: Any = None, ensemble: Mapping[str, float] | None = None,
                ) -> list[dict[str, Any]]:
        """Boxes (or peaks) of one image, in original pixels: per model, then the ensemble's."""
        from xcam.core.pipeline import label_key

        groups: dict[str, list[tuple[str, np.ndarray]]] = {}
        result: list[dict[str, Any]] = []
        for model, model_probs, by_class in zip(models, probs, cams):
            geometry = Geometry(item.width, item.height, model.shape[0], item.pad_x, item.pad_y)
            for index, cam in by_class.items():
                label = model.clf.labels[index]
                original = np.clip(geometry.map_to_original(cam), 0.0, 1.0).astype(np.float32)
                result += self._describe(model.spec.prefix, label, model_probs.get(label), original, item)
                if ensembler is not None:
                    groups.setdefault(label_key(label), []).append((label, original))
        for members in groups.values():
            if len(members) < 2:
                continue
            label = members[0][0]
            combined = ensembler.combine_cams([cam for _, cam in members], None)
            result += self._describe(ENSEMBLE, label, (ensemble or {}).get(label), combined, item)
        return result

    def _describe(self, model: str, label: str, prob: float | None, cam: np.ndarray,
                  item: "Prepared") -> list[dict[str, Any]]:
        base = {"model": model, "label": label, "probability": None if prob is None else _r(prob, 4)}
        if not self.options.boxes:
            row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
            return [dict(base, peak_x=int(col), peak_y=int(row), peak=_r(cam[row, col], 4))]
        from xcam.core.pipeline import localize

        _, boxes = localize(self.pm, cam, self.settings)
        out = []
        for b in boxes:
            x0, y0 = min(max(b.x, 0.0), item.width), min(max(b.y, 0.0), item.height)
            x1, y1 = min(max(b.x2, 0.0), item.width), min(max(b.y2, 0.0), item.height)
            if x1 > x0 and y1 > y0:
                out.append(dict(base, x=_r(x0), y=_r(y0), width=_r(x1 - x0), height=_r(y1 - y0), score=_r(b.score, 4)))
        return out
