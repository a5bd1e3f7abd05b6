"""One chain: the same image, models and settings give the same boxes from ``xcam analyze``,
``xcam score --boxes``, ``xcam evaluate``'s per-box record and the UI's engine.

Two random-weight models (seeded, so every command builds the same weights): densenet121, whose
Grad-CAM comes from its forward pass (in-graph), and mobilenetv3, whose LayerCAM with test-time
augmentation runs through the CAM plugin on fused layers (the default profile's choices), on a
non-square image (padding to undo), with a ground-truth box so that evaluate scores the class.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import run_xcam

MODELS = "densenet121,mobilenetv3"
TARGET = "Mass"
TRUTH = (300.0, 150.0, 180.0, 140.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    import cv2

    root = tmp_path_factory.mktemp("equivalence")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:480, 0:640]
    img = 110 + 50 * np.sin(xx / 37.0) * np.cos(yy / 51.0) + rng.normal(0, 10, (480, 640))
    img[200:260, 350:430] += 60  # a brighter blob inside the truth box
    cv2.imwrite(str(images / "case.png"), np.clip(img, 0, 255).astype(np.uint8))
    boxes = root / "BBox_List_2017.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                     f"case.png,{TARGET},{','.join(str(v) for v in TRUTH)}\n")
    return root


def rounded(box) -> tuple[float, ...]:
    return tuple(round(float(v), 2) for v in box)


@pytest.fixture(scope="module")
def analyzed(case, tmp_path_factory):
    """``xcam analyze``'s boxes: {model or "consolidated": (x, y, w, h)} for the target class."""
    out = tmp_path_factory.mktemp("analyze")
    code, _, err = _run(["analyze", "--input", str(case / "images" / "case.png"), "--models", MODELS,
                         "--random-weights", "--target-class", TARGET, "--json-only", "--output-dir", str(out)])
    assert code == 0, err
    report = json.loads((out / "case" / "analysis.json").read_text())
    boxes = {m["model"]: rounded(box_of(m["findings"][0]["box"])) for m in report["models"]}
    (consolidated,) = report["consolidated"]
    boxes["consolidated"] = rounded(box_of(consolidated["box"]))
    return boxes


def _run(args: list[str]) -> tuple[int, str, str]:
    """``xcam`` in-process with its own capture (a module-scoped fixture has no capsys)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    from xcam.cli import main

    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def box_of(entry) -> tuple[float, float, float, float]:
    return (entry["x"], entry["y"], entry["width"], entry["height"])


def test_every_model_and_the_consolidation_localized(analyzed):
    assert set(analyzed) == {"densenet121", "mobilenetv3", "consolidated"}
    for box in analyzed.values():
        assert box[2] > 0 and box[3] > 0 and box[0] + box[2] <= 640 and box[1] + box[3] <= 480


def test_score_gives_the_same_boxes(case, analyzed, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    code, _, err = run_xcam(["score", "--input", str(case / "images"), "--output", str(out), "--models", MODELS,
                             "--random-weights", "--backend", "torch", "--boxes", "--cam-classes", "all"], capsys)
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    boxes = row["boxes"] if isinstance(row["boxes"], list) else json.loads(row["boxes"])
    mine = {b["model"]: rounded(box_of(b)) for b in boxes if b["label"] == TARGET}
    assert mine["densenet121"] == analyzed["densenet121"]
    assert mine["mobilenetv3"] == analyzed["mobilenetv3"]
    assert mine["ensemble"] == analyzed["consolidated"]


def test_evaluate_records_the_same_box(case, analyzed, tmp_path, capsys):
    for models, expected in (("densenet121", analyzed["densenet121"]), (MODELS, analyzed["consolidated"])):
        out = tmp_path / models.replace(",", "+")
        code, _, err = run_xcam(["evaluate", "--imgpath", str(case / "images"), "--bbox-csv",
                                 str(case / "BBox_List_2017.csv"), "--models", models, "--random-weights",
                                 "--output", str(out), "--quiet", "--montage", "0"], capsys)
        assert code == 0, err
        with open(out / "per_box.csv", newline="") as fh:
            (record,) = list(csv.DictReader(fh))
        got = rounded([record["pred_x"], record["pred_y"], record["pred_w"], record["pred_h"]])
        assert got == expected, models


def test_the_ui_engine_gives_the_same_boxes(case, analyzed):
    from xcam.core.config import XcamConfig
    from xcam.core.imageio import load_image
    from xcam.core.manager import get_plugin_manager
    from xcam.ui import engine

    pm = get_plugin_manager(XcamConfig())
    specs = [engine.ModelSpec(name, pm.classifier(name).default.name) for name in MODELS.split(",")]
    chain = engine.build(pm, specs, engine.Options().settings(pm), TARGET, store=None, device="cpu",
                         random_init=True)
    result = engine.analyze(chain, load_image(case / "images" / "case.png"))
    mine = {r.model: rounded(box_of(vars(r.findings[0].box))) for r in result.results}
    mine["consolidated"] = rounded(box_of(vars(result.consolidated[0].box)))
    assert mine == analyzed


def test_the_profile_reaches_every_command(case, analyzed, tmp_path, capsys):
    """A different profile changes the boxes the same way everywhere (here: Otsu masks)."""
    out = tmp_path / "legacy"
    code, _, err = run_xcam(["analyze", "--input", str(case / "images" / "case.png"), "--models", "densenet121",
                             "--random-weights", "--target-class", TARGET, "--json-only", "--profile", "legacy",
                             "--output-dir", str(out)], capsys)
    assert code == 0, err
    legacy = rounded(box_of(json.loads((out / "case" / "analysis.json").read_text())["models"][0]["findings"][0]["box"]))
    assert legacy != analyzed["densenet121"]  # Otsu and half-maximum masks differ on this image
    scores = tmp_path / "legacy.csv"
    code, _, err = run_xcam(["score", "--input", str(case / "images"), "--output", str(scores), "--models",
                             "densenet121", "--random-weights", "--backend", "torch", "--boxes", "--cam-classes",
                             "all", "--profile", "legacy"], capsys)
    assert code == 0, err
    with open(scores, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    (entry,) = [b for b in json.loads(row["boxes"]) if b["label"] == TARGET]
    assert rounded(box_of(entry)) == legacy
