"""The analysis chain: class choice, CAMs in the original grid, masks, boxes, metrics, files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from xcam.core.config import XcamConfig
from xcam.core.errors import UsageError, XcamError
from xcam.core.hookspecs import hookimpl
from xcam.core.manager import get_plugin_manager
from xcam.core.pipeline import (
    AnalysisSettings,
    Pipeline,
    compute_cams,
    label_key,
    read_bbox_csv,
    select_classes,
    write_outputs,
)
from xcam.core.preprocess import Geometry
from xcam.core.types import CamMethodRegistration

DATA = Path(os.environ.get("XCAM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NIH = DATA / "nih"

WIDTH, HEIGHT = 700, 500  # non-square, not 1024
HOT = (420.0, 180.0, 140.0, 90.0)  # x, y, w, h of the hot spot in original pixels


def write_image(path: Path, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = 120 + 60 * np.sin(xx / 40.0) * np.cos(yy / 55.0) + rng.normal(0, 8, (height, width))
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return path


class HotSpotPlugin:
    """A CAM method that lights the model pixels of :data:`HOT` (mapped with the image's geometry)."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.calls: list[list[int]] = []

    def compute(self, model, batch, class_indices, **options):
        self.calls.append(list(class_indices))
        size = batch.shape[-1]
        assert size == model.input_size and self.geometry.size == size
        x, y, w, h = self.geometry.box_to_model(*HOT)
        maps = np.zeros((len(class_indices), size, size), np.float32)
        maps[:, round(y) : round(y + h), round(x) : round(x + w)] = 1.0
        return maps

    @hookimpl
    def xcam_cam_methods(self):
        yield CamMethodRegistration(name="hotspot", compute=self.compute)


@pytest.fixture
def pm():
    return get_plugin_manager(XcamConfig(), entrypoints=False)


@pytest.fixture
def image_path(tmp_path):
    return write_image(tmp_path / "chest 01.png")


@pytest.fixture
def hotspot(pm):
    plugin = HotSpotPlugin(Geometry(WIDTH, HEIGHT, 224, 0, (WIDTH - HEIGHT) // 2))
    pm.load_object(plugin, "hotspot-test")
    return plugin


def settings(**kw) -> AnalysisSettings:
    base = dict(method="hotspot", mask="threshold", strategy="largest", ground_truth_classes=False)
    base.update(kw)
    return AnalysisSettings(**base)


# -- class choice ----------------------------------------------------------------------------
LABELS = ["Atelectasis", "", "Mass", "Pleural_Thickening", "Nodule"]
VALID = [0, 2, 3, 4]
PROBS = np.array([0.9, 0.99, 0.2, 0.7, 0.6])


def test_select_top_k_threshold_and_targets():
    assert select_classes(PROBS, LABELS, VALID, AnalysisSettings(top_k=2, threshold=0.0)) == [(0, "top-k"), (3, "top-k")]
    assert select_classes(PROBS, LABELS, VALID, AnalysisSettings(threshold=0.65)) == [(0, "threshold"), (3, "threshold")]
    assert select_classes(PROBS, LABELS, VALID, AnalysisSettings(top_k=3, threshold=0.65)) == [(0, "top-k"), (3, "top-k")]
    picked = select_classes(PROBS, LABELS, VALID, AnalysisSettings(target_classes=("mass", "PLEURAL thickening")))
    assert picked == [(2, "target"), (3, "target")]
    with_gt = select_classes(PROBS, LABELS, VALID, AnalysisSettings(top_k=1, threshold=0.0), gt_labels=["nodule"])
    assert with_gt == [(0, "top-k"), (4, "ground-truth")]


def test_unknown_target_class_lists_valid_names():
    with pytest.raises(UsageError) as err:
        select_classes(PROBS, LABELS, VALID, AnalysisSettings(target_classes=("Pneumonia",)))
    message = str(err.value)
    assert "'Pneumonia'" in message and "Atelectasis, Mass, Pleural_Thickening, Nodule" in message
    assert "\n" not in message


def test_label_key_maps_nih_spellings():
    assert label_key("Infiltrate") == label_key("infiltration") == label_key("INFILTRATION")
    assert label_key("Pleural_Thickening") == label_key("pleural thickening")
    assert label_key("Mass") != label_key("Nodule")


# -- geometry: boxes in original coordinates --------------------------------------------------
def test_hot_spot_box_lands_in_original_coordinates(pm, hotspot, image_path):
    gt = ("mass", HOT)
    pipe = Pipeline(pm, ["mobilenetv3"], settings(target_classes=("MASS",)), random_init=True)
    analysis = pipe.analyze(image_path, ground_truth=[gt])
    (finding,) = analysis.results[0].findings
    assert finding.pathology == "Mass" and finding.reason == "target"
    assert finding.cam.shape == finding.mask.shape == (HEIGHT, WIDTH)
    assert finding.cam.dtype == np.float32 and 0.0 <= finding.cam.min() and finding.cam.max() <= 1.0
    box = finding.box
    scale = max(WIDTH, HEIGHT) / 224
    for got, want in zip((box.x, box.y, box.width, box.height), HOT):
        assert abs(got - want) <= 2 * scale, (box, HOT)
    assert finding.metrics is not None and finding.metrics["iou"] > 0.85
    assert finding.metrics["pointing_game"] == 1.0
    assert hotspot.calls == [[analysis.results[0].findings[0].class_index]]
    assert set(analysis.timings.seconds) >= {"load", "model", "cam", "mask_box"}


def test_ground_truth_class_gets_a_cam(pm, hotspot, image_path):
    pipe = Pipeline(pm, ["mobilenetv3"], settings(top_k=0, ground_truth_classes=True), random_init=True)
    analysis = pipe.analyze(image_path, ground_truth=[("Infiltrate", HOT)])
    (finding,) = analysis.results[0].findings
    assert finding.pathology == "Infiltration" and finding.reason == "ground-truth"
    assert finding.ground_truth == [HOT] and finding.metrics["iou"] > 0.85


def test_compute_cams_uses_a_classifier_fast_path(pm):
    class Fast:
        name, backend = "fast", "onnx:test"

        def cam_fast_path(self, batch, class_indices, method, options):
            assert method == "gradcam" and options == {"eigen_smooth": False}
            maps = np.zeros((len(class_indices), 7, 7), np.float32)
            for k, c in enumerate(class_indices):
                maps[k, c, c] = 5.0
            return maps

    out = compute_cams(Fast(), np.zeros((2, 1, 56, 56), np.float32), [1, 4], "gradcam", pm=pm, eigen_smooth=False)
    assert out.shape == (2, 56, 56) and out.max() == 1.0 and out.min() == 0.0
    assert np.unravel_index(out[1].argmax(), out[1].shape)[0] // 8 == 4


def test_torch_model_for_cams_is_built_only_when_the_fast_path_cannot_serve(pm):
    class Fast:
        name, backend = "fast", "onnx:test"

        def cam_fast_path(self, batch, class_indices, method, options):
            return np.ones((len(class_indices), 7, 7), np.float32) if method == "gradcam" else None

    built = []

    def load_torch():
        from xcam.export.backends import load_classifier

        built.append(1)
        return load_classifier(pm, "mobilenetv3", random_init=True)

    batch = np.zeros((1, 1, 224, 224), np.float32)
    compute_cams(Fast(), batch, [0], "gradcam", pm=pm, cam_classifier=load_torch)
    assert built == []  # the ONNX graph served Grad-CAM: no PyTorch model was built
    out = compute_cams(Fast(), batch, [0], "layercam", pm=pm, cam_classifier=load_torch)
    assert built == [1] and out.shape == (1, 224, 224)


def test_compute_cams_without_torch_model_is_one_clear_error(pm):
    class NoTorch:
        name, backend = "x", "onnx:CPUExecutionProvider"

    with pytest.raises(XcamError, match="no PyTorch model"):
        compute_cams(NoTorch(), np.zeros((1, 1, 8, 8), np.float32), [0], "gradcam", pm=pm)


# -- files ----------------------------------------------------------------------------------
def test_files_and_metadata_merge_across_two_runs(pm, hotspot, image_path, tmp_path):
    from xcam.commands.ensemble import collect_models
    from xcam.core.render import read_mask, read_png

    out = tmp_path / "OUTPUT"
    first = Pipeline(pm, ["mobilenetv3"], settings(target_classes=("Mass",)), random_init=True)
    write_outputs(first.analyze(image_path), out)
    second = Pipeline(pm, ["densenet121"], settings(target_classes=("Mass", "Lung Opacity")), random_init=True)
    written = write_outputs(second.analyze(image_path), out)

    folder = out / "chest 01"
    for prefix in ("mobilenetv3_Mass", "densenet121_Mass", "densenet121_Lung Opacity"):
        for suffix in ("_P0.png", "_P1.png", "_P2.png", "_P3.png", "_PBBox.png", "_PBBox.json", "_cam.npy"):
            assert (folder / f"{prefix}{suffix}").is_file(), prefix + suffix
    assert (folder / "_input_image_.png").is_file() and folder / "metadata.json" in written
    assert read_png(folder / "_input_image_.png").shape == (HEIGHT, WIDTH)
    assert read_png(folder / "densenet121_Mass_P0.png", color=True).shape == (HEIGHT, WIDTH, 3)
    assert read_png(folder / "densenet121_Mass_P2.png").shape == (HEIGHT, WIDTH)
    mask = read_mask(folder / "densenet121_Mass_P3.png")
    cam = np.load(folder / "densenet121_Mass_cam.npy")
    assert cam.dtype == np.float16 and cam.shape == mask.shape == (HEIGHT, WIDTH)

    meta = json.loads((folder / "metadata.json").read_text())
    assert set(meta["models"]) == {"mobilenetv3", "densenet121"}
    assert meta["image_size"] == [WIDTH, HEIGHT]
    assert meta["models"]["densenet121"]["cams"] == {
        "Mass": "densenet121_Mass_cam.npy", "Lung Opacity": "densenet121_Lung Opacity_cam.npy"}
    assert meta["models"]["mobilenetv3"]["method"] == "hotspot"
    assert len(meta["models"]["densenet121"]["predictions"]) == 18
    _, entries = collect_models([folder / "metadata.json"])  # the ensemble command reads it
    assert {e.name for e in entries} == {"mobilenetv3", "densenet121"}
    assert entries[0].cam_path("mass").is_file()

    box = json.loads((folder / "densenet121_Mass_PBBox.json").read_text())
    assert box["model"] == "densenet121" and box["pathology"] == "Mass"
    assert box["image_size"] == {"width": WIDTH, "height": HEIGHT}
    assert box["box"]["x2"] <= WIDTH and box["box"]["y2"] <= HEIGHT


def test_two_models_are_consolidated(pm, hotspot, image_path, tmp_path):
    pipe = Pipeline(pm, ["mobilenetv3", "densenet121"], settings(target_classes=("Mass", "Lung Opacity")), random_init=True)
    analysis = pipe.analyze(image_path, ground_truth=[("Mass", HOT)])
    # Lung Opacity is a densenet121 label only: no consolidation for it
    assert [c.pathology for c in analysis.consolidated] == ["Mass"]
    c = analysis.consolidated[0]
    assert c.models == ["mobilenetv3", "densenet121"] and c.ensembler == "mean"
    assert c.cam.shape == (HEIGHT, WIDTH) and c.metrics["iou"] > 0.85
    assert set(analysis.combined_predictions) >= {"Mass", "Lung Opacity", "Hernia"}
    write_outputs(analysis, tmp_path, render=True, analysis_json=True)
    folder = tmp_path / "chest 01"
    for name in ("Mass_consolidated.png", "Mass_consolidated_cam.npy", "Mass_consolidated_P0.png",
                 "Mass_consolidated_bbox.json", "Mass_consolidated_bbox.png", "analysis.json"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "analysis.json").read_text())
    assert report["consolidated"][0]["models"] == ["mobilenetv3", "densenet121"]
    assert report["models"][1]["findings"][0]["files"]


def test_json_only_writes_no_images(pm, hotspot, image_path, tmp_path):
    pipe = Pipeline(pm, ["mobilenetv3"], settings(target_classes=("Mass",)), random_init=True)
    analysis = pipe.analyze(image_path)
    write_outputs(analysis, tmp_path, render=False, arrays=False, analysis_json=True)
    names = sorted(p.name for p in (tmp_path / "chest 01").iterdir())
    assert names == ["analysis.json", "metadata.json", "mobilenetv3_Mass_PBBox.json"]
    assert analysis.timings.seconds["write"] > 0


def test_unknown_model_and_class_fail_early(pm, image_path):
    from xcam.core.errors import PluginError

    with pytest.raises(PluginError, match="densenet121"):
        Pipeline(pm, ["nosuchnet"], AnalysisSettings())
    pipe = Pipeline(pm, ["mobilenetv3"], AnalysisSettings(target_classes=("Pneumothorax", "Cardiomegalyy")),
                    random_init=True)
    with pytest.raises(UsageError, match="'Cardiomegalyy'; valid: .*Cardiomegaly"):
        pipe.load_all()


# -- ground truth files ----------------------------------------------------------------------
def test_read_bbox_csv(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "a.png,Infiltrate,10,20,30,40\na.png,Mass,1.5,2,3,4\nb.png,Nodule,5,5,5,5\n")
    table = read_bbox_csv(path)
    assert table["a.png"] == [("Infiltrate", (10.0, 20.0, 30.0, 40.0)), ("Mass", (1.5, 2.0, 3.0, 4.0))]
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,x,4\n")
    with pytest.raises(XcamError, match=r"boxes.csv: line 2: .*not numbers"):
        read_bbox_csv(path)
    path.write_text("name,label\n")
    with pytest.raises(XcamError, match="not an NIH box list"):
        read_bbox_csv(path)


# -- real images -----------------------------------------------------------------------------
@pytest.mark.skipif(not (NIH / "BBox_List_2017_subset.csv").is_file(), reason=f"real NIH test data not found at {NIH}")
def test_real_nih_image_with_ground_truth(pm, tmp_path):
    table = read_bbox_csv(NIH / "BBox_List_2017_subset.csv")
    name = min(table)
    pipe = Pipeline(pm, ["densenet121"], AnalysisSettings(method="gradcam", top_k=1, threshold=0.0), random_init=True)
    analysis = pipe.analyze(NIH / "images" / name, table[name])
    result = analysis.results[0]
    assert analysis.image.width == analysis.image.height == 1024
    gt_keys = {label_key(label) for label, _ in table[name]}
    with_gt = [f for f in result.findings if label_key(f.pathology) in gt_keys]
    assert with_gt and all(f.metrics is not None and 0.0 <= f.metrics["iou"] <= 1.0 for f in with_gt)
    for f in result.findings:
        assert f.cam.shape == (1024, 1024) and np.isfinite(f.cam).all()
        for b in f.boxes:
            assert 0 <= b.x and b.x2 <= 1024 and 0 <= b.y and b.y2 <= 1024
    paths = write_outputs(analysis, tmp_path, analysis_json=True)
    assert (tmp_path / Path(name).stem / "analysis.json") in paths
