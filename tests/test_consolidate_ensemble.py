"""Consolidation of several models' masks, ensemblers, and ``xcam consolidate`` / ``xcam ensemble``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_xcam

import xcam.plugins.bbox_strategies as bbox_strategies
import xcam.plugins.cam_methods as cam_methods
import xcam.plugins.ensemblers as ensemblers
import xcam.plugins.mask_extractors as mask_extractors
from xcam.commands.consolidate import combine_masks
from xcam.commands.ensemble import parse_weights
from xcam.core import render
from xcam.core.errors import UsageError
from xcam.core.manager import XcamPluginManager

H, W = 60, 80


@pytest.fixture
def pm() -> XcamPluginManager:
    manager = XcamPluginManager()
    for module in (mask_extractors, bbox_strategies, ensemblers, cam_methods):
        manager.load_object(module, name=module.__name__.rsplit(".", 1)[-1])
    return manager


def run_cli(args: list[str], pm: XcamPluginManager, monkeypatch, capsys) -> tuple[int, str, str]:
    return run_xcam(args, capsys, monkeypatch, pm)


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code != 0
    assert fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def is_colour(pixel, colour) -> bool:
    return tuple(int(v) for v in pixel) == tuple(colour)


def has_legend_entry(png: np.ndarray, colour, rows: int = 100, cols: int = 60) -> bool:
    """The legend sits in the lower-left corner: a swatch line of ``colour`` there."""
    corner = png[-rows:, :cols]
    return bool((corner == np.array(colour, np.uint8)).all(axis=-1).any())


def box_of(report: dict) -> tuple[float, float, float, float]:
    b = report["box"]
    return (b["x"], b["y"], b["width"], b["height"])


# -- consolidation ----------------------------------------------------------------------------
def rect(shape, rows, cols) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


A = rect((H, W), slice(10, 30), slice(10, 40))
B = rect((H, W), slice(20, 40), slice(20, 50))
C_SMALL = rect((H // 2, W // 2), slice(10, 20), slice(10, 20))  # [20:40, 20:40] at full size


def test_combine_masks_methods() -> None:
    c = rect((H, W), slice(20, 40), slice(20, 40))
    union = combine_masks([A, B, c], "merge-masking")
    assert union.sum() == (A | B | c).sum()
    assert np.array_equal(combine_masks([A, B, c], "intersection"), A & B & c)
    majority = combine_masks([A, B, c], "majority")  # in at least 2 of 3
    assert np.array_equal(majority, rect((H, W), slice(20, 40), slice(20, 40)))
    assert not combine_masks([A, B], "majority")[10, 10]  # 1 of 2 is not more than half
    assert combine_masks([A, B], "majority").sum() == (A & B).sum()
    with pytest.raises(UsageError):
        combine_masks([], "majority")


def write_sources(folder: Path, image: np.ndarray | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        render.write_png(folder / "densenet121_Mass_P3.png", render.mask_png(A)),
        render.write_png(folder / "resnet50_Mass_P3.png", render.mask_png(B)),
        render.write_png(folder / "mobilenetv3_Mass_P3.png", render.mask_png(C_SMALL)),
    ]
    render.write_png(folder / "_input_image_.png", np.full((H, W), 80, np.uint8) if image is None else image)
    return paths


@pytest.mark.parametrize(
    "method, expected",
    [
        ("merge-masking", (10, 10, 40, 30)),
        ("intersection", (20, 20, 20, 10)),
        ("majority", (20, 20, 20, 20)),
    ],
)
def test_consolidate_command(tmp_path: Path, pm, monkeypatch, capsys, method, expected) -> None:
    paths = write_sources(tmp_path)
    args = ["consolidate", "--input-sources", *map(str, paths), "--rule", method, "--target-class", "Mass",
            "--ground-truth", "Mass,20,20,20,20"]
    code, out, err = run_cli(args, pm, monkeypatch, capsys)
    assert code == 0, err
    assert "note:" not in err
    report = json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())
    assert box_of(report) == expected
    assert report["rule"] == method and [s["model"] for s in report["sources"]] == ["densenet121", "resnet50", "mobilenetv3"]
    assert report["sources"][2]["box"]["x"] == 20  # the half-size mask is scaled to the image grid
    gt_area = 400
    inter = max(0, min(expected[0] + expected[2], 40) - max(expected[0], 20)) * max(0, min(expected[1] + expected[3], 40) - max(expected[1], 20))
    assert report["metrics"]["iou"] == pytest.approx(inter / (expected[2] * expected[3] + gt_area - inter))
    mask = render.read_mask(tmp_path / "Mass_consolidated.png")
    assert mask.shape == (H, W)
    assert render.read_png(tmp_path / "Mass_consolidated_bbox.png", color=True).shape == (H, W, 3)


def test_consolidate_mean_cam_uses_saved_cams(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    paths = write_sources(tmp_path)
    hot = np.zeros((H, W), np.float32)
    hot[40:58, 45:78] = 1.0  # 594 px, larger than the fallback mask's 400
    np.save(tmp_path / "densenet121_Mass_cam.npy", hot)
    np.save(tmp_path / "resnet50_Mass_cam.npy", hot)  # mobilenetv3 falls back to its mask (1/3 weight)
    args = ["consolidate", *map(str, paths), "--input-sources", str(paths[0]), "--rule", "mean-cam",
            "--target-class", "Mass", "--mask", "threshold", "--output-dir", str(tmp_path / "out")]
    code, _, err = run_cli(args, pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "Mass_consolidated_bbox.json").read_text())
    assert box_of(report) == (45, 40, 33, 18)
    assert report["mask_extractor"] == "threshold"
    assert [s["cam"] is not None for s in report["sources"]] == [True, True, False]
    assert report["rule"] == "mean-cam" and "pointing_game" not in report.get("metrics", {})
    assert np.load(tmp_path / "out" / "Mass_consolidated_cam.npy").shape == (H, W)


def test_mean_cam_levels(tmp_path: Path) -> None:
    from xcam.commands.consolidate import load_sources, mean_cam

    paths = write_sources(tmp_path)
    hot = np.zeros((H, W), np.float32)
    hot[40:58, 45:78] = 1.0
    np.save(tmp_path / "densenet121_Mass_cam.npy", hot)
    np.save(tmp_path / "resnet50_Mass_cam.npy", hot[::2, ::2].copy())  # a coarser CAM is resized
    cam = mean_cam(load_sources(list(map(str, paths)), "Mass"))
    assert cam.shape == (H, W)
    # mean: 2/3 on the CAMs' hot spot, 1/3 on the fallback mask [20:40, 20:40]; normalized -> 1 and 0.5
    assert cam[45, 60] == pytest.approx(1.0) and cam[30, 30] == pytest.approx(0.5) and cam[5, 5] == 0.0


def test_consolidate_refuses_different_images(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    first = write_sources(tmp_path / "a")
    other = np.zeros((H, W), np.uint8)
    other[:, : W // 2] = 255
    second = write_sources(tmp_path / "b", image=other)
    args = ["consolidate", "--input-sources", str(first[0]), "--input-sources", str(second[1]), "--target-class", "Mass"]
    code, _, err = run_cli(args, pm, monkeypatch, capsys)
    assert_one_line_error(code, err, "sources come from different images")
    third = write_sources(tmp_path / "c", image=np.full((H, H), 80, np.uint8))
    code, _, err = run_cli([*args[:3], "--input-sources", str(third[0]), "--target-class", "Mass"], pm, monkeypatch, capsys)
    assert_one_line_error(code, err, "differ in aspect ratio")
    same = write_sources(tmp_path / "d")  # an identical copy of the image is fine
    code, _, err = run_cli([*args[:3], "--input-sources", str(same[1]), "--target-class", "Mass"], pm, monkeypatch, capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "make_args, fragment",
    [
        (lambda p, t: ["--input-sources", str(t / "missing_Mass_P3.png"), "--target-class", "Mass"], "file not found"),
        (lambda p, t: ["--input-sources", str(p[0]), "--target-class", "Nodule"], "not the target class 'Nodule'"),
        (lambda p, t: ["--input-sources", str(p[0]), "--target-class", "Mass", "--ground-truth", "Mass,1,2"], "malformed"),
        (lambda p, t: ["--input-sources", str(p[0]), "--target-class", "Mass", "--ground-truth", "Mass,70,50,20,20"],
         "outside the 80x60 image"),
        (lambda p, t: ["--target-class", "Mass"], "at least one mask"),
        (lambda p, t: ["--input-sources", str(t / "_input_image_.png"), "--target-class", "Mass"], "not a binary mask"),
    ],
)
def test_consolidate_bad_inputs(tmp_path: Path, pm, monkeypatch, capsys, make_args, fragment) -> None:
    paths = write_sources(tmp_path)
    render.write_png(tmp_path / "_input_image_.png", np.tile(np.arange(W, dtype=np.uint8), (H, 1)))
    code, _, err = run_cli(["consolidate", *make_args(paths, tmp_path)], pm, monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)


def test_consolidate_old_method_spelling_prints_one_notice(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    paths = write_sources(tmp_path)
    code, _, err = run_cli(["consolidate", "--input-sources", *map(str, paths[:2]), "--method", "intersection",
                            "--target-class", "Mass"], pm, monkeypatch, capsys)
    assert code == 0, err
    assert err.strip() == "note: --method is now --rule (the old spelling still works)"
    assert json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())["rule"] == "intersection"
    code, _, err = run_cli(["consolidate", str(paths[0]), "--method", "intersection", "--rule", "majority",
                            "--target-class", "Mass"], pm, monkeypatch, capsys)
    assert_one_line_error(code, err, "--method 'intersection' and --rule 'majority' disagree")
    code, out, _ = run_cli(["consolidate", "--help"], pm, monkeypatch, capsys)
    assert code == 0 and "--rule" in out and "--profile" in out and "--method" not in out


BIG_H, BIG_W = 300, 400


def test_consolidate_colours_and_legend(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    a = rect((BIG_H, BIG_W), slice(30, 80), slice(220, 300))
    b = rect((BIG_H, BIG_W), slice(50, 100), slice(260, 340))
    paths = [render.write_png(tmp_path / "densenet121_Mass_P3.png", render.mask_png(a)),
             render.write_png(tmp_path / "resnet50_Mass_P3.png", render.mask_png(b))]
    render.write_png(tmp_path / "_input_image_.png", np.full((BIG_H, BIG_W), 90, np.uint8))
    code, _, err = run_cli(["consolidate", *map(str, paths), "--target-class", "Mass",
                            "--ground-truth", "Mass,100,150,80,60"], pm, monkeypatch, capsys)
    assert code == 0, err
    assert box_of(json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())) == (220, 30, 120, 70)
    png = render.read_png(tmp_path / "Mass_consolidated_bbox.png", color=True)
    assert is_colour(png[99, 230], render.PREDICTION)  # the consolidated box's bottom edge
    assert is_colour(png[79, 230], render.PALETTE[0])  # densenet121's bottom edge, inside it
    assert is_colour(png[90, 260], render.PALETTE[1])  # resnet50's left edge
    assert is_colour(png[150, 140], render.TRUTH)  # the ground truth's top edge
    for colour in (render.PREDICTION, render.TRUTH, render.PALETTE[0], render.PALETTE[1]):
        assert has_legend_entry(png, colour)


WORK_H, WORK_W = 168, 224  # the work grid of a 400 x 300 image at 224 px


def write_xcam_folder(folder: Path, models=("densenet121", "resnet50"), size=(BIG_W, BIG_H)) -> list[Path]:
    """A result folder as xcam writes it: P3 masks at the original size, CAMs in the work grid, box files
    with recorded boxes (deliberately not what the masks give) and metadata.json with the image size."""
    from xcam.chain.outputs import box_report
    from xcam.core.types import ScoredBox

    folder.mkdir(parents=True, exist_ok=True)
    cam = np.zeros((WORK_H, WORK_W), np.float32)
    cam[20:40, 112:168] = 1.0  # original: x 200..300, y 35.7..71.4
    paths = []
    for i, model in enumerate(models):
        np.save(folder / f"{model}_Mass_cam.npy", cam.astype(np.float16))
        mask = rect((size[1], size[0]), slice(40, 70), slice(205, 295))
        paths.append(render.write_png(folder / f"{model}_Mass_P3.png", render.mask_png(mask)))
        recorded = [ScoredBox(201.5 + i, 36.25, 97.0, 35.5, 0.9)]
        record = {"model": model, "pathology": "Mass", "probability": 0.6 + 0.1 * i, "strategy": "largest",
                  "mask_extractor": "threshold", "peak": [250.0, 50.0]}
        record.update(box_report(recorded, size[0], size[1], [], "Mass", None))
        (folder / f"{model}_Mass_PBBox.json").write_text(json.dumps(record))
    (folder / "metadata.json").write_text(json.dumps({"image": "x.png", "image_size": list(size), "models": {
        m: {"predictions": {"Mass": 0.6}, "cams": {"Mass": f"{m}_Mass_cam.npy"}} for m in models}}))
    return paths


def test_consolidate_combines_work_grid_cams_and_reuses_recorded_boxes(tmp_path: Path, pm, monkeypatch, capsys
                                                                       ) -> None:
    paths = write_xcam_folder(tmp_path)
    code, _, err = run_cli(["consolidate", *map(str, paths), "--rule", "ensembler", "--target-class", "mass",
                            "--ground-truth", "Mass,200,36,100,36"], pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())
    assert report["rule"] == "ensembler:mean" and report["target_class"] == "Mass"
    assert report["grid"] == {"width": WORK_W, "height": WORK_H}
    assert report["image_size"] == {"width": BIG_W, "height": BIG_H}  # from the box files / metadata.json
    assert box_of(report) == pytest.approx((200, 20 * BIG_H / WORK_H, 100, 20 * BIG_H / WORK_H))
    assert report["metrics"]["pointing_game"] == 1.0 and report["probability"] == pytest.approx(0.65)
    assert [s["boxes_from"] for s in report["sources"]] == ["recorded", "recorded"]
    assert [s["box"]["x"] for s in report["sources"]] == [201.5, 202.5]  # exactly as recorded
    assert np.load(tmp_path / "Mass_consolidated_cam.npy").shape == (WORK_H, WORK_W)
    assert render.read_mask(tmp_path / "Mass_consolidated.png").shape == (BIG_H, BIG_W)

    code, _, err = run_cli(["consolidate", *map(str, paths), "--target-class", "Mass", "--strategy", "tight"],
                           pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())
    assert [s["boxes_from"] for s in report["sources"]] == ["mask", "mask"]
    assert box_of(report) == (205, 40, 90, 30) and report["sources"][0]["box"]["x"] == 205


def test_consolidate_mask_from_elsewhere_with_cam_of_another_resolution(tmp_path: Path, pm, monkeypatch, capsys
                                                                         ) -> None:
    paths = write_sources(tmp_path)
    hot = np.zeros((H * 3, W * 3), np.float32)  # finer than the masks; resized to the largest CAM grid
    hot[120:174, 135:234] = 1.0
    np.save(tmp_path / "densenet121_Mass_cam.npy", hot)
    np.save(tmp_path / "resnet50_Mass_cam.npy", hot[::3, ::3].copy())
    code, _, err = run_cli(["consolidate", *map(str, paths[:2]), "--rule", "mean-cam", "--target-class", "Mass"],
                           pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())
    assert report["grid"] == {"width": W * 3, "height": H * 3} and report["image_size"] == {"width": W, "height": H}
    assert box_of(report) == pytest.approx((45, 40, 33, 18), abs=1)


def test_consolidate_refuses_sources_recording_different_sizes(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    first = write_xcam_folder(tmp_path / "a", models=("densenet121",))
    second = write_xcam_folder(tmp_path / "b", models=("resnet50",), size=(800, 600))
    code, _, err = run_cli(["consolidate", str(first[0]), str(second[0]), "--target-class", "Mass"],
                           pm, monkeypatch, capsys)
    assert_one_line_error(code, err, "sources come from different images")


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda t: (t / "densenet121_Mass_cam.npy").write_bytes(b"not numpy"), "densenet121_Mass_cam.npy: not a NumPy"),
        (lambda t: np.save(t / "densenet121_Mass_cam.npy", np.zeros((10, 10), np.float32)), "differ in aspect ratio"),
        (lambda t: (t / "densenet121_Mass_PBBox.json").write_text('{"model": "x"}'),
         "densenet121_Mass_PBBox.json: not an xcam box file"),
        (lambda t: (t / "densenet121_Mass_PBBox.json").write_text("{oops"),
         "densenet121_Mass_PBBox.json: not valid JSON"),
        (lambda t: (t / "metadata.json").write_text('{"image_size": "big", "models": {}}'),
         "metadata.json: image_size"),
    ],
)
def test_consolidate_bad_recorded_files(tmp_path: Path, pm, monkeypatch, capsys, damage, fragment) -> None:
    paths = write_xcam_folder(tmp_path)
    if "metadata" in fragment:
        (tmp_path / "densenet121_Mass_PBBox.json").unlink()
        (tmp_path / "resnet50_Mass_PBBox.json").unlink()
    damage(tmp_path)
    code, _, err = run_cli(["consolidate", *map(str, paths), "--rule", "mean-cam", "--target-class", "Mass"],
                           pm, monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)


# -- ensemblers --------------------------------------------------------------------------------
PER_MODEL = [
    {"Mass": 0.2, "Nodule": 0.4, "": 0.99},
    {"Nodule": 0.8, "Effusion": 0.1, "Mass": 0.6},  # another order
    {"Effusion": 0.5},
]


def test_mean_and_max_by_label_over_union(pm) -> None:
    mean = pm.ensembler("mean").combine_probabilities(PER_MODEL)
    assert list(mean) == ["Mass", "Nodule", "Effusion"]
    assert mean == pytest.approx({"Mass": 0.4, "Nodule": 0.6, "Effusion": 0.3})
    assert pm.ensembler("max").combine_probabilities(PER_MODEL) == {"Mass": 0.6, "Nodule": 0.8, "Effusion": 0.5}


def test_weighted_renormalizes_over_models_with_the_label(pm) -> None:
    weighted = pm.ensembler("weighted").combine_probabilities(PER_MODEL, [0.5, 0.3, 0.2])
    assert weighted["Mass"] == pytest.approx((0.5 * 0.2 + 0.3 * 0.6) / 0.8)
    assert weighted["Effusion"] == pytest.approx((0.3 * 0.1 + 0.2 * 0.5) / 0.5)
    assert pm.ensembler("weighted").combine_probabilities(PER_MODEL) == pytest.approx(
        pm.ensembler("mean").combine_probabilities(PER_MODEL))
    with pytest.raises(UsageError, match="2 weights given for 3 models"):
        ensemblers.weighted_probabilities(PER_MODEL, [1, 1])
    with pytest.raises(UsageError):
        ensemblers.weighted_probabilities(PER_MODEL, [1, -1, 1])


def test_cam_ensembles() -> None:
    a = np.array([[0.0, 1.0], [0.5, 0.5]])
    b = np.array([[1.0, 1.0], [0.0, 0.5]])
    assert ensemblers.mean_cams([a, b]) == pytest.approx(np.array([[1 / 3, 1.0], [0.0, 1 / 3]]))  # (.5, 1, .25, .5)
    assert ensemblers.max_cams([a, b]) == pytest.approx(np.array([[1.0, 1.0], [0.0, 0.0]]))  # (1,1,.5,.5)
    w = ensemblers.weighted_cams([a, b], [3, 1])  # (0.25, 1, 0.375, 0.5)
    assert w == pytest.approx((np.array([[0.25, 1.0], [0.375, 0.5]]) - 0.25) / 0.75)
    assert not ensemblers.mean_cams([np.ones((3, 3))]).any()  # constant -> zeros
    product = ensemblers.product_cams([a, b])  # sqrt: (0, 1, 0, .5) -> high only where both are
    assert product == pytest.approx(np.array([[0.0, 1.0], [0.0, 0.5]]), abs=2e-3)
    with pytest.raises(UsageError, match="one grid"):
        ensemblers.mean_cams([a, np.zeros((3, 3))])


def test_parse_weights() -> None:
    assert parse_weights("0.6,0.4", ["a", "b"]) == [0.6, 0.4]
    assert parse_weights("b=1, a=3", ["a", "b"]) == [3.0, 1.0]
    assert parse_weights(None, ["a"]) is None
    for bad in ("0.6", "x,y", "a=1,c=2", "0,0"):
        with pytest.raises(UsageError):
            parse_weights(bad, ["a", "b"])


# -- xcam ensemble -----------------------------------------------------------------------------
def write_metadata(folder: Path, image: str = "images/00000001_000.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cam1 = np.zeros((H, W), np.float32)
    cam1[10:30, 10:40] = 1.0
    cam2 = np.zeros((H // 2, W // 2), np.float32)  # another grid, same aspect
    cam2[5:15, 5:20] = 1.0
    np.save(folder / "densenet121_Mass_cam.npy", cam1)
    np.save(folder / "cams_resnet.npy", cam2)
    render.write_png(folder / "_input_image_.png", np.full((H, W), 60, np.uint8))
    data = {
        "image": image,
        "models": {
            "densenet121": {"weights": "densenet121-res224-nih", "predictions": {"Mass": 0.2, "Nodule": 0.4, "": 0.5}},
            "resnet50": {"weights": "resnet50-res512-all", "predictions": {"Nodule": 0.8, "Mass": 0.6},
                         "cams": {"Mass": "cams_resnet.npy"}},
        },
    }
    path = folder / "metadata.json"
    path.write_text(json.dumps(data))
    return path


def test_ensemble_command(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    write_metadata(tmp_path / "img")
    args = ["ensemble", "--input-dir", str(tmp_path / "img"), "--ensembler", "weighted", "--model-weights", "0.75,0.25",
            "--target-class", "mass", "--mask", "threshold", "--ground-truth", "Mass,10,10,30,20"]
    code, out, err = run_cli(args, pm, monkeypatch, capsys)
    assert code == 0, err
    assert "note:" not in err
    report = json.loads((tmp_path / "img" / "ensemble.json").read_text())
    assert report["predictions"] == pytest.approx({"Mass": 0.3, "Nodule": 0.5})
    assert report["model_weights"] == {"densenet121": 0.75, "resnet50": 0.25}
    target = report["target"]
    assert target["class"] == "Mass" and target["cam_models"] == ["densenet121", "resnet50"]
    assert (target["box"]["x"], target["box"]["y"], target["box"]["width"], target["box"]["height"]) == (10, 10, 30, 20)
    assert target["metrics"]["iou"] == pytest.approx(1.0)
    for name in ("ensemble_Mass_P0.png", "ensemble_Mass_P3.png", "ensemble_Mass_PBBox.png", "ensemble_Mass_cam.npy"):
        assert (tmp_path / "img" / name).is_file()
    assert np.load(tmp_path / "img" / "ensemble_Mass_cam.npy").shape == (H, W)
    assert report["ensembler"] == "weighted" and target["image_size"] == {"width": W, "height": H}
    assert "weighted of 2 models" in out


def test_ensemble_across_files(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    first = write_metadata(tmp_path / "a")
    second = tmp_path / "b" / "metadata.json"
    second.parent.mkdir()
    second.write_text(json.dumps({"image": "other/00000001_000.png",
                                  "models": {"jfhealthcare": {"predictions": {"Effusion": 0.4, "Mass": 0.1}}}}))
    code, _, err = run_cli(["ensemble", "--inputs", str(first), str(second), "--ensembler", "max",
                            "--output-dir", str(tmp_path / "out")], pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert report["predictions"] == {"Mass": 0.6, "Nodule": 0.8, "Effusion": 0.4}
    assert "target" not in report


def test_ensemble_old_spellings_print_one_notice_each(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    write_metadata(tmp_path)
    code, _, err = run_cli(["ensemble", "--input-dir", str(tmp_path), "--method", "weighted", "--weights", "3,1"],
                           pm, monkeypatch, capsys)
    assert code == 0, err
    assert err.strip().splitlines() == ["note: --method is now --ensembler (the old spelling still works)",
                                        "note: --weights is now --model-weights (the old spelling still works)"]
    report = json.loads((tmp_path / "ensemble.json").read_text())
    assert report["ensembler"] == "weighted" and report["model_weights"] == {"densenet121": 3.0, "resnet50": 1.0}
    code, out, _ = run_cli(["ensemble", "--help"], pm, monkeypatch, capsys)
    assert code == 0
    for shown in ("--ensembler", "--model-weights", "--profile"):
        assert shown in out
    assert "--method" not in out and not re.search(r"(^|[\s,])--weights\b", out)


def test_ensemble_maps_the_combined_cam_to_the_recorded_image_size(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    meta = write_metadata(tmp_path)
    data = json.loads(meta.read_text())
    data["image_size"] = [W * 5, H * 5]  # the CAMs (80 x 60 and 40 x 30) cover a 400 x 300 image
    meta.write_text(json.dumps(data))
    code, _, err = run_cli(["ensemble", "--input-dir", str(tmp_path), "--target-class", "Mass", "--profile", "legacy",
                            "--mask", "threshold", "--ground-truth", "Mass,250,150,100,80"], pm, monkeypatch, capsys)
    assert code == 0, err
    target = json.loads((tmp_path / "ensemble.json").read_text())["target"]
    assert box_of(target) == (50, 50, 150, 100) and target["image_size"] == {"width": 400, "height": 300}
    assert target["strategy"] == "largest" and target["grid"] == {"width": W, "height": H}
    assert render.read_mask(tmp_path / "ensemble_Mass_P3.png").shape == (300, 400)
    assert render.read_png(tmp_path / "ensemble_Mass_P0.png", color=True).shape == (300, 400, 3)
    png = render.read_png(tmp_path / "ensemble_Mass_PBBox.png", color=True)
    assert png.shape == (300, 400, 3)
    assert is_colour(png[50, 120], render.PREDICTION) and is_colour(png[150, 300], render.TRUTH)
    assert has_legend_entry(png, render.PREDICTION) and has_legend_entry(png, render.TRUTH)


@pytest.mark.parametrize(
    "setup, extra, fragment",
    [
        (lambda t: (t / "metadata.json").write_text("{not json"), [], "not valid JSON"),
        (lambda t: (t / "metadata.json").write_text('{"models": {}}'), [], "no 'models' object"),
        (lambda t: (t / "metadata.json").write_text('{"models": {"m": {"predictions": {"Mass": "high"}}}}'), [],
         "non-numeric prediction"),
        (lambda t: None, [], "metadata.json: file not found"),
        (lambda t: write_metadata(t), ["--ensembler", "weighted", "--model-weights", "1,2,3"],
         "--model-weights has 3 values for 2 models"),
        (lambda t: write_metadata(t), ["--ensembler", "median"], "unknown ensembler 'median'"),
        (lambda t: write_metadata(t), ["--profile", "nope"], "unknown profile 'nope'"),
        (lambda t: (write_metadata(t), (t / "cams_resnet.npy").write_bytes(b"garbage")), ["--target-class", "Mass"],
         "cams_resnet.npy: not a NumPy .npy CAM"),
        (lambda t: (write_metadata(t), np.save(t / "cams_resnet.npy", np.zeros((H, H), np.float32))),
         ["--target-class", "Mass"], "differ in aspect ratio"),
        (lambda t: (write_metadata(t), (t / "cams_resnet.npy").unlink()), ["--target-class", "Mass"],
         "CAM file"),
        (lambda t: write_metadata(t), ["--target-class", "Effusion"], "no model predicts 'Effusion'"),
        (lambda t: write_metadata(t), ["--target-class", "Nodule"], "no model has a CAM for 'Nodule'"),
        (lambda t: write_metadata(t), ["--target-class", "Mass", "--ground-truth", "Mass,0,0,81,10"], "outside"),
    ],
)
def test_ensemble_bad_inputs(tmp_path: Path, pm, monkeypatch, capsys, setup, extra, fragment) -> None:
    setup(tmp_path)
    code, _, err = run_cli(["ensemble", "--input-dir", str(tmp_path), *extra], pm, monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)


def test_ensemble_refuses_other_image_and_repeated_model(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    a = write_metadata(tmp_path / "a")
    b = write_metadata(tmp_path / "b", image="images/00000002_000.png")
    code, _, err = run_cli(["ensemble", "--inputs", str(a), "--inputs", str(b)], pm, monkeypatch, capsys)
    assert_one_line_error(code, err, "is for image")
    c = write_metadata(tmp_path / "c")
    code, _, err = run_cli(["ensemble", "--inputs", str(a), "--inputs", str(c)], pm, monkeypatch, capsys)
    assert_one_line_error(code, err, "appears in both")


def test_cli_runner_standalone_false(tmp_path: Path, pm) -> None:
    """The click app itself raises the XcamError (``main`` turns it into one line)."""
    from click.testing import CliRunner

    from xcam.cli import cli
    from xcam.core.errors import XcamError

    result = CliRunner().invoke(cli, ["bbox", "--input-mask", str(tmp_path / "x_P3.png")], obj={"pm": pm},
                                standalone_mode=False)
    assert isinstance(result.exception, XcamError) and "file not found" in str(result.exception)
