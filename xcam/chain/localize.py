"""CAM in the work grid → mask → boxes in original pixels → metrics against ground truth.

Masks and boxes are computed in the image's :class:`~xcam.core.preprocess.WorkGrid` (by default
the models' input resolution, the padding cropped off), and only the boxes and the CAM's peak are
mapped to original pixels: a 1024² image costs what a 224² map costs. ``work_size = "full"``
computes them at the original resolution instead (the reference; docs/localization.md gives the
measured difference).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from xcam.core.labels import label_key

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.guard import Guard
    from xcam.chain.settings import ChainSettings
    from xcam.core.manager import XcamPluginManager
    from xcam.core.preprocess import WorkGrid
    from xcam.core.types import ScoredBox

Box = tuple[float, float, float, float]


class Localizer:
    """The mask extractor and bbox strategy of a run, looked up once, with their options."""

    def __init__(self, pm: "XcamPluginManager", settings: "ChainSettings", guard: "Guard | None" = None) -> None:
        from xcam.chain.guard import Guard
        from xcam.chain.settings import plugin_options

        self.guard = guard or Guard(pm)
        self.extractor = pm.mask_extractor(settings.mask)
        self.strategy = pm.bbox_strategy(settings.strategy)
        self.mask_options = plugin_options(pm, self.extractor.name, settings.mask_options)
        self.strategy_options = plugin_options(pm, self.strategy.name, settings.strategy_options)

    def mask(self, cam: np.ndarray) -> np.ndarray:
        """The extractor's mask of ``cam`` (checked: a 2-D array of the CAM's shape)."""
        name = self.extractor.name
        mask = self.guard.call("mask extractor", name, self.extractor.extract, cam, **self.mask_options)
        return self.guard.mask(name, mask, cam.shape)

    def boxes(self, mask: np.ndarray, cam: np.ndarray) -> list["ScoredBox"]:
        """The strategy's boxes in the mask's grid, best score first (checked: inside the grid)."""
        name = self.strategy.name
        boxes = self.guard.call("bbox strategy", name, self.strategy.boxes, mask, cam=cam, **self.strategy_options)
        return sorted(self.guard.boxes(name, boxes, mask.shape), key=lambda b: -b.score)

    def localize(self, cam: np.ndarray, grid: "WorkGrid") -> tuple[np.ndarray, list["ScoredBox"], tuple[float, float] | None]:
        """``(mask, boxes in original pixels, peak (x, y) in original pixels)`` of a work-grid CAM."""
        from xcam.core.metrics import cam_peak

        mask = self.mask(cam)
        boxes = boxes_to_original(self.boxes(mask, cam), grid)
        peak = cam_peak(cam)
        return mask, boxes, (grid.point_to_original(*peak) if peak is not None else None)


def boxes_to_original(boxes: Sequence["ScoredBox"], grid: "WorkGrid") -> list["ScoredBox"]:
    """Work-grid boxes → original pixels (clipped; empty boxes dropped)."""
    from xcam.core.types import ScoredBox

    out = []
    for b in boxes:
        x, y, w, h = grid.box_to_original(b.x, b.y, b.width, b.height)
        if w > 0 and h > 0:
            out.append(ScoredBox(x, y, w, h, float(b.score)))
    return out


def ground_truth_for(label: str, ground_truth: Sequence[tuple[str, Box]]) -> list[Box]:
    """The boxes of ``ground_truth`` whose label names the class ``label``."""
    key = label_key(label)
    return [tuple(float(v) for v in box) for name, box in ground_truth if label_key(name) == key]  # type: ignore[misc]


def box_metrics(boxes: Sequence["ScoredBox"], peak: tuple[float, float] | None, gts: Sequence[Box],
                width: int, height: int) -> dict[str, float] | None:
    """:func:`xcam.core.metrics.image_metrics` against the ground-truth box the top box overlaps
    most, plus ``pointing_game`` (1.0 when the CAM's peak lies in that box); ``None`` without truth."""
    from xcam.core.metrics import box_iou, image_metrics, point_hit

    if not gts:
        return None
    top = boxes[0] if boxes else None
    gt = max(gts, key=lambda g: box_iou(top, g)) if top is not None else gts[0]
    out = image_metrics(list(boxes), gt, width, height)
    out["pointing_game"] = float(point_hit(peak, gt))
    return out
