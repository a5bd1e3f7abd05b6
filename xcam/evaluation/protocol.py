"""Wang et al. 2017's dataset-level localization protocol, from one record per ground-truth box.

For every box of the list: the predicted boxes of that image and class (from the CAM), the best
IoBB and IoU of any of them (a box is localized at T when its best overlap is > T), whether the
CAM's maximum lies in the box (pointing game), and the same numbers for the two baselines of
:mod:`xcam.evaluation.baselines`. Per class: T(IoBB) accuracy at 0.1/0.25/0.5/0.75/0.9, T(IoU) at
0.1–0.7, average false positives (AFP, per image and class, at each T(IoBB)), pointing-game hit
rate, mean IoU and — with image labels — ROC AUC. The ``mean`` row is the unweighted class mean.
All formulas live in :mod:`xcam.core.metrics`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from xcam.core import metrics as M

Box = tuple[float, float, float, float]
BASELINES = ("lung_field", "centre")


@dataclass
class BoxRecord:
    """Everything measured for one ground-truth box."""

    image: str
    label: str
    gt: Box
    width: int
    height: int
    preds: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # x, y, w, h, score
    point: tuple[float, float] | None = None  # CAM arg-max (pixel centre), original grid
    hit: bool = False
    evaluated: bool = True  # False: no model predicts this class
    probability: float | None = None  # the class probability of the finding the boxes came from (COCO score)
    baselines: dict[str, Box] = field(default_factory=dict)
    cam: Any = field(default=None, repr=False, compare=False)  # float16 work-grid CAM (not serialized)
    grid: Any = field(default=None, repr=False, compare=False)  # its xcam.core.preprocess.WorkGrid

    @property
    def iobb(self) -> float:
        return M.best_overlap([p[:4] for p in self.preds], self.gt, "iobb")

    @property
    def iou(self) -> float:
        return M.best_overlap([p[:4] for p in self.preds], self.gt, "iou")

    def baseline_scores(self, name: str) -> dict[str, float]:
        box = self.baselines[name]
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        x, y, w, h = self.gt
        return {"iobb": M.iobb(box, self.gt), "iou": M.box_iou(box, self.gt),
                "hit": float(x <= cx <= x + w and y <= cy <= y + h)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image, "label": self.label, "gt": list(self.gt), "width": self.width, "height": self.height,
            "evaluated": self.evaluated, "preds": [list(p) for p in self.preds],
            "point": list(self.point) if self.point else None, "hit": self.hit,
            "iobb": self.iobb, "iou": self.iou,
            "baselines": {k: {"box": list(v), **self.baseline_scores(k)} for k, v in self.baselines.items()},
        }


def _afp(records: Sequence[BoxRecord], threshold: float) -> float:
    """AFP over (image, class) units: predicted boxes whose IoBB with every box of the unit is ≤ T."""
    units: dict[tuple[str, str], list[BoxRecord]] = defaultdict(list)
    for r in records:
        units[(r.image, r.label)].append(r)
    preds = [[p[:4] for p in rs[0].preds] for rs in units.values()]
    gts = [[r.gt for r in rs] for rs in units.values()]
    return M.average_false_positives(preds, gts, threshold, "iobb")


def unit_false_positives(unit: Sequence[BoxRecord], threshold: float) -> float:
    """False boxes of one (image, class) unit at T(IoBB) (the numerator of AFP; its denominator
    counts units): the unit's predicted boxes whose IoBB with each of its boxes is ≤ T."""
    return M.average_false_positives([[p[:4] for p in unit[0].preds]], [[r.gt for r in unit]], threshold, "iobb")


def class_row(records: Sequence[BoxRecord], auc: float | None = None) -> dict[str, Any]:
    """All numbers of one class from its box records."""
    iobbs = [r.iobb for r in records]
    ious = [r.iou for r in records]
    return {
        "n_boxes": len(records),
        "iobb": {str(t): v for t, v in M.threshold_accuracy(iobbs, M.IOBB_THRESHOLDS).items()},
        "iou": {str(t): v for t, v in M.threshold_accuracy(ious, M.IOU_THRESHOLDS).items()},
        "afp": {str(t): _afp(records, t) for t in M.IOBB_THRESHOLDS},
        "pointing": M.hit_rate(r.hit for r in records),
        "miou": M.mean_iou(ious),
        "auc": auc,
    }


def baseline_row(records: Sequence[BoxRecord], name: str) -> dict[str, Any]:
    scores = [r.baseline_scores(name) for r in records]
    return {
        "n_boxes": len(records),
        "iobb": {str(t): v for t, v in M.threshold_accuracy([s["iobb"] for s in scores], M.IOBB_THRESHOLDS).items()},
        "iou": {str(t): v for t, v in M.threshold_accuracy([s["iou"] for s in scores], M.IOU_THRESHOLDS).items()},
        "pointing": M.hit_rate(bool(s["hit"]) for s in scores),
        "miou": M.mean_iou(s["iou"] for s in scores),
    }


def mean_row(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Unweighted class mean of every number (AUC over the classes that have one)."""
    rows = list(rows.values())
    if not rows:
        return {}
    out: dict[str, Any] = {"n_boxes": sum(r["n_boxes"] for r in rows)}
    for key, value in rows[0].items():
        if key == "ci":  # bootstrap intervals are added after the means (xcam.evaluation.bootstrap)
            continue
        if isinstance(value, dict):
            out[key] = {t: sum(r[key][t] for r in rows) / len(rows) for t in value}
        elif key not in ("n_boxes", "auc"):
            out[key] = sum(r[key] for r in rows) / len(rows)
    if "auc" in rows[0]:
        aucs = [r["auc"] for r in rows if r.get("auc") is not None and not math.isnan(r["auc"])]
        out["auc"] = sum(aucs) / len(aucs) if aucs else None
    return out


def summarize(records: Sequence[BoxRecord], aucs: Mapping[str, float] | None = None,
              order: Sequence[str] = ()) -> dict[str, Any]:
    """``{"classes": {label: row}, "mean": row, "baselines": {name: {"classes":…, "mean":…}},
    "skipped": {label: n}}`` (classes in ``order`` first)."""
    by_class: dict[str, list[BoxRecord]] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    for r in records:
        if r.evaluated:
            by_class[r.label].append(r)
        else:
            skipped[r.label] += 1
    labels = [c for c in order if c in by_class] + sorted(set(by_class) - set(order))
    aucs = aucs or {}
    classes = {c: class_row(by_class[c], aucs.get(c)) for c in labels}
    baselines = {}
    for name in BASELINES:
        rows = {c: baseline_row(by_class[c], name) for c in labels}
        baselines[name] = {"classes": rows, "mean": mean_row(rows)}
    return {"classes": classes, "mean": mean_row(classes), "baselines": baselines, "skipped": dict(skipped),
            "auc_all": {k: v for k, v in aucs.items()}}
