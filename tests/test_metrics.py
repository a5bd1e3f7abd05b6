"""xcam.core.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xcam.core import metrics as M
from xcam.core.errors import UsageError
from xcam.core.types import ScoredBox

approx = pytest.approx


# -- single boxes --------------------------------------------------------------------------
def test_no_overlap() -> None:
    p, g = (0, 0, 10, 10), (20, 20, 5, 5)
    assert M.box_iou(p, g) == 0.0
    assert M.box_dice(p, g) == 0.0
    assert M.iobb(p, g) == 0.0
    # 40x40 image: 100 + 25 pixels disagree
    assert M.pixel_accuracy(p, g, 40, 40) == approx(1 - 125 / 1600)
    assert not M.colloc(p, g, 0.1)


def test_prediction_inside_ground_truth() -> None:
    p, g = (10, 10, 20, 20), (0, 0, 40, 40)
    assert M.box_iou(p, g) == approx(400 / 1600)
    assert M.box_dice(p, g) == approx(800 / 2000)
    assert M.iobb(p, g) == 1.0  # the whole prediction lies in the ground truth
    assert M.iobb(g, p) == approx(400 / 1600)  # ground truth inside the prediction
    assert M.pixel_accuracy(p, g, 40, 40) == approx(400 / 1600)


def test_identical_boxes() -> None:
    b = (3.5, 7.25, 12.0, 9.5)
    assert M.box_iou(b, b) == approx(1.0)
    assert M.box_dice(b, b) == approx(1.0)
    assert M.iobb(b, b) == approx(1.0)
    assert M.pixel_accuracy(b, b, 30, 30) == 1.0
    assert M.colloc(b, b, 0.3)


def test_partial_overlap_known_numbers() -> None:
    p, g = (0, 0, 10, 10), (5, 5, 10, 10)  # intersection 5x5 = 25, union 175
    assert M.intersection_area(p, g) == 25
    assert M.box_iou(p, g) == approx(1 / 7)
    assert M.box_dice(p, g) == approx(0.25)
    assert M.box_dice(p, g) == approx(2 * M.box_iou(p, g) / (1 + M.box_iou(p, g)))
    assert M.iobb(p, g) == approx(0.25)
    assert M.pixel_accuracy(p, g, 20, 20) == approx(250 / 400)
    assert M.colloc(p, g, 0.1) and not M.colloc(p, g, 0.3)


def test_empty_and_degenerate_predictions_give_zero() -> None:
    g = (0, 0, 10, 10)
    for p in (None, (0, 0, 0, 0), (2, 2, -3, 4)):
        assert M.box_iou(p, g) == 0.0
        assert M.box_dice(p, g) == 0.0
        assert M.iobb(p, g) == 0.0
        assert not M.colloc(p, g, 0.0)
    assert M.pixel_accuracy(None, g, 20, 20) == approx(300 / 400)
    values = M.image_metrics([], g, 20, 20)
    assert set(values) == set(M.METRIC_KEYS)
    assert all(not math.isnan(v) for v in values.values())
    assert values["iou"] == 0 and values["image_ap@.5"] == 0 and values["precision@0.5"] == 0


def test_scored_box_accepted_and_box_dict() -> None:
    b = ScoredBox(1, 2, 3, 4, score=0.7)
    assert M.as_xywh(b) == (1, 2, 3, 4)
    assert M.box_dict(b) == {"x": 1, "y": 2, "width": 3, "height": 4, "x2": 4, "y2": 6, "score": 0.7}


def test_box_to_mask_uses_pixel_centres_and_clips() -> None:
    m = M.box_to_mask((0.5, 1, 2, 2), 5, 4)  # centres 0.5 and 1.5 lie in [0.5, 2.5)
    assert m[1:3, 0:2].all() and m.sum() == 4
    assert M.box_to_mask((3, 3, 10, 10), 5, 4).sum() == 2  # clipped at the image border


def test_iou_matrix_matches_scalar_iou() -> None:
    rng = np.random.default_rng(0)
    a = [tuple(v) for v in rng.uniform(1, 50, (5, 4))]
    b = [tuple(v) for v in rng.uniform(1, 50, (3, 4))] + [(0, 0, 0, 0)]
    m = M.iou_matrix(a, b)
    assert m.shape == (5, 4)
    for i, p in enumerate(a):
        for j, g in enumerate(b):
            assert m[i, j] == approx(M.box_iou(p, g))
    assert M.iou_matrix([], b).shape == (0, 4)


# -- scored boxes: precision / recall / AP --------------------------------------------------
def test_precision_recall_duplicates_are_false_positives() -> None:
    g = (0, 0, 10, 10)
    assert M.precision_recall([g, g], [g], 0.5) == (0.5, 1.0)
    assert M.precision_recall([], [g]) == (0.0, 0.0)
    assert M.precision_recall([(0, 0, 10, 16)], [g]) == (1.0, 1.0)  # IoU 0.625


def test_ap_false_positive_ranked_first() -> None:
    g = (0, 0, 10, 10)
    preds = [ScoredBox(20, 20, 5, 5, 0.95), ScoredBox(0, 0, 10, 10, 0.9)]
    # ranks: FP (P=0, R=0), TP (P=1/2, R=1) -> AP = 1 * 1/2 at every threshold
    assert M.average_precision(preds, [g], 0.5) == approx(0.5)
    assert M.image_ap(preds, [g]) == approx({"image_ap@[.5:.95]": 0.5, "image_ap@.5": 0.5, "image_ap@.75": 0.5})


def test_ap_across_thresholds() -> None:
    g = (0, 0, 10, 10)
    ap = M.coco_ap([(0, 0, 10, 16)], [g])  # IoU 0.625: a hit at 0.50, 0.55, 0.60 only
    assert ap["image_ap@.5"] == 1.0 and ap["image_ap@.75"] == 0.0
    assert ap["image_ap@[.5:.95]"] == approx(0.3)


def test_ap_two_ground_truths_all_point_interpolation() -> None:
    a, b = (0, 0, 10, 10), (50, 50, 10, 10)
    preds = [ScoredBox(*a, score=0.9), ScoredBox(100, 100, 5, 5, score=0.8), ScoredBox(*b, score=0.7)]
    # TP, FP, TP: P = 1, 1/2, 2/3; R = 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    assert M.average_precision(preds, [a, b], 0.5) == approx(0.5 + 1 / 3)
    assert M.average_precision(preds, [], 0.5) == 0.0


def test_image_metrics_uses_top_scored_box() -> None:
    g = (5, 5, 10, 10)
    preds = [ScoredBox(40, 40, 5, 5, 0.1), ScoredBox(0, 0, 10, 10, 0.9)]
    values = M.image_metrics(preds, g, 50, 50)
    assert values["iou"] == approx(1 / 7) and values["iobb"] == approx(0.25)
    assert values["precision@0.5"] == 0.0 and values["recall@0.5"] == 0.0
    assert values["colloc@0.1"] == 1.0 and values["colloc@0.3"] == 0.0
    assert list(values) == list(M.METRIC_KEYS)


# -- masks, pointing game --------------------------------------------------------------------
def test_mask_iou_and_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :] = True  # 8 pixels
    b[1:3, :] = True  # 8 pixels, 4 shared
    assert M.mask_iou(a, b) == approx(4 / 12)
    assert M.mask_dice(a, b) == approx(8 / 16)
    empty = np.zeros((4, 4), bool)
    assert M.mask_iou(empty, empty) == 0.0 and M.mask_dice(empty, b) == 0.0
    with pytest.raises(UsageError):
        M.mask_iou(a, np.zeros((3, 3), bool))


def test_pointing_game() -> None:
    cam = np.zeros((20, 20))
    cam[5, 7] = 1.0  # centre (7.5, 5.5)
    assert M.pointing_game_hit(cam, (5, 5, 5, 5))
    assert not M.pointing_game_hit(cam, (0, 0, 5, 5))
    assert M.pointing_game_hit(cam, (0, 0, 5, 5), tolerance=3)  # distance hypot(2.5, 0.5)
    assert not M.pointing_game_hit(np.zeros((20, 20)), (0, 0, 20, 20))  # no maximum
    assert not M.pointing_game_hit(np.full((4, 4), np.nan), (0, 0, 4, 4))
    assert M.hit_rate([True, False, True, True]) == 0.75 and M.hit_rate([]) == 0.0


# -- dataset level ----------------------------------------------------------------------------
def test_t_iobb_and_t_iou_accuracy_per_class() -> None:
    table = M.t_iobb_accuracy({"Mass": [0.3, 0.6, 0.05], "Nodule": [1.0]})
    assert table["Mass"] == approx({0.1: 2 / 3, 0.25: 2 / 3, 0.5: 1 / 3, 0.75: 0.0, 0.9: 0.0})
    assert table["Nodule"] == {0.1: 1.0, 0.25: 1.0, 0.5: 1.0, 0.75: 1.0, 0.9: 1.0}
    assert M.class_mean(table)[0.5] == approx((1 / 3 + 1) / 2)
    iou = M.t_iou_accuracy({"Mass": [0.1, 0.45]})  # strictly greater than T
    assert list(iou["Mass"]) == list(M.IOU_THRESHOLDS)
    assert iou["Mass"][0.1] == 0.5 and iou["Mass"][0.4] == 0.5 and iou["Mass"][0.5] == 0.0
    assert M.threshold_accuracy([], (0.5,)) == {0.5: 0.0}


def test_best_overlap_average_false_positives_mean_iou() -> None:
    g = (0, 0, 10, 10)
    far = (50, 50, 5, 5)
    assert M.best_overlap([far, (0, 0, 5, 5)], g, "iobb") == 1.0
    assert M.best_overlap([], g) == 0.0
    # image 1: one good box, one false; image 2: two false -> 3 / 2
    assert M.average_false_positives([[g, far], [far, far]], [[g], [g]], 0.25, "iobb") == 1.5
    assert M.average_false_positives([], []) == 0.0
    assert M.mean_iou([0.5, float("nan"), 1.0]) == approx(0.5)
    assert M.mean_iou([]) == 0.0
    with pytest.raises(UsageError):
        M.best_overlap([g], g, "giou")


# -- ground truth -----------------------------------------------------------------------------
def test_parse_ground_truth() -> None:
    assert M.parse_ground_truth("Cardiomegaly,277.5,459,540,301") == ("Cardiomegaly", 277.5, 459, 540, 301)
    assert M.parse_ground_truth(" Pleural Thickening , 1, 2, 3, 4 ") == ("Pleural Thickening", 1, 2, 3, 4)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("Cardiomegaly,1,2,3", "malformed"),
        ("1,2,3,4", "malformed"),
        (",1,2,3,4", "malformed"),
        ("", "malformed"),
        ("Cardiomegaly,abc,2,3,4", "x='abc' is not a number"),
        ("Cardiomegaly,1,2,3,inf", "not a finite number"),
        ("Cardiomegaly,1,2,0,4", "must be > 0"),
        ("Cardiomegaly,1,2,3,-4", "must be > 0"),
        ("Cardiomegaly,-1,2,3,4", "must be ≥ 0"),
    ],
)
def test_parse_ground_truth_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        M.parse_ground_truth(text)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_check_box_in_image() -> None:
    M.check_box_in_image((0, 0, 100, 50), 100, 50)
    with pytest.raises(UsageError, match="outside the 100x50 image"):
        M.check_box_in_image((60, 10, 50, 10), 100, 50)
    with pytest.raises(UsageError, match="ground truth"):
        M.check_box_in_image((0, 45, 10, 10), 100, 50, what="ground truth")
