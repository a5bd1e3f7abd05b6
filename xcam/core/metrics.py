"""Localization metrics: the one module every command uses.

Conventions
-----------
* A box is ``(x, y, w, h)`` in pixels of the original image: ``x, y`` the top-left corner,
  ``w, h`` the size, so it covers ``[x, x + w) × [y, y + h)``. Any object with ``x, y, width,
  height`` attributes (:class:`xcam.core.types.ScoredBox`) is accepted wherever a box is.
* ``|A|`` is an area, ``A ∩ B`` the overlap rectangle.
* Degenerate inputs never give NaN: an empty prediction (no box, zero area, empty mask) has zero
  overlap, a ratio whose denominator is 0 is 0.
* Per-image functions are pure Python / NumPy. IoU *matrices* (matching scored boxes against
  several ground-truth boxes) use :func:`torchvision.ops.box_iou`, imported only when called; the
  common single-ground-truth case uses :func:`box_iou` (same numbers, tested) so that ``xcam bbox``
  does not pay seconds of ``import torch`` for one column.

Per image: :func:`box_iou`, :func:`box_dice`, :func:`iobb`, :func:`pixel_accuracy`,
:func:`precision_recall`, :func:`colloc`, :func:`average_precision`, :func:`image_ap` (single-image
AP of one class's boxes, keys :data:`IMAGE_AP_KEYS`; dataset-level COCO AP is
:mod:`xcam.interop.coco`),
:func:`mask_iou`, :func:`mask_dice`, :func:`pointing_game_hit`, and :func:`image_metrics` which
gathers them under the keys written to ``*_PBBox.json``.

Per dataset (Wang et al. 2017, "ChestX-ray8", CVPR): :func:`best_overlap`,
:func:`threshold_accuracy`, :func:`t_iobb_accuracy`, :func:`t_iou_accuracy`, :func:`class_mean`,
:func:`average_false_positives`, :func:`mean_iou`.

Ground truth strings: :func:`parse_ground_truth`, :func:`check_box_in_image`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

from xcam.core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.core.types import ScoredBox

Box = Union[tuple[float, float, float, float], Sequence[float], "ScoredBox"]

IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
"""T(IoBB) thresholds of Wang et al. 2017, Table 3."""
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""T(IoU) thresholds of Wang et al. 2017, Table 3."""
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""0.50, 0.55, …, 0.95: the thresholds averaged by AP@[.5:.95]."""

IMAGE_AP_KEYS: tuple[str, str, str] = ("image_ap@[.5:.95]", "image_ap@.5", "image_ap@.75")
"""Single-image AP of the boxes of one class (:func:`image_ap`): **not** COCO's dataset-level AP,
which ranks every detection of a class over the whole data set (:mod:`xcam.interop.coco`)."""

METRIC_KEYS: tuple[str, ...] = (
    "iou", "dice", "iobb", "pixel_accuracy", "precision@0.5", "recall@0.5",
    "colloc@0.1", "colloc@0.3", *IMAGE_AP_KEYS,
)
"""The keys of :func:`image_metrics`, in the order they are reported."""

LEGACY_METRIC_KEYS: dict[str, str] = {"ap@[.5:.95]": IMAGE_AP_KEYS[0], "ap@.5": IMAGE_AP_KEYS[1],
                                      "ap@.75": IMAGE_AP_KEYS[2]}
"""Names that files written before the rename carry → today's names (:func:`upgrade_metric_keys`)."""


