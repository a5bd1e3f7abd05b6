"""COCO output (``--coco`` on analyze, score and evaluate) and dataset-level AP from pycocotools.

Hand-made cases whose AP is known, files that load in pycocotools as they are, and the three
commands on small phantoms with a random 64-px MobileNetV3: their COCO boxes must be the boxes of
their regular outputs. Also the single-image AP rename (old ``_PBBox.json`` files still read).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from xcam.interop.coco import CocoCollector, category, coco_eval, dataset_path_for, image_id

GT_A, GT_B = (10.0, 10.0, 20.0, 20.0), (60.0, 60.0, 20.0, 20.0)
MISS = (0.0, 80.0, 5.0, 5.0)


def _two_boxes(miss_score: float) -> CocoCollector:
    """One image, two Mass boxes; a perfect prediction of the first (score 0.9), a miss elsewhere."""
    c = CocoCollector(has_ground_truth=True)
    c.add_image("images/a.png", 100, 100)
    c.add_truth("images/a.png", "Mass", GT_A)
    c.add_truth("images/a.png", "Mass", GT_B)
    c.add_prediction("images/a.png", "Mass", GT_A, 0.9)
    c.add_prediction("images/a.png", "Mass", MISS, miss_score)
    return c


def _quiet_coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# -- the hand-made cases ----------------------------------------------------------------------------
def test_one_hit_of_two_boxes_gives_cocos_101_point_ap():
    # recall reaches 1/2 at precision 1 and never more: COCO's interpolated precision is 1 at the
    # 51 recall points 0, 0.01, …, 0.50 and 0 at the other 50, so AP = 51/101 at every IoU threshold
    # (VOC's all-point AP would be 0.5).
    scores = _two_boxes(miss_score=0.5).evaluate()
    assert scores.stats["AP"] == pytest.approx(51 / 101)
    assert scores.stats["AP50"] == pytest.approx(51 / 101) and scores.stats["AP75"] == pytest.approx(51 / 101)
    assert scores.stats["AR100"] == pytest.approx(0.5)
    assert scores.per_class == {"Mass": {"AP": pytest.approx(51 / 101), "AP50": pytest.approx(51 / 101)}}
    # the miss ranked first: precision 1/2 when recall reaches 1/2, so AP halves
    assert _two_boxes(miss_score=0.95).evaluate().stats["AP"] == pytest.approx(51 / 202)


def test_files_load_in_pycocotools_as_written(tmp_path: Path):
    from pycocotools.cocoeval import COCOeval

    results, dataset = _two_boxes(0.5).write(tmp_path / "preds.json")
    assert dataset == tmp_path / "preds.dataset.json" == dataset_path_for(results)
    raw = json.loads(results.read_text())
    assert isinstance(raw, list) and len(raw) == 2  # the COCO results format is a bare list
    assert raw[0]["bbox"] == list(GT_A) and raw[0]["score"] == 0.9 and raw[0]["category_id"] == category("Mass")[0]
    gt = _quiet_coco(dataset)
    (img,) = gt.dataset["images"]
    assert img == {"id": image_id("a.png"), "file_name": "a.png", "width": 100, "height": 100}
    assert [a["area"] for a in gt.dataset["annotations"]] == [400.0, 400.0]
    assert all(a["iscrowd"] == 0 for a in gt.dataset["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(results))  # straight from the file
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(51 / 101)
    assert coco_eval(dataset, results).stats["AP"] == pytest.approx(ev.stats[0])


def test_no_prediction_scores_zero_and_stray_ids_are_one_line(tmp_path: Path):
    from xcam.core.errors import UsageError

    c = CocoCollector(has_ground_truth=True)
    c.add_image("b.png", 50, 50)
    c.add_truth("b.png", "Nodule", (1, 1, 5, 5))
    assert c.evaluate().stats["AP"] == 0.0  # pycocotools' loadRes cannot read an empty list: handled
    with pytest.raises(UsageError, match="not in the data set"):
        coco_eval(c.dataset(), [{"image_id": 7, "category_id": 12, "bbox": [1, 1, 2, 2], "score": 0.5}])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(UsageError, match="bad.json: not a COCO data set"):
        coco_eval(bad, [])


def test_ids_are_stable_and_names_that_clash_use_the_path():
    assert category("Infiltrate") == category("infiltration") == (3, "Infiltration")
    assert category("Enlarged Cardiomediastinum") == (18, "Enlarged Cardiomediastinum")
    other = category("Tuberculosis")
    assert other[0] > 1000 and other[0] == category("tuberculosis")[0]
    c = CocoCollector()
    for path in ("x/1.dcm", "y/1.dcm", "z/2.dcm"):
        c.add_image(path, 10, 10)
    names = {im["file_name"]: im["id"] for im in c.dataset()["images"]}
    assert names == {"x/1.dcm": image_id("x/1.dcm"), "y/1.dcm": image_id("y/1.dcm"), "2.dcm": image_id("2.dcm")}


# -- per-image AP: renamed, old files still read -------------------------------------------------------
def test_single_image_ap_keys_and_old_files(tmp_path: Path):
    from xcam.chain.outputs import read_box_json
    from xcam.core import metrics as M

    values = M.image_metrics([(0, 0, 10, 10)], (0, 0, 10, 10), 20, 20)
    assert values["image_ap@.5"] == 1.0 and not any(k.startswith("ap@") for k in values)
    old = {"boxes": [], "model": "m", "pathology": "Mass",
           "metrics": {"iou": 0.5, "ap@[.5:.95]": 0.3, "ap@.5": 1.0, "ap@.75": 0.0}}
    path = tmp_path / "m_Mass_PBBox.json"
    path.write_text(json.dumps(old))
    assert read_box_json(path).metrics == {"iou": 0.5, "image_ap@[.5:.95]": 0.3, "image_ap@.5": 1.0,
                                           "image_ap@.75": 0.0}
    assert M.upgrade_metric_keys({"ap@.5": 0.0, "image_ap@.5": 1.0}) == {"image_ap@.5": 1.0}


# -- the commands ---------------------------------------------------------------------------------------
SMALL_TOML = '[options.mobilenetv3]\narch = "mobilenet_v3_small"\nimg_size = 64\n'
FAST = ["--method", "gradcam", "--cam-layers", "model", "--no-aug-smooth"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from xcam.datasets.phantom import generate_phantoms

    root = tmp_path_factory.mktemp("coco_phantoms")
    generate_phantoms(root, n=8, size=96, seed=5, lesion_rate=1.0)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from xcam.datasets.phantom import CLASSES
    from xcam.nets.mobilenet import MobileNetV3

    path = tmp_path_factory.mktemp("coco_ckpt") / "random.pt"
    torch.manual_seed(0)
    model = MobileNetV3(labels=list(CLASSES), arch="mobilenet_v3_small", input_size=64, cam_layer="net.features.8")
    torch.save(model.checkpoint_object(), path)
    return path


def _boxes(entries) -> list[list[float]]:
    return [[float(e["x"]), float(e["y"]), float(e["width"]), float(e["height"])] for e in entries]


def test_analyze_coco_holds_the_boxes_of_the_box_files(xcam_cli, phantoms: Path, checkpoint: Path, tmp_path: Path):
    out, coco = tmp_path / "out", tmp_path / "preds.json"
    code, stdout, err = xcam_cli("analyze", "--input", str(phantoms / "images"), "--models",
                                 f"mobilenetv3:{checkpoint}", "--ground-truth-csv", str(phantoms / "BBox_List_2017.csv"),
                                 "--json-only", "--output-dir", str(out), "--coco", str(coco), "--quiet", *FAST)
    assert code == 0, err
    assert "COCO bbox AP (pycocotools, 8 images" in stdout
    gt = _quiet_coco(dataset_path_for(coco))
    dets = gt.loadRes(str(coco)) if json.loads(coco.read_text()) else None
    assert dets is not None
    names = {im["id"]: im["file_name"] for im in gt.dataset["images"]}
    assert sorted(names.values()) == sorted(p.name for p in (phantoms / "images").glob("*.png"))
    with open(phantoms / "BBox_List_2017.csv") as fh:
        truth = sorted((row[0], category(row[1])[0], [float(v) for v in row[2:6]]) for row in list(csv.reader(fh))[1:])
    assert sorted((names[a["image_id"]], a["category_id"], a["bbox"]) for a in gt.dataset["annotations"]) == truth
    # every finding's boxes, exactly as in its _PBBox.json, scored with its probability
    want = []
    for box_file in sorted(out.glob("*/*_PBBox.json")):
        record = json.loads(box_file.read_text())
        image = json.loads((box_file.parent / "analysis.json").read_text())["image"]
        want += [(Path(image).name, category(record["pathology"])[0], b, record["probability"])
                 for b in _boxes(record["boxes"])]
    got = [(names[d["image_id"]], d["category_id"], d["bbox"], d["score"]) for d in json.loads(coco.read_text())]
    assert want and sorted(got) == sorted(want)


def test_score_boxes_coco_holds_the_boxes_column(tmp_path: Path, phantoms: Path):
    from click.testing import CliRunner

    from xcam.cli import cli
    from xcam.score.writers import read_rows

    config = tmp_path / "plugins.toml"
    config.write_text(SMALL_TOML)
    out, coco = tmp_path / "scores.jsonl", tmp_path / "score_coco.json"
    result = CliRunner().invoke(cli, ["--config", str(config), "score", "--input", str(phantoms / "images"),
                                      "--output", str(out), "--models", "mobilenetv3,densenet121", "--random-weights",
                                      "--backend", "torch", "--boxes", "--cam-classes", "all", "--coco", str(coco)])
    assert result.exit_code == 0, result.output
    gt = _quiet_coco(dataset_path_for(coco))
    names = {im["id"]: im for im in gt.dataset["images"]}
    assert all((im["width"], im["height"]) == (96, 96) for im in names.values())  # from the headers
    want = []
    for row in read_rows(out):  # one detector: the ensemble's boxes where both models explained a class
        entries = json.loads(row["boxes"])
        models_of: dict[str, set[str]] = {}
        for e in entries:
            models_of.setdefault(e["label"], set()).add(e["model"])
        for e in entries:
            if e["model"] == ("ensemble" if len(models_of[e["label"]]) > 1 else next(iter(models_of[e["label"]]))):
                want.append((Path(row["path"]).name, category(e["label"])[0], _boxes([e])[0], e["probability"]))
    got = [(names[d["image_id"]]["file_name"], d["category_id"], d["bbox"], d["score"]) for d in json.loads(coco.read_text())]
    assert want and sorted(got) == sorted(want)
    assert {d["model"] for d in json.loads(coco.read_text())} <= {"ensemble", "densenet121"}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.loadRes(str(coco))
    bad = CliRunner().invoke(cli, ["score", "--input", str(phantoms / "images"), "--output", str(tmp_path / "x.csv"),
                                   "--coco", str(coco)])
    assert bad.exit_code == 2 and "--coco needs --boxes" in bad.output


def test_evaluate_coco_writes_truth_and_predictions_and_prints_ap(xcam_cli, phantoms: Path, checkpoint: Path,
                                                                  tmp_path: Path):
    preds, truth, out = tmp_path / "eval_preds.json", tmp_path / "gt.json", tmp_path / "eval"
    code, stdout, err = xcam_cli("evaluate", "--imgpath", str(phantoms / "images"), "--bbox-csv",
                                 str(phantoms / "BBox_List_2017.csv"), "--weights", str(checkpoint), "--quiet",
                                 "--montage", "0", "--output", str(out), "--coco", str(preds), "--coco-gt", str(truth),
                                 *FAST)
    assert code == 0, err
    assert not dataset_path_for(preds).exists()  # --coco-gt names the data set file
    saved = json.loads((out / "results.json").read_text())
    gt = _quiet_coco(truth)
    names = {im["id"]: im["file_name"] for im in gt.dataset["images"]}
    assert sorted((names[a["image_id"]], a["bbox"]) for a in gt.dataset["annotations"]) == sorted(
        (r["image"], r["gt"]) for r in saved["records"])
    want = {(r["image"], category(r["label"])[0], tuple(p[:4])) for r in saved["records"] for p in r["preds"]}
    got = [(names[d["image_id"]], d["category_id"], tuple(d["bbox"])) for d in json.loads(preds.read_text())]
    assert len(got) == len(set(got)) and set(got) == want  # each finding's boxes once
    recorded = json.loads((out / "coco_ap.json").read_text())
    again = coco_eval(truth, preds)  # every class is predicted by the model: the same numbers from the files
    assert recorded["stats"]["AP"] == pytest.approx(again.stats["AP"])
    assert f"AP {again.stats['AP']:.3f}" in stdout and "COCO bbox AP (pycocotools" in stdout
