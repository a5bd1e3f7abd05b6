"""Mask extractors, bbox strategies, rendering helpers and ``xcam bbox``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_xcam

import xcam.plugins.bbox_strategies as bbox_strategies
import xcam.plugins.cam_methods as cam_methods
import xcam.plugins.ensemblers as ensemblers
import xcam.plugins.mask_extractors as mask_extractors
from xcam.core import render
from xcam.core.errors import ImageLoadError, UsageError
from xcam.core.manager import XcamPluginManager
from xcam.core.types import ScoredBox


@pytest.fixture
def pm() -> XcamPluginManager:
    manager = XcamPluginManager()
    manager.load_object(mask_extractors, name="mask_extractors")
    manager.load_object(bbox_strategies, name="bbox_strategies")
    manager.load_object(ensemblers, name="ensemblers")  # the settings profiles name one of each
    manager.load_object(cam_methods, name="cam_methods")
    return manager


def hot_spot_cam(shape=(60, 80), rows=slice(10, 20), cols=slice(30, 50), hot=0.9, cold=0.1) -> np.ndarray:
    cam = np.full(shape, cold, dtype=np.float32)
    cam[rows, cols] = hot
    return cam


# -- mask extractors -------------------------------------------------------------------------
def test_registrations(pm: XcamPluginManager) -> None:
    assert set(pm.mask_extractors()) == {"threshold", "otsu", "percentile", "legacy-red"}
    assert set(pm.bbox_strategies()) == {"tight", "largest", "components"}


@pytest.mark.parametrize("name", ["threshold", "otsu", "percentile", "legacy-red"])
def test_extractors_find_the_hot_spot(pm: XcamPluginManager, name: str) -> None:
    cam = hot_spot_cam()
    options = {"percent": 200 / cam.size * 100} if name == "percentile" else {}
    mask = pm.mask_extractor(name).extract(cam, **options)
    assert mask.dtype == bool and mask.shape == cam.shape
    expected = np.zeros(cam.shape, bool)
    expected[10:20, 30:50] = True
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("name", ["threshold", "otsu", "percentile", "legacy-red"])
@pytest.mark.parametrize("cam", [np.zeros((8, 9)), np.full((8, 9), 0.7), np.full((8, 9), np.nan), np.zeros((0, 0))])
def test_extractors_constant_or_empty_cam_gives_empty_mask(pm: XcamPluginManager, name: str, cam: np.ndarray) -> None:
    mask = pm.mask_extractor(name).extract(cam)
    assert mask.shape == cam.shape and mask.dtype == bool and not mask.any()


def test_threshold_normalizes_first() -> None:
    cam = np.array([[0.2, 0.3], [0.4, 0.6]])  # normalized: 0, 0.25, 0.5, 1
    assert mask_extractors.threshold_mask(cam).tolist() == [[False, False], [True, True]]
    assert mask_extractors.threshold_mask(cam, threshold=0.9).sum() == 1


def test_percentile_top_area_on_gradient() -> None:
    cam = np.linspace(0, 1, 1000).reshape(20, 50)
    mask = mask_extractors.percentile_mask(cam, percent=10)
    assert mask.sum() == 100 and mask[-2:, :].all()  # the last 100 values
    sparse = np.zeros((10, 10))
    sparse[0, 0] = 1.0
    assert mask_extractors.percentile_mask(sparse, percent=10).sum() == 1  # flat floor is not selected


def test_otsu_on_two_levels_with_noise() -> None:
    rng = np.random.default_rng(1)
    cam = hot_spot_cam(hot=0.8, cold=0.2) + rng.normal(0, 0.02, (60, 80)).astype(np.float32)
    mask = mask_extractors.otsu_mask(np.clip(cam, 0, 1))
    # skimage puts the threshold at the low end of the gap between the classes: a few noise pixels join
    assert mask[10:20, 30:50].all() and 200 <= mask.sum() <= 205
    from skimage.filters import threshold_otsu

    smooth = cv2.GaussianBlur(hot_spot_cam(), (0, 0), 3)
    assert np.array_equal(mask_extractors.otsu_mask(smooth), smooth > threshold_otsu(smooth))


def test_legacy_red_matches_rendered_red_channel() -> None:
    rng = np.random.default_rng(2)
    cam = rng.random((40, 50)).astype(np.float32)
    heatmap = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)  # the old pipeline's _P1
    expected = heatmap[:, :, 2] > 127  # the old _P2 > 127 rule
    assert np.array_equal(mask_extractors.legacy_red_mask(cam), expected)
    assert np.array_equal(render.red_channel(render.heatmap_bgr(cam)) > 127, expected)


# -- bbox strategies ---------------------------------------------------------------------------
def two_blobs() -> np.ndarray:
    mask = np.zeros((50, 60), bool)  # 3000 px: 1 % = 30 px
    mask[5:15, 5:25] = True  # 10 x 20 = 200 px
    mask[30:34, 40:44] = True  # 4 x 4 = 16 px
    return mask


def test_tight_box(pm: XcamPluginManager) -> None:
    (box,) = pm.bbox_strategy("tight").boxes(two_blobs())
    assert (box.x, box.y, box.width, box.height) == (5, 5, 39, 29)
    assert box.score == pytest.approx(216 / 3000)


def test_largest_box(pm: XcamPluginManager) -> None:
    (box,) = pm.bbox_strategy("largest").boxes(two_blobs())
    assert (box.x, box.y, box.width, box.height) == (5, 5, 20, 10)
    assert box.score == pytest.approx(200 / 3000)
    cam = np.where(two_blobs(), 0.5, 0.0)
    cam[5, 5] = 1.0
    (box,) = bbox_strategies.largest_box(two_blobs(), cam=cam, score="max")
    assert box.score == 1.0


def test_components_min_area_scores_and_limit(pm: XcamPluginManager) -> None:
    reg = pm.bbox_strategy("components")
    boxes = reg.boxes(two_blobs())
    assert [(b.x, b.y, b.width, b.height) for b in boxes] == [(5, 5, 20, 10)]  # 16 px < 1 %
    cam = np.zeros((50, 60))
    cam[5:15, 5:25] = 0.4
    cam[30:34, 40:44] = 0.9
    boxes = reg.boxes(two_blobs(), cam=cam, min_area=10)  # pixels
    assert [(b.x, b.y) for b in boxes] == [(40, 30), (5, 5)]
    assert [b.score for b in boxes] == pytest.approx([0.9, 0.4])
    assert len(reg.boxes(two_blobs(), cam=cam, min_area=0.001, max_boxes=1)) == 1


def test_connectivity() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = True
    assert len(bbox_strategies.component_boxes(mask, min_area=1)) == 1
    assert len(bbox_strategies.component_boxes(mask, min_area=1, connectivity=4)) == 2


@pytest.mark.parametrize("name", ["tight", "largest", "components"])
def test_empty_mask_gives_no_box(pm: XcamPluginManager, name: str) -> None:
    assert pm.bbox_strategy(name).boxes(np.zeros((10, 10), bool)) == []


def test_cam_shape_must_match_mask() -> None:
    with pytest.raises(UsageError):
        bbox_strategies.largest_box(two_blobs(), cam=np.zeros((3, 3)))


# -- rendering --------------------------------------------------------------------------------
def test_render_helpers(tmp_path: Path) -> None:
    cam = hot_spot_cam()
    heat = render.heatmap_bgr(cam)
    assert heat.shape == (60, 80, 3) and heat.dtype == np.uint8
    gray = np.full((60, 80), 100, np.uint8)
    over = render.overlay(gray, cam, alpha=0.4)
    assert over.shape == (60, 80, 3)
    assert np.allclose(over[0, 0], 0.6 * 100 + 0.4 * heat[0, 0].astype(float), atol=1)
    with pytest.raises(UsageError):
        render.overlay(np.zeros((10, 10)), cam)
    assert set(np.unique(render.mask_png(cam > 0.5))) == {0, 255}
    drawn = render.draw_boxes(gray, [(ScoredBox(10, 10, 20, 20), render.GREEN), ((0, 0, 5, 5), render.RED, "GT")])
    assert tuple(drawn[10, 15]) == render.GREEN
    out = render.write_png(tmp_path / "a" / "b" / "m.png", render.mask_png(cam > 0.5))
    assert np.array_equal(render.read_mask(out), cam > 0.5)


def test_read_mask_refuses_non_masks(tmp_path: Path) -> None:
    ramp = render.write_png(tmp_path / "ramp.png", np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    with pytest.raises(ImageLoadError, match="not a binary mask"):
        render.read_mask(ramp)
    with pytest.raises(ImageLoadError, match="file not found"):
        render.read_mask(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        render.read_mask(tmp_path / "junk.png")


# -- xcam bbox ---------------------------------------------------------------------------------
def run_cli(args: list[str], pm: XcamPluginManager, monkeypatch, capsys) -> tuple[int, str, str]:
    return run_xcam(args, capsys, monkeypatch, pm)


def make_case(folder: Path, with_image: bool = True) -> Path:
    mask = np.zeros((100, 120), bool)
    mask[20:60, 30:90] = True  # x=30 y=20 w=60 h=40
    mask[80:85, 5:10] = True
    path = render.write_png(folder / "densenet121_Pleural_Thickening_P3.png", render.mask_png(mask))
    if with_image:
        render.write_png(folder / "_input_image_.png", np.full((100, 120), 90, np.uint8))
    return path


def test_parse_mask_name() -> None:
    from xcam.commands.bbox import parse_mask_name

    assert parse_mask_name("out/densenet121_Pleural_Thickening_P3.png") == (
        "densenet121_Pleural_Thickening", "densenet121", "Pleural_Thickening")
    assert parse_mask_name("resnet50_Pleural Thickening_P3.png")[2] == "Pleural Thickening"
    assert parse_mask_name("Mass_consolidated.png") == ("Mass_consolidated", None, None)


def test_bbox_command_writes_json_and_png(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    mask_path = make_case(tmp_path)
    code, out, err = run_cli(
        ["bbox", "--input-mask", str(mask_path), "--ground-truth", "Pleural_Thickening,30,20,60,80",
         "--output-dir", str(tmp_path / "out")], pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "densenet121_Pleural_Thickening_PBBox.json").read_text())
    assert report["box"] == {"x": 30, "y": 20, "width": 60, "height": 40, "x2": 90, "y2": 60, "score": 2400 / 12000}
    assert report["strategy"] == "largest" and report["model"] == "densenet121" and report["boxes_from"] == "mask"
    assert report["image_size"] == {"width": 120, "height": 100}
    m = report["metrics"]
    assert m["iou"] == pytest.approx(0.5) and m["iobb"] == pytest.approx(1.0)
    assert m["dice"] == pytest.approx(2 / 3) and m["colloc@0.3"] == 1.0
    assert m["precision@0.5"] == 1.0 and m["image_ap@.5"] == 1.0 and m["image_ap@.75"] == 0.0
    assert m["pixel_accuracy"] == pytest.approx(1 - 2400 / 12000)
    assert "pointing_game" not in m  # no CAM beside the mask: no peak to point with
    png = render.read_png(tmp_path / "out" / "densenet121_Pleural_Thickening_PBBox.png", color=True)
    assert png.shape == (100, 120, 3)
    assert "IoU=0.500" in out and "largest boxes from the mask" in out


def test_bbox_components_and_default_output_dir(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    mask_path = make_case(tmp_path, with_image=False)
    code, _, err = run_cli(["bbox", "--input-mask", str(mask_path), "--strategy", "components", "--min-area", "10"],
                           pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "densenet121_Pleural_Thickening_PBBox.json").read_text())
    assert len(report["boxes"]) == 2 and "metrics" not in report
    assert report["strategy_options"]["min_area"] == 10
    assert (tmp_path / "densenet121_Pleural_Thickening_PBBox.png").is_file()


# A result folder as xcam writes it: a 400 x 300 image, its P3 mask at that size, the CAM in the 224 x 168
# work grid, and the box file with the boxes made in the work grid (not on pixel edges of the P3 mask).
BIG = (300, 400)
RECORDED = {"x": 249.99, "y": 30.36, "width": 100.45, "height": 59.91, "score": 0.83}


def make_result_folder(folder: Path, analysis_options: dict | None = None) -> Path:
    from xcam.chain.outputs import box_report
    from xcam.core.types import ScoredBox

    folder.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(BIG, bool)
    mask[30:90, 250:350] = True  # the prediction: x 250..350, y 30..90
    mask[200:210, 20:30] = True
    path = render.write_png(folder / "mobilenetv3_Mass_P3.png", render.mask_png(mask))
    render.write_png(folder / "_input_image_.png", np.full(BIG, 90, np.uint8))
    cam = np.zeros((168, 224), np.float16)
    cam[17:50, 140:196] = 1.0
    np.save(folder / "mobilenetv3_Mass_cam.npy", cam)
    record = {"model": "mobilenetv3", "pathology": "Mass", "probability": 0.7, "strategy": "largest",
              "mask_extractor": "threshold", "peak": [300.0, 60.0],
              "work_grid": {"width": 224, "height": 168, "side": 224, "original_width": 400, "original_height": 300}}
    record.update(box_report([ScoredBox(**RECORDED)], 400, 300, [], "Mass", None))
    (folder / "mobilenetv3_Mass_PBBox.json").write_text(json.dumps(record))
    if analysis_options is not None:
        (folder / "analysis.json").write_text(json.dumps(
            {"settings": {"strategy": "largest", "strategy_options": analysis_options}}))
    (folder / "metadata.json").write_text(json.dumps({"image": "x.png", "image_size": [400, 300], "models": {}}))
    return path


def read_box(folder: Path) -> dict:
    return json.loads((folder / "mobilenetv3_Mass_PBBox.json").read_text())


@pytest.mark.parametrize("extra", [[], ["--strategy", "largest"], ["--profile", "legacy"]])
def test_bbox_reuses_the_recorded_boxes_when_the_settings_match(tmp_path: Path, pm, monkeypatch, capsys, extra
                                                                ) -> None:
    mask_path = make_result_folder(tmp_path)
    code, out, err = run_cli(["bbox", "--input-mask", str(mask_path), "--ground-truth", "Mass,250,30,100,60", *extra],
                             pm, monkeypatch, capsys)
    assert code == 0, err
    report = read_box(tmp_path)
    assert report["boxes_from"] == "recorded" and report["strategy"] == "largest"
    assert {k: report["box"][k] for k in RECORDED} == RECORDED  # exactly as recorded, not recomputed
    assert report["probability"] == 0.7 and report["work_grid"]["width"] == 224  # the record's other keys stay
    assert report["metrics"]["iou"] == pytest.approx(0.99, abs=0.01) and report["metrics"]["pointing_game"] == 1.0
    assert report["ground_truth"]["label"] == "Mass" and "recorded largest boxes" in out


@pytest.mark.parametrize(
    "extra, analysis, strategy",
    [
        (["--strategy", "tight"], None, "tight"),
        (["--strategy-option", "connectivity=4"], None, "largest"),  # options the record does not know
        (["--strategy-option", "connectivity=4"], {"connectivity": 8}, "largest"),  # options that differ
    ],
)
def test_bbox_recomputes_when_the_strategy_differs(tmp_path: Path, pm, monkeypatch, capsys, extra, analysis,
                                                   strategy) -> None:
    mask_path = make_result_folder(tmp_path, analysis)
    code, out, err = run_cli(["bbox", "--input-mask", str(mask_path), *extra], pm, monkeypatch, capsys)
    assert code == 0, err
    report = read_box(tmp_path)
    assert report["boxes_from"] == "mask" and report["strategy"] == strategy
    expected = (20, 30, 330, 180) if strategy == "tight" else (250, 30, 100, 60)
    assert (report["box"]["x"], report["box"]["y"], report["box"]["width"], report["box"]["height"]) == expected
    assert report["cam"].endswith("mobilenetv3_Mass_cam.npy") and report["box"]["score"] > 0  # scored by the CAM
    assert f"{strategy} boxes from the mask" in out


def test_bbox_same_recorded_options_reuse(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    mask_path = make_result_folder(tmp_path, {"connectivity": 4})
    code, _, err = run_cli(["bbox", "--input-mask", str(mask_path), "--strategy-option", "connectivity=4"],
                           pm, monkeypatch, capsys)
    assert code == 0, err
    assert read_box(tmp_path)["boxes_from"] == "recorded"


def test_bbox_colours_and_legend(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    mask_path = make_result_folder(tmp_path)
    code, _, err = run_cli(["bbox", "--input-mask", str(mask_path), "--strategy", "largest",
                            "--strategy-option", "score=max", "--ground-truth", "Mass,240,120,120,80"],
                           pm, monkeypatch, capsys)
    assert code == 0, err
    png = render.read_png(tmp_path / "mobilenetv3_Mass_PBBox.png", color=True)
    assert png.shape == (300, 400, 3)
    assert tuple(png[30, 300]) == render.PREDICTION  # the predicted box's top edge (magenta)
    assert tuple(png[120, 300]) == render.TRUTH  # the ground truth's top edge (green)
    corner = png[-100:, :60]  # the legend, lower left: a swatch of each colour on a darkened backdrop
    for colour in (render.PREDICTION, render.TRUTH):
        assert (corner == np.array(colour, np.uint8)).all(axis=-1).any()
    assert corner.mean() < 90


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--ground-truth", "Mass,1,2,3"], "malformed"),
        (["--ground-truth", "Mass,a,2,3,4"], "not a number"),
        (["--ground-truth", "Mass,1,2,0,4"], "must be > 0"),
        (["--ground-truth", "Mass,100,50,40,40"], "outside the 120x100 image"),
        (["--strategy", "nope"], "unknown bbox strategy 'nope'"),
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--strategy-option", "oops"], "expected key=value"),
    ],
)
def test_bbox_bad_inputs_one_line(tmp_path: Path, pm, monkeypatch, capsys, extra, fragment) -> None:
    mask_path = make_case(tmp_path)
    code, _, err = run_cli(["bbox", "--input-mask", str(mask_path), *extra], pm, monkeypatch, capsys)
    assert code != 0 and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda t: (t / "mobilenetv3_Mass_cam.npy").write_bytes(b"junk"), "mobilenetv3_Mass_cam.npy: not a NumPy"),
        (lambda t: np.save(t / "mobilenetv3_Mass_cam.npy", np.zeros((3, 4, 5))), "must be a 2-D numeric array"),
        (lambda t: np.save(t / "mobilenetv3_Mass_cam.npy", np.zeros((50, 50))), "differ in aspect ratio"),
        (lambda t: (t / "mobilenetv3_Mass_PBBox.json").write_text('{"model": "m"}'),
         "mobilenetv3_Mass_PBBox.json: not an xcam box file"),
        (lambda t: (t / "mobilenetv3_Mass_PBBox.json").write_text("[1,"),
         "mobilenetv3_Mass_PBBox.json: not valid JSON"),
        (lambda t: render.write_png(t / "mobilenetv3_Mass_P3.png", np.zeros((300, 300), np.uint8)),
         "differ in aspect ratio"),
    ],
)
def test_bbox_bad_recorded_files_one_line(tmp_path: Path, pm, monkeypatch, capsys, damage, fragment) -> None:
    mask_path = make_result_folder(tmp_path)
    damage(tmp_path)
    code, _, err = run_cli(["bbox", "--input-mask", str(mask_path), "--strategy", "tight"], pm, monkeypatch, capsys)
    assert code != 0 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bbox_missing_file_and_not_a_mask(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bbox", "--input-mask", str(tmp_path / "nope_P3.png")], pm, monkeypatch, capsys)
    assert code != 0 and "nope_P3.png: file not found" in err and len(err.strip().splitlines()) == 1
    ramp = render.write_png(tmp_path / "m_X_P3.png", np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    code, _, err = run_cli(["bbox", "--input-mask", str(ramp)], pm, monkeypatch, capsys)
    assert code != 0 and "not a binary mask" in err and "Traceback" not in err


def test_bbox_consolidated_mask_uses_the_consolidated_names(tmp_path: Path, pm, monkeypatch, capsys) -> None:
    mask = np.zeros((100, 120), bool)
    mask[10:30, 20:60] = True
    path = render.write_png(tmp_path / "Mass_consolidated.png", render.mask_png(mask))
    code, _, err = run_cli(["bbox", "--input-mask", str(path)], pm, monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "Mass_consolidated_bbox.json").read_text())
    assert report["pathology"] == "Mass" and report["box"]["x"] == 20
    assert (tmp_path / "Mass_consolidated_bbox.png").is_file()


# -- option checks: keys from the plugin's signature, ranges from the plugin's check_options ------------
@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"mask_options": {"nosuch": 1}},
         "--mask-option: unknown option 'nosuch' for mask extractor 'threshold'; valid: threshold"),
        ({"strategy_options": {"foo": "bar"}},
         "--strategy-option: unknown option 'foo' for bbox strategy 'largest'; valid: score, connectivity"),
        ({"strategy_options": {"": 3}}, "--strategy-option: empty option name for bbox strategy 'largest'"),
        ({"mask_options": {"threshold": 5}}, "threshold must be a number in [0, 1], got 5"),
        ({"mask_options": {"threshold": -1}}, "threshold must be a number in [0, 1], got -1"),
        ({"mask": "percentile", "mask_options": {"percent": 500}}, "percent must be a number in [0, 100], got 500"),
        ({"mask": "percentile", "mask_options": {"percent": -5}}, "percent must be a number in [0, 100], got -5"),
        ({"mask": "legacy-red", "mask_options": {"level": 1.5}}, "level must be an integer in [0, 255]"),
        ({"mask": "otsu", "mask_options": {"threshold": 0.3}}, "valid: (it takes no options)"),
        ({"strategy": "components", "strategy_options": {"min_area": float("nan")}}, "min_area must be a number"),
        ({"strategy": "components", "strategy_options": {"max_boxes": 0}}, "max_boxes must be an integer >= 1"),
        ({"strategy_options": {"score": "median"}}, "score must be 'mean' or 'max'"),
        ({"strategy_options": {"connectivity": 6}}, "connectivity must be 4 or 8"),
    ],
)
def test_bad_mask_and_strategy_options_fail_before_models_load(pm, over, fragment) -> None:
    from xcam.chain.settings import Overrides, resolve_settings

    with pytest.raises(UsageError) as info:
        resolve_settings(pm, None, Overrides(**over))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_good_options_and_other_extractors_keep_working(pm) -> None:
    from xcam.chain.settings import Overrides, resolve_settings

    assert resolve_settings(pm, None, Overrides(mask="otsu")).mask == "otsu"  # default's threshold=0.5 not for it
    s = resolve_settings(pm, None, Overrides(mask="percentile", mask_options={"percent": 0},
                                             strategy="components",
                                             strategy_options={"min_area": 0, "max_boxes": 2, "score": "max"}))
    assert s.mask_options["percent"] == 0 and s.strategy_options["max_boxes"] == 2
    with pytest.raises(ValueError, match="threshold must be"):  # the Python API checks too
        mask_extractors.threshold_mask(hot_spot_cam(), threshold=5)
    with pytest.raises(ValueError, match="max_boxes must be"):
        bbox_strategies.component_boxes(np.ones((4, 4), bool), max_boxes=-3)


def test_profile_and_plugin_table_options_are_checked(tmp_path: Path) -> None:
    from xcam.chain.settings import resolve_settings
    from xcam.core.config import load_config
    from xcam.core.manager import get_plugin_manager

    path = tmp_path / "plugins.toml"
    path.write_text('[profiles.p]\nextends = "default"\nmask_extractor = "percentile"\n'
                    '[profiles.p.mask_options]\npercent = 500\n')
    pm = get_plugin_manager(load_config(path), entrypoints=False)
    with pytest.raises(UsageError, match=r"plugins.toml: \[profiles.p\] mask_options: mask extractor 'percentile': "
                                         r"percent must be a number in \[0, 100\], got 500"):
        resolve_settings(pm, "p")
    path.write_text('[profiles.p]\nbbox_strategy = "components"\n[profiles.p.strategy_options]\nmin_areaa = 1\n')
    pm = get_plugin_manager(load_config(path), entrypoints=False)
    with pytest.raises(UsageError, match=r"\[profiles.p\] strategy_options: unknown option 'min_areaa' for bbox "
                                         r"strategy 'components'; valid: score, min_area, max_boxes, connectivity"):
        resolve_settings(pm, "p")
    path.write_text('[options.largest]\nnosuch = 1\n')
    pm = get_plugin_manager(load_config(path), entrypoints=False)
    with pytest.raises(UsageError, match=r"\[options.largest\]: unknown option 'nosuch'"):
        resolve_settings(pm)
    path.write_text('[profiles.default]\nmask_extractor = "otsu"\n')  # the built-in threshold=0.5 was for threshold
    pm = get_plugin_manager(load_config(path), entrypoints=False)
    assert resolve_settings(pm).mask == "otsu"


def test_third_party_option_keys_come_from_the_signature(pm) -> None:
    from xcam.chain.settings import Overrides, resolve_settings
    from xcam.core.hookspecs import hookimpl
    from xcam.core.types import BboxStrategyRegistration, MaskExtractorRegistration

    def strict(cam, level=0.5):
        return cam >= level

    def anything(mask, cam=None, **options):
        return []

    class ThirdParty:
        @hookimpl
        def xcam_mask_extractors(self):
            yield MaskExtractorRegistration(name="strict", extract=strict)

        @hookimpl
        def xcam_bbox_strategies(self):
            yield BboxStrategyRegistration(name="anything", boxes=anything)

    pm.load_object(ThirdParty(), name="third-party")
    with pytest.raises(UsageError, match="unknown option 'levle' for mask extractor 'strict'; valid: level"):
        resolve_settings(pm, None, Overrides(mask="strict", mask_options={"levle": 1}))
    s = resolve_settings(pm, None, Overrides(mask="strict", mask_options={"level": 7}, strategy="anything",
                                             strategy_options={"whatever": 1}))  # **options: any key
    assert s.mask_options["level"] == 7 and s.strategy_options == {"whatever": 1}
    with pytest.raises(UsageError, match="empty option name"):
        resolve_settings(pm, None, Overrides(strategy="anything", strategy_options={" ": 1}))


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--strategy", "components", "--min-area", "-1"], "--min-area: bbox strategy 'components': min_area must"),
        (["--strategy", "components", "--min-area", "nan"], "min_area must be a number >= 0"),
        (["--strategy", "components", "--max-boxes", "0"], "--max-boxes: bbox strategy 'components': max_boxes"),
        (["--strategy", "components", "--max-boxes", "-3"], "max_boxes must be an integer >= 1, got -3"),
        (["--strategy", "components", "--strategy-option", "=3"], "--strategy-option: empty option name"),
        (["--strategy-option", "foo=bar"], "unknown option 'foo' for bbox strategy 'largest'"),
        (["--min-area", "5"], "--min-area: unknown option 'min_area' for bbox strategy 'largest'"),
    ],
)
def test_bbox_bad_strategy_options_one_line(tmp_path: Path, pm, monkeypatch, capsys, extra, fragment) -> None:
    mask_path = make_case(tmp_path)
    code, _, err = run_cli(["bbox", "--input-mask", str(mask_path), *extra], pm, monkeypatch, capsys)
    assert code != 0 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