# -- boxes ---------------------------------------------------------------------------------
def as_xywh(box: Box) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` floats from a tuple/list/array or a :class:`ScoredBox`-like object."""
    if hasattr(box, "width") and hasattr(box, "height"):
        return (float(box.x), float(box.y), float(box.width), float(box.height))  # type: ignore[union-attr]
    x, y, w, h = (float(v) for v in box)  # type: ignore[union-attr]
    return (x, y, w, h)


def box_area(box: Box) -> float:
    """``|A| = max(w, 0) · max(h, 0)``."""
    _, _, w, h = as_xywh(box)
    return max(w, 0.0) * max(h, 0.0)


def intersection_area(a: Box, b: Box) -> float:
    """``|A ∩ B| = max(0, min(x2ᴬ, x2ᴮ) − max(xᴬ, xᴮ)) · max(0, min(y2ᴬ, y2ᴮ) − max(yᴬ, yᴮ))``."""
    ax, ay, aw, ah = as_xywh(a)
    bx, by, bw, bh = as_xywh(b)
    if aw <= 0 or ah <= 0 or bw <= 0 or bh <= 0:
        return 0.0
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    return max(iw, 0.0) * max(ih, 0.0)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def box_iou(pred: Box | None, gt: Box) -> float:
    """Intersection over union: ``IoU = |P ∩ G| / (|P| + |G| − |P ∩ G|)``; no prediction → 0."""
    if pred is None:
        return 0.0
    inter = intersection_area(pred, gt)
    return _ratio(inter, box_area(pred) + box_area(gt) - inter)


def box_dice(pred: Box | None, gt: Box) -> float:
    """Dice (F1 of areas): ``Dice = 2·|P ∩ G| / (|P| + |G|)`` = ``2·IoU / (1 + IoU)``; no prediction → 0."""
    if pred is None:
        return 0.0
    return _ratio(2.0 * intersection_area(pred, gt), box_area(pred) + box_area(gt))


def iobb(pred: Box | None, gt: Box) -> float:
    """Intersection over the predicted box (Wang et al. 2017): ``IoBB = |P ∩ G| / |P|``; no prediction → 0."""
    if pred is None:
        return 0.0
    return _ratio(intersection_area(pred, gt), box_area(pred))


def colloc(pred: Box | None, gt: Box, threshold: float) -> bool:
    """Correct localization at ``t`` (ColLoc@t): a hit when ``IoU(P, G) ≥ t``; no prediction → miss."""
    return pred is not None and box_area(pred) > 0 and box_iou(pred, gt) >= threshold


def box_to_mask(box: Box | None, width: int, height: int) -> "np.ndarray":
    """Rasterise a box on a ``height × width`` grid: pixel ``(r, c)`` is in the box when its centre
    ``(c + ½, r + ½)`` lies in ``[x, x + w) × [y, y + h)``; parts outside the image are clipped."""
    import numpy as np

    mask = np.zeros((int(height), int(width)), dtype=bool)
    if box is None:
        return mask
    x, y, w, h = as_xywh(box)
    if w <= 0 or h <= 0:
        return mask
    c0, c1 = (min(max(math.ceil(v - 0.5), 0), int(width)) for v in (x, x + w))
    r0, r1 = (min(max(math.ceil(v - 0.5), 0), int(height)) for v in (y, y + h))
    mask[r0:r1, c0:c1] = True
    return mask


def pixel_accuracy(pred: Box | None, gt: Box, width: int, height: int) -> float:
    """Pixel accuracy of the box masks over the whole image:
    ``(TP + TN) / (W · H)`` with ``TP = |M_P ∧ M_G|``, ``TN = |¬M_P ∧ ¬M_G|`` (see :func:`box_to_mask`).
    With no prediction it is the fraction of the image outside the ground truth."""
    import numpy as np

    if width <= 0 or height <= 0:
        return 0.0
    mp = box_to_mask(pred, width, height)
    mg = box_to_mask(gt, width, height)
    return float(np.count_nonzero(mp == mg)) / float(width * height)


# -- several boxes -------------------------------------------------------------------------
def iou_matrix(preds: Sequence[Box], gts: Sequence[Box]) -> "np.ndarray":
    """``M[i, j] = IoU(preds[i], gts[j])`` via :func:`torchvision.ops.box_iou` (0 where the union is 0)."""
    import numpy as np

    if len(preds) == 0 or len(gts) == 0:
        return np.zeros((len(preds), len(gts)), dtype=np.float64)
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    def xyxy(boxes: Sequence[Box]) -> "torch.Tensor":
        rows = []
        for b in boxes:
            x, y, w, h = as_xywh(b)
            w, h = max(w, 0.0), max(h, 0.0)
            rows.append((x, y, x + w, y + h))
        return torch.tensor(rows, dtype=torch.float64)

    m = tv_box_iou(xyxy(preds), xyxy(gts)).numpy()
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)


def _score(box: Box) -> float:
    return float(getattr(box, "score", 1.0))


def match_boxes(
    preds: Sequence[Box], gts: Sequence[Box], iou_threshold: float, scores: Sequence[float] | None = None
) -> list[bool]:
    """Greedy COCO/VOC matching. Predictions are taken in decreasing score order (``scores``, else the
    ``score`` attribute, else 1); each takes the unmatched ground truth with the highest IoU, and is a
    true positive when that IoU ``≥ iou_threshold``. Returns one flag per prediction, in score order."""
    import numpy as np

    if scores is None:
        scores = [_score(b) for b in preds]
    order = sorted(range(len(preds)), key=lambda i: -float(scores[i]))  # stable for ties
    ranked = [preds[i] for i in order]
    if len(gts) == 1:  # one column: the scalar formula gives the same numbers without importing torch
        m = np.array([[box_iou(p, gts[0])] for p in ranked], dtype=np.float64).reshape(len(ranked), 1)
    else:
        m = iou_matrix(ranked, gts)
    taken = np.zeros(len(gts), dtype=bool)
    flags: list[bool] = []
    for row in m:
        candidates = np.where(taken, -1.0, row)
        j = int(np.argmax(candidates)) if len(gts) else -1
        hit = j >= 0 and candidates[j] >= iou_threshold and candidates[j] > 0
        if hit:
            taken[j] = True
        flags.append(bool(hit))
    return flags


def precision_recall(
    preds: Sequence[Box], gts: Sequence[Box], iou_threshold: float = 0.5
) -> tuple[float, float]:
    """Precision and recall at an IoU threshold (a prediction is a TP when matched with IoU ≥ t,
    see :func:`match_boxes`): ``precision = TP / #pred``, ``recall = TP / #gt`` (0 when the count is 0)."""
    tp = sum(match_boxes(preds, gts, iou_threshold))
    return _ratio(tp, len(preds)), _ratio(tp, len(gts))


def average_precision(
    preds: Sequence[Box], gts: Sequence[Box], iou_threshold: float = 0.5, scores: Sequence[float] | None = None
) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+) of scored boxes for one image.

    Predictions sorted by score are matched (:func:`match_boxes`); after the k-th one
    ``Pₖ = TPₖ / k`` and ``Rₖ = TPₖ / #gt``. With the interpolated precision
    ``P̂(r) = max_{k: Rₖ ≥ r} Pₖ``, ``AP = Σₖ (Rₖ − Rₖ₋₁) · P̂(Rₖ)`` with ``R₀ = 0``.
    No ground truth or no prediction → 0 (COCO uses 101 recall points instead; values differ slightly).
    Over one image's boxes this is the *single-image* AP written to ``*_PBBox.json``.
    """
    import numpy as np

    if len(gts) == 0 or len(preds) == 0:
        return 0.0
    flags = np.asarray(match_boxes(preds, gts, iou_threshold, scores), dtype=np.float64)
    tp = np.cumsum(flags)
    precision = tp / np.arange(1, len(flags) + 1)
    recall = tp / len(gts)
    interp = np.maximum.accumulate(precision[::-1])[::-1]  # P̂ at each Rₖ
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(steps * interp))


def image_ap(
    preds: Sequence[Box], gts: Sequence[Box], scores: Sequence[float] | None = None
) -> dict[str, float]:
    """Single-image AP of the boxes of one class, at COCO's IoU thresholds: ``image_ap@[.5:.95]`` =
    mean of :func:`average_precision` over IoU 0.50, 0.55, …, 0.95; ``image_ap@.5`` and
    ``image_ap@.75`` at single thresholds.

    It ranks only this image's boxes (by their CAM scores), so with one ground-truth box it mostly
    says whether the best box overlaps it. COCO's AP ranks every detection of a class across the
    data set by its score (xcam: the class probability) and interpolates at 101 recall points; that
    number comes from pycocotools (:func:`xcam.interop.coco.coco_eval`)."""
    aps = {t: average_precision(preds, gts, t, scores) for t in COCO_IOU_THRESHOLDS}
    k_all, k_50, k_75 = IMAGE_AP_KEYS
    return {k_all: sum(aps.values()) / len(aps), k_50: aps[0.5], k_75: aps[0.75]}


coco_ap = image_ap
"""The former name of :func:`image_ap` (kept for callers; the keys are the new ones)."""


def upgrade_metric_keys(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Metrics read from a file: the pre-rename AP keys (``ap@.5`` …) under today's names
    (``image_ap@.5`` …); a value under the new name wins. ``None`` stays ``None``."""
    if metrics is None or not isinstance(metrics, Mapping):
        return metrics  # type: ignore[return-value]
    return {LEGACY_METRIC_KEYS.get(k, k): v for k, v in metrics.items()
            if not (k in LEGACY_METRIC_KEYS and LEGACY_METRIC_KEYS[k] in metrics)}


def image_metrics(preds: Sequence[Box], gt: Box, width: int, height: int) -> dict[str, float]:
    """Every per-image metric for predicted boxes against one ground-truth box.

    The single-box metrics (IoU, Dice, IoBB, pixel accuracy, ColLoc@0.1/0.3) use the highest-scored
    prediction; precision/recall@0.5 and AP use all of them. Keys: :data:`METRIC_KEYS`.
    """
    ordered = sorted(preds, key=lambda b: -_score(b))
    top = ordered[0] if ordered else None
    precision, recall = precision_recall(ordered, [gt], 0.5)
    out = {
        "iou": box_iou(top, gt),
        "dice": box_dice(top, gt),
        "iobb": iobb(top, gt),
        "pixel_accuracy": pixel_accuracy(top, gt, width, height),
        "precision@0.5": precision,
        "recall@0.5": recall,
        "colloc@0.1": float(colloc(top, gt, 0.1)),
        "colloc@0.3": float(colloc(top, gt, 0.3)),
    }
    out.update(image_ap(ordered, [gt]))
    return {k: float(out[k]) for k in METRIC_KEYS}


# -- masks ---------------------------------------------------------------------------------
def mask_iou(pred: "np.ndarray", gt: "np.ndarray") -> float:
    """Mask IoU: ``|P ∧ G| / |P ∨ G|`` over boolean masks of one shape; both empty → 0."""
    import numpy as np

    p, g = _same_shape_masks(pred, gt)
    return _ratio(float(np.count_nonzero(p & g)), float(np.count_nonzero(p | g)))


def mask_dice(pred: "np.ndarray", gt: "np.ndarray") -> float:
    """Mask Dice: ``2·|P ∧ G| / (|P| + |G|)``; both empty → 0."""
    import numpy as np

    p, g = _same_shape_masks(pred, gt)
    return _ratio(2.0 * np.count_nonzero(p & g), float(np.count_nonzero(p) + np.count_nonzero(g)))


def _same_shape_masks(a: "np.ndarray", b: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np

    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise UsageError(f"masks differ in shape: {a.shape} and {b.shape}")
    return a, b


def cam_peak(cam: "np.ndarray") -> tuple[int, int] | None:
    """``(row, col)`` of a CAM's first arg-max pixel; ``None`` for a constant, empty or all-NaN CAM."""
    import numpy as np

    a = np.asarray(cam)
    if a.ndim != 2 or a.size == 0:
        return None
    if not np.isfinite(a).all():
        a = np.nan_to_num(a.astype(np.float64), nan=-np.inf)
    top = a.max()
    if not np.isfinite(top) or top <= a.min():
        return None
    r, c = np.unravel_index(int(np.argmax(a)), a.shape)
    return int(r), int(c)


def point_hit(point: tuple[float, float] | None, gt: Box, tolerance: float = 0.0) -> bool:
    """Whether ``(x, y)`` lies within ``tolerance`` pixels of the box ``[x, x + w] × [y, y + h]``
    (``None``, no point: a miss)."""
    if point is None:
        return False
    px, py = point
    x, y, w, h = as_xywh(gt)
    dx = max(x - px, 0.0, px - (x + w))
    dy = max(y - py, 0.0, py - (y + h))
    return math.hypot(dx, dy) <= tolerance


def pointing_game_hit(cam: "np.ndarray", gt: Box, tolerance: float = 0.0) -> bool:
    """Pointing game (Zhang et al. 2016): a hit when the CAM's maximum lies in the ground-truth box.

    The CAM must be in the box's (original image) grid. The point is the centre ``(c + ½, r + ½)`` of
    the first arg-max pixel; it hits when its distance to the box is ``≤ tolerance`` pixels (0: inside
    ``[x, x + w] × [y, y + h]``; the literature often uses 15). A constant, empty or all-NaN CAM has no
    maximum: a miss. (The chain measures the peak in its work grid and maps it to original pixels,
    then calls :func:`point_hit`.)
    """
    peak = cam_peak(cam)
    return point_hit(None if peak is None else (peak[1] + 0.5, peak[0] + 0.5), gt, tolerance)


# -- dataset level (Wang et al. 2017) ------------------------------------------------------
def best_overlap(preds: Sequence[Box], gt: Box, metric: str = "iou") -> float:
    """The best overlap of any predicted box with the ground truth: ``max_i IoU(Pᵢ, G)`` or
    ``max_i IoBB(Pᵢ, G)`` (Wang et al. count an image as localized when *any* box passes); no box → 0."""
    fn = _overlap_fn(metric)
    return max((fn(p, gt) for p in preds), default=0.0)


def _overlap_fn(metric: str):
    if metric == "iou":
        return box_iou
    if metric == "iobb":
        return iobb
    raise UsageError(f"unknown overlap metric {metric!r}; use 'iou' or 'iobb'")


def threshold_accuracy(values: Iterable[float], thresholds: Sequence[float]) -> dict[float, float]:
    """Localization accuracy at each threshold: ``Acc(T) = #{images: v > T} / #images``
    (strictly greater, as in Wang et al. 2017); no image → 0."""
    vals = [float(v) for v in values]
    return {float(t): _ratio(sum(v > t for v in vals), len(vals)) for t in thresholds}


def t_iobb_accuracy(
    per_class: Mapping[str, Iterable[float]], thresholds: Sequence[float] = IOBB_THRESHOLDS
) -> dict[str, dict[float, float]]:
    """T(IoBB) accuracy per class: ``{class: {T: Acc(T)}}`` from each image's best IoBB
    (:func:`best_overlap` with ``metric="iobb"``) grouped by class; see :func:`threshold_accuracy`."""
    return {label: threshold_accuracy(vals, thresholds) for label, vals in per_class.items()}


def t_iou_accuracy(
    per_class: Mapping[str, Iterable[float]], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, dict[float, float]]:
    """T(IoU) accuracy per class: ``{class: {T: Acc(T)}}`` from each image's best IoU, T = 0.1 … 0.7."""
    return {label: threshold_accuracy(vals, thresholds) for label, vals in per_class.items()}


def class_mean(table: Mapping[str, Mapping[float, float]]) -> dict[float, float]:
    """Unweighted mean over classes of a ``{class: {T: Acc}}`` table (the "mean" row of Wang et al.)."""
    if not table:
        return {}
    thresholds = next(iter(table.values())).keys()
    return {t: sum(row[t] for row in table.values()) / len(table) for t in thresholds}


def average_false_positives(
    preds_per_image: Sequence[Sequence[Box]],
    gts_per_image: Sequence[Sequence[Box]],
    threshold: float = 0.25,
    metric: str = "iobb",
) -> float:
    """Average false positives (AFP, Wang et al. 2017): a predicted box is false when its overlap
    (IoBB or IoU) with every ground-truth box of its image is ``≤ threshold``;
    ``AFP = #false boxes / #images``; no image → 0."""
    if len(preds_per_image) != len(gts_per_image):
        raise UsageError(f"{len(preds_per_image)} prediction lists for {len(gts_per_image)} ground-truth lists")
    fn = _overlap_fn(metric)
    false = sum(
        1
        for preds, gts in zip(preds_per_image, gts_per_image)
        for p in preds
        if all(fn(p, g) <= threshold for g in gts)
    )
    return _ratio(false, len(preds_per_image))


def mean_iou(values: Iterable[float]) -> float:
    """mIoU: ``(1/N) Σᵢ IoUᵢ`` over images (NaN values count as 0); no image → 0."""
    vals = [0.0 if v is None or math.isnan(float(v)) else float(v) for v in values]
    return _ratio(sum(vals), len(vals))


def hit_rate(hits: Iterable[bool]) -> float:
    """Fraction of hits (e.g. pointing game): ``#hits / N``; no image → 0."""
    vals = [bool(h) for h in hits]
    return _ratio(sum(vals), len(vals))


# -- ground truth --------------------------------------------------------------------------
def parse_ground_truth(text: str) -> tuple[str, float, float, float, float]:
    """Parse ``"Label,x,y,w,h"`` (NIH ``BBox_List`` order, pixels) into ``(label, x, y, w, h)``.

    The label may contain spaces; the four numbers must be finite, ``x, y ≥ 0`` and ``w, h > 0``.
    Raises :class:`UsageError` with one line naming the problem.
    """
    raw = str(text).strip()
    parts = [p.strip() for p in raw.rsplit(",", 4)]
    if len(parts) != 5 or not parts[0]:
        raise UsageError(f"ground truth {raw!r} is malformed: expected 'Label,x,y,w,h', e.g. 'Cardiomegaly,277.5,459,540,301'")
    label, *fields = parts
    values: list[float] = []
    for name, field in zip(("x", "y", "w", "h"), fields):
        try:
            value = float(field)
        except ValueError:
            raise UsageError(f"ground truth {raw!r}: {name}={field!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"ground truth {raw!r}: {name}={field!r} is not a finite number")
        values.append(value)
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise UsageError(f"ground truth {raw!r}: width and height must be > 0 (got w={w:g}, h={h:g})")
    if x < 0 or y < 0:
        raise UsageError(f"ground truth {raw!r}: x and y must be ≥ 0 (got x={x:g}, y={y:g})")
    return label, x, y, w, h


def check_box_in_image(box: Box, width: int, height: int, what: str = "box", tolerance: float = 1e-6) -> None:
    """Raise :class:`UsageError` unless ``0 ≤ x``, ``0 ≤ y``, ``x + w ≤ W`` and ``y + h ≤ H``
    (within ``tolerance`` pixels)."""
    x, y, w, h = as_xywh(box)
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        raise UsageError(
            f"{what} (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the {int(width)}x{int(height)} image"
        )


def box_dict(box: Box) -> dict[str, Any]:
    """JSON form of a box: ``x, y, width, height, x2, y2`` (and ``score`` when it has one)."""
    x, y, w, h = as_xywh(box)
    out: dict[str, Any] = {"x": x, "y": y, "width": w, "height": h, "x2": x + w, "y2": y + h}
    if hasattr(box, "score"):
        out["score"] = float(box.score)  # type: ignore[union-attr]
    return out
