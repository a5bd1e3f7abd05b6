"""The chain (xcam/chain): settings profiles, class choice, CAM routes, the work grid, boxes in
original coordinates, consolidation, failure isolation, files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from xcam.chain.engine import build_chain
from xcam.chain.models import LoadOptions, ModelRef, clear_model_cache, parse_models
from xcam.chain.outputs import read_result, write_result
from xcam.chain.settings import CamSettings, ClassChoice, Overrides, profile_settings, resolve_settings
from xcam.core.config import XcamConfig, load_config
from xcam.core.errors import PluginError, UsageError, XcamError
from xcam.core.hookspecs import hookimpl
from xcam.core.manager import get_plugin_manager
from xcam.core.preprocess import Geometry, WorkGrid
from xcam.core.types import CamMethodRegistration

WIDTH, HEIGHT = 700, 500  # non-square, not 1024
HOT = (420.0, 180.0, 140.0, 90.0)  # x, y, w, h of the hot spot in original pixels
RANDOM = LoadOptions(random_init=True)


def write_image(path: Path, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = 120 + 60 * np.sin(xx / 40.0) * np.cos(yy / 55.0) + rng.normal(0, 8, (height, width))
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return path


class HotSpotPlugin:
    """A CAM method that lights the model pixels of :data:`HOT`; fails on images whose mean input is
    above ``fail_above`` (to test failure isolation)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], str | None]] = []
        self.fail_above: float | None = None

    def compute(self, model, batch, class_indices, target_layer=None, **options):
        self.calls.append((list(class_indices), target_layer))
        if self.fail_above is not None and float(batch.mean()) > self.fail_above:
            raise RuntimeError("hotspot: this image is too bright")
        size = batch.shape[-1]
        geometry = Geometry(WIDTH, HEIGHT, size, 0, (WIDTH - HEIGHT) // 2)
        x, y, w, h = geometry.box_to_model(*HOT)
        maps = np.zeros((len(class_indices), size, size), np.float32)
        maps[:, round(y): round(y + h), round(x): round(x + w)] = 1.0
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
    plugin = HotSpotPlugin()
    pm.load_object(plugin, "hotspot-test")
    return plugin


def hot_settings(pm, **over):
    base = dict(method="hotspot", layers="model", aug_smooth=False)
    base.update(over)
    return resolve_settings(pm, "default", Overrides(**base))


# -- profiles ----------------------------------------------------------------------------------
def test_default_profile_is_the_measured_best(pm):
    s = resolve_settings(pm)
    assert s.profile == "default" and s.mask == "threshold" and s.mask_options == {"threshold": 0.5}
    assert s.strategy == "largest" and s.ensembler == "mean" and s.work_size == "model"
    assert s.cam_for("densenet121") == CamSettings("gradcam", "auto", False, False, {})
    assert s.cam_for("mobilenetv3") == CamSettings("layercam", "auto", True, False, {})


def test_profiles_from_plugins_toml_extend_and_are_checked(tmp_path):
    path = tmp_path / "plugins.toml"
    path.write_text('[defaults]\nprofile = "mine"\n'
                    '[profiles.mine]\nextends = "fast"\nmask_extractor = "otsu"\nbbox_strategy = "components"\n'
                    '[profiles.mine.strategy_options]\nmin_area = 0.02\n'
                    '[profiles.mine.classifiers.densenet121]\ncam_method = "gradcam++"\n')
    pm = get_plugin_manager(load_config(path), entrypoints=False)
    s = resolve_settings(pm)
    assert s.profile == "mine" and s.mask == "otsu" and s.strategy_options == {"min_area": 0.02}
    assert s.mask_options == {"threshold": 0.5}  # inherited from default through fast
    assert s.cam_for("densenet121").method == "gradcam++"
    assert s.cam_for("mobilenetv3") == CamSettings("gradcam", "model", False, False, {})  # fast's override
    # the command line wins over every per-classifier value
    over = resolve_settings(pm, None, Overrides(method="layercam", aug_smooth=True))
    assert over.cam_for("densenet121").method == over.cam_for("mobilenetv3").method == "layercam"
    assert over.cam_for("resnet50").aug_smooth

    path.write_text('[profiles.bad]\nmask_extractr = "otsu"\n')
    with pytest.raises(XcamError, match=r"plugins.toml: \[profiles.bad\]: unknown key 'mask_extractr'"):
        profile_settings(load_config(path), "bad")
    path.write_text('[profiles.loop]\nextends = "loop"\n')
    with pytest.raises(XcamError, match="'extends' loops"):
        profile_settings(load_config(path), "loop")
    path.write_text('[profiles.p]\n[profiles.p.classifiers.densenet121]\nmask_extractor = "otsu"\n')
    with pytest.raises(XcamError, match="may set only"):
        profile_settings(load_config(path), "p")
    with pytest.raises(UsageError, match="unknown profile 'nope'; available: default, exact, fast, legacy"):
        profile_settings(XcamConfig(), "nope")


def test_options_of_the_profiles_plugin_do_not_follow_another_plugin(pm):
    """--mask/--strategy naming another plugin starts from no options (the profile's belong to its
    own plugin); naming the same plugin, or giving options alone, keeps and extends them."""
    assert resolve_settings(pm).mask_options == {"threshold": 0.5}
    assert resolve_settings(pm, None, Overrides(mask="otsu")).mask_options == {}
    other = resolve_settings(pm, None, Overrides(mask="percentile", mask_options={"percent": 10}))
    assert other.mask_options == {"percent": 10}
    assert resolve_settings(pm, None, Overrides(mask="threshold")).mask_options == {"threshold": 0.5}
    assert resolve_settings(pm, None, Overrides(mask_options={"threshold": 0.7})).mask_options == {"threshold": 0.7}
    boxes = resolve_settings(pm, None, Overrides(strategy="components", strategy_options={"min_area": 0.01}))
    assert boxes.strategy_options == {"min_area": 0.01} and boxes.mask_options == {"threshold": 0.5}


def test_old_defaults_keys_override_every_profile(tmp_path):
    path = tmp_path / "plugins.toml"
    path.write_text('[defaults]\ncam_method = "gradcam++"\nmask_extractor = "otsu"\n')
    s = profile_settings(load_config(path))
    assert s.mask == "otsu" and s.cam_for("mobilenetv3").method == s.cam.method == "gradcam++"


def test_unknown_plugin_in_settings_fails_before_models_load(pm):
    with pytest.raises(PluginError, match="unknown mask extractor 'otsuu'"):
        resolve_settings(pm, None, Overrides(mask="otsuu"))


def test_parse_models():
    assert parse_models("densenet121, mobilenetv3:runs/a.pt", "x") == (
        ModelRef("densenet121", None, "densenet121"), ModelRef("mobilenetv3", "runs/a.pt", "mobilenetv3"))
    assert parse_models(None, "densenet121", "nih") == (ModelRef("densenet121", "nih", "densenet121"),)
    twice = parse_models("densenet121:nih,densenet121:all", "x")
    assert [r.prefix for r in twice] == ["densenet121@nih", "densenet121@all"]
    with pytest.raises(UsageError, match="listed twice"):
        parse_models("a,a", "x")
    with pytest.raises(UsageError, match="--weights names one"):
        parse_models("a,b", "x", "nih")


# -- class choice ----------------------------------------------------------------------------
def test_class_choice(pm, image_path, hotspot):
    chain = build_chain(pm, "mobilenetv3", hot_settings(pm), ClassChoice(top_k=2, threshold=0.0), load=RANDOM)
    result = chain.analyze(image_path)
    probs = result.results[0].predictions
    top = sorted(probs, key=lambda k: -probs[k])[:2]
    assert [f.pathology for f in result.results[0].findings] == top
    assert {f.reason for f in result.results[0].findings} == {"top-k"}

    targets = chain.with_choice(ClassChoice(targets=("MASS", "pleural thickening")))
    assert [f.pathology for _, f in targets.analyze(image_path).findings] == ["Mass", "Pleural_Thickening"]

    gt = chain.with_choice(ClassChoice.none(ground_truth=True)).analyze(image_path, [("Infiltrate", HOT)])
    (finding,) = gt.results[0].findings
    assert finding.pathology == "Infiltration" and finding.reason == "ground-truth"
    assert finding.ground_truth == [HOT] and finding.metrics["iou"] > 0.85

    everything = chain.with_choice(ClassChoice(all_classes=True)).analyze(image_path)
    assert len(everything.results[0].findings) == 14
    with pytest.raises(UsageError, match="'Cardiomegalyy'; valid: .*Cardiomegaly"):
        chain.with_choice(ClassChoice(targets=("Cardiomegalyy",)))


# -- geometry: the work grid and boxes in original pixels ---------------------------------------
def test_work_grid_of_a_non_square_image():
    geometry = Geometry(WIDTH, HEIGHT, 224, 0, (WIDTH - HEIGHT) // 2)
    grid = WorkGrid.of(geometry)
    assert grid.side == 224 and grid.shape == (160, 224)  # the padding rows are cropped off
    assert grid.box_to_original(0, 0, 224, 160) == (0.0, 0.0, float(WIDTH), float(HEIGHT))
    assert grid.point_to_original(0, 0) == pytest.approx((WIDTH / 224 / 2, HEIGHT / 160 / 2))
    full = WorkGrid.full(geometry)
    assert full.shape == (HEIGHT, WIDTH) and full.scale_x == full.scale_y == 1.0
    square = np.zeros((224, 224), np.float32)
    square[32:40, 100:110] = 1.0  # model space: rows 32.. are image rows (32 - 32) · 700/224
    work = grid.from_model(square)
    assert work.shape == (160, 224) and work[0:8, 100:110].min() == 1.0


def test_hot_spot_box_lands_in_original_coordinates(pm, hotspot, image_path):
    chain = build_chain(pm, "mobilenetv3", hot_settings(pm), ClassChoice(targets=("MASS",)), load=RANDOM)
    result = chain.analyze(image_path, ground_truth=[("mass", HOT)])
    (finding,) = result.results[0].findings
    assert finding.pathology == "Mass" and finding.reason == "target"
    assert finding.cam.shape == finding.mask.shape == result.grid.shape == (160, 224)
    assert finding.cam.dtype == np.float32 and 0.0 <= finding.cam.min() and finding.cam.max() <= 1.0
    scale = WIDTH / 224
    for got, want in zip((finding.box.x, finding.box.y, finding.box.width, finding.box.height), HOT):
        assert abs(got - want) <= 2 * scale, (finding.box, HOT)
    assert finding.metrics["iou"] > 0.85 and finding.metrics["pointing_game"] == 1.0
    x, y = finding.peak
    assert HOT[0] <= x <= HOT[0] + HOT[2] and HOT[1] <= y <= HOT[1] + HOT[3]
    assert hotspot.calls == [([finding.class_index], "net.features.16")]
    assert set(result.timings.seconds) >= {"load", "model", "cam", "mask_box"}


def test_full_resolution_profile_gives_nearly_the_same_boxes(pm, hotspot, image_path):
    base = build_chain(pm, "mobilenetv3", hot_settings(pm), ClassChoice(targets=("Mass",)), load=RANDOM)
    exact = build_chain(pm, "mobilenetv3", dataclasses.replace(hot_settings(pm), work_size="full"),
                        ClassChoice(targets=("Mass",)), load=RANDOM)
    a, b = base.analyze(image_path).results[0].findings[0], exact.analyze(image_path).results[0].findings[0]
    assert b.cam.shape == (HEIGHT, WIDTH)
    for u, v in zip((a.box.x, a.box.y, a.box.x2, a.box.y2), (b.box.x, b.box.y, b.box.x2, b.box.y2)):
        assert abs(u - v) <= WIDTH / 224 + 1  # within one work pixel


# -- CAM routes --------------------------------------------------------------------------------
def test_in_graph_route_needs_no_pytorch_model_on_onnx(pm, image_path):
    pytest.importorskip("onnxruntime")
    settings = resolve_settings(pm, "fast")
    chain = build_chain(pm, "densenet121", settings, ClassChoice(top_k=2, threshold=0.0),
                        load=LoadOptions(backend="onnx", random_init=True))
    result = chain.analyze(image_path)
    (model,) = chain.models
    assert result.results[0].method == "gradcam (in-graph)" and len(result.results[0].findings) == 2
    assert not model.autograd_loaded  # Grad-CAM came from the ONNX graph
    layer = chain.with_choice(ClassChoice(top_k=1, threshold=0.0))
    layer.settings = resolve_settings(pm, "fast", Overrides(method="layercam"))
    layer._plans = {}
    assert layer.analyze(image_path).results[0].method == "layercam"
    assert model.autograd_loaded  # LayerCAM needed autograd: the PyTorch model was built once


def test_in_graph_and_plugin_routes_agree(pm, image_path):
    """The exact in-graph Grad-CAM (with and without test-time augmentation) equals the
    pytorch-grad-cam plugin on the same layer: same boxes."""
    from xcam.chain.cams import in_graph_cams, plan, plugin_cams
    from xcam.core.preprocess import preprocess
    import cv2

    from xcam.core.imageio import load_image

    chain = build_chain(pm, "densenet121", resolve_settings(pm), ClassChoice(), load=RANDOM)
    (model,) = chain.models
    x, _ = preprocess(load_image(image_path), 224)
    for aug in (False, True):
        route = plan(model, CamSettings("gradcam", "model", aug), pm)
        assert route.in_graph
        _, maps = in_graph_cams(model, x[None], aug)
        (ref,) = plugin_cams(model, x[None], [(0, 2)], dataclasses.replace(route, in_graph=False), pm, None)
        mine = cv2.resize(maps[0, 2], (224, 224))
        mine = (mine - mine.min()) / (mine.max() - mine.min())
        # equal in exact arithmetic (resize, flips and means commute); float32 rounding differs
        # a little with augmentation (measured 3.1e-3 max, 2e-4 mean on this image)
        assert np.abs(mine - ref).max() < (5e-3 if aug else 1e-5)


def test_layer_fusion_passes_each_layer_to_the_plugin(pm, hotspot, image_path):
    settings = hot_settings(pm, layers=["net.features.3", "net.features.5"])
    chain = build_chain(pm, "mobilenetv3", settings, ClassChoice(targets=("Mass",)), load=RANDOM)
    result = chain.analyze(image_path)
    assert [layer for _, layer in hotspot.calls] == ["net.features.3", "net.features.5"]
    assert result.results[0].layers == ("net.features.3", "net.features.5")


# -- batches and failures --------------------------------------------------------------------
def test_a_batch_equals_images_one_by_one(pm, tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    chain = build_chain(pm, "densenet121", resolve_settings(pm), ClassChoice(top_k=2, threshold=0.0), load=RANDOM)
    together = list(chain.stream(paths, batch_size=3))
    for path, result in zip(paths, together):
        alone = chain.analyze(path)
        assert result.path == str(path)
        got = [(f.pathology, f.box.x, f.box.y, f.box.width, f.box.height) for _, f in result.findings if f.box]
        want = [(f.pathology, f.box.x, f.box.y, f.box.width, f.box.height) for _, f in alone.findings if f.box]
        assert got == want and len(got) == 2  # scores agree to float32 rounding only
        assert [f.box.score for _, f in result.findings] == pytest.approx([f.box.score for _, f in alone.findings])


def test_a_failing_plugin_fails_only_its_image(pm, hotspot, tmp_path):
    dark = write_image(tmp_path / "dark.png")
    import cv2

    bright = tmp_path / "bright.png"
    cv2.imwrite(str(bright), np.full((HEIGHT, WIDTH), 250, np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    hotspot.fail_above = 900.0  # xrv scaling: 250 grey → about 1000
    chain = build_chain(pm, "mobilenetv3", hot_settings(pm), ClassChoice(targets=("Mass",)), load=RANDOM)
    results = list(chain.stream([dark, bright, broken], batch_size=3))
    assert [r.ok for r in results] == [True, False, False]
    assert "hotspot: this image is too bright" in results[1].error and "\n" not in results[1].error
    assert results[2].error and "broken.png" not in results[2].error  # the reason; the path is .path
    assert results[0].results[0].findings[0].box is not None


# -- consolidation and files -------------------------------------------------------------------
def test_two_models_are_consolidated_and_written(pm, hotspot, image_path, tmp_path):
    chain = build_chain(pm, "mobilenetv3,densenet121", hot_settings(pm),
                        ClassChoice(targets=("Mass", "Lung Opacity")), load=RANDOM, keep_images=True)
    result = chain.analyze(image_path, ground_truth=[("Mass", HOT)])
    assert [c.pathology for c in result.consolidated] == ["Mass"]  # Lung Opacity: densenet121 only
    c = result.consolidated[0]
    assert c.models == ["mobilenetv3", "densenet121"] and c.ensembler == "mean" and c.metrics["iou"] > 0.85
    assert set(result.combined_predictions) >= {"Mass", "Lung Opacity", "Hernia"}
    assert result.localized()["mass"] is c

    written = write_result(result, tmp_path)
    folder = tmp_path / "chest 01"
    for prefix in ("mobilenetv3_Mass", "densenet121_Mass", "densenet121_Lung Opacity"):
        for suffix in ("_P0.png", "_P1.png", "_P2.png", "_P3.png", "_PBBox.png", "_PBBox.json", "_cam.npy"):
            assert (folder / f"{prefix}{suffix}").is_file(), prefix + suffix
    for name in ("Mass_consolidated.png", "Mass_consolidated_cam.npy", "Mass_consolidated_P0.png",
                 "Mass_consolidated_bbox.json", "Mass_consolidated_bbox.png", "analysis.json", "_input_image_.png"):
        assert (folder / name).is_file(), name
    from xcam.core.render import PREDICTION, TRUTH, read_mask, read_png

    assert read_png(folder / "densenet121_Mass_P0.png", color=True).shape == (HEIGHT, WIDTH, 3)
    assert read_mask(folder / "densenet121_Mass_P3.png").shape == (HEIGHT, WIDTH)
    assert np.load(folder / "densenet121_Mass_cam.npy").shape == (160, 224)  # the work grid
    boxes = read_png(folder / "Mass_consolidated_bbox.png", color=True)
    x, y, w, h = (int(v) for v in HOT)
    assert tuple(boxes[y, x + w // 2]) in (TRUTH, PREDICTION)  # the top edge, truth drawn over prediction
    meta = json.loads((folder / "metadata.json").read_text())
    assert set(meta["models"]) == {"mobilenetv3", "densenet121"} and meta["image_size"] == [WIDTH, HEIGHT]
    report = json.loads((folder / "analysis.json").read_text())
    assert report["consolidated"][0]["models"] == ["mobilenetv3", "densenet121"]
    assert report["models"][1]["findings"][0]["files"] and folder / "metadata.json" in written

    stored = read_result(folder)  # the outputs module reads back what it wrote
    assert stored.width == WIDTH and stored.height == HEIGHT
    assert stored.finding("densenet121", "mass").boxes == result.results[1].findings[0].boxes
    assert stored.consolidated[0].boxes == c.boxes
    assert np.allclose(stored.finding("mobilenetv3", "Mass").cam(), result.results[0].findings[0].cam, atol=1e-3)


def test_json_only_writes_no_images(pm, hotspot, image_path, tmp_path):
    chain = build_chain(pm, "mobilenetv3", hot_settings(pm), ClassChoice(targets=("Mass",)), load=RANDOM)
    result = chain.analyze(image_path)
    assert result.image is None  # not kept: nothing to render
    write_result(result, tmp_path, render=False, arrays=False)
    names = sorted(p.name for p in (tmp_path / "chest 01").iterdir())
    assert names == ["analysis.json", "metadata.json", "mobilenetv3_Mass_PBBox.json"]
    assert result.timings.seconds["write"] > 0
    with pytest.raises(XcamError, match="keep_images"):
        write_result(result, tmp_path, render=True)


def test_unknown_model_fails_early(pm):
    with pytest.raises(PluginError, match="densenet121"):
        build_chain(pm, "nosuchnet", resolve_settings(pm), load=RANDOM)


def test_model_cache_is_shared_across_chains(pm):
    clear_model_cache()
    a = build_chain(pm, "mobilenetv3", resolve_settings(pm), load=RANDOM)
    b = build_chain(pm, "mobilenetv3", resolve_settings(pm, "fast"), load=RANDOM)
    assert a.models[0].classifier is b.models[0].classifier


# -- real images -----------------------------------------------------------------------------
def test_real_nih_image_with_ground_truth(pm, shared_data, tmp_path):
    from xcam.core.labels import label_key
    from xcam.core.nih import read_box_table

    nih = shared_data / "nih"
    table = read_box_table(nih / "BBox_List_2017_subset.csv")
    name = min(table)
    chain = build_chain(pm, "densenet121", resolve_settings(pm), ClassChoice(top_k=1, threshold=0.0), load=RANDOM,
                        keep_images=True)
    result = chain.analyze(nih / "images" / name, table[name])
    assert result.width == result.height == 1024 and result.grid.shape == (224, 224)
    keys = {label_key(label) for label, _ in table[name]}
    with_gt = [f for _, f in result.findings if label_key(f.pathology) in keys]
    assert with_gt and all(f.reason in ("ground-truth", "top-k") for f in with_gt)
    from xcam.core.metrics import box_iou

    for f in with_gt:  # the metrics are those of the top box against the truth it overlaps most
        best = max(box_iou(f.box, g) for g in f.ground_truth) if f.box else 0.0
        assert f.metrics["iou"] == pytest.approx(best)
    for _, f in result.findings:
        for b in f.boxes:
            assert 0 <= b.x and b.x2 <= 1024 and 0 <= b.y and b.y2 <= 1024
    paths = write_result(result, tmp_path)
    assert (tmp_path / Path(name).stem / "analysis.json") in paths


# -- plugins that fail ---------------------------------------------------------------------------
class Misbehaving:
    """A CAM method that raises on some calls and breaks its contract on others."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0

    def compute(self, model, batch, class_indices, **options):
        self.calls += 1
        n, size = len(class_indices), batch.shape[-1]
        if self.mode == "raise":
            raise RuntimeError("flaky plugin failure")
        if self.mode == "nan":
            return np.full((n, size, size), np.nan, np.float32)
        if self.mode == "range":
            return np.full((n, size, size), 3.0, np.float32)
        return np.zeros((n + 1, size, size), np.float32)  # "shape": one map too many

    @hookimpl
    def xcam_cam_methods(self):
        yield CamMethodRegistration(name="bad", compute=self.compute)


@pytest.mark.parametrize("mode, message", [
    ("raise", "cam method 'bad' (local): RuntimeError: flaky plugin failure"),
    ("nan", "cam method 'bad' (local): broke the contract: NaN or infinite values in the maps"),
    ("range", "broke the contract: values outside [0, 1] (min 3, max 3)"),
    ("shape", "broke the contract: maps of shape (2, 224, 224) for 1 image(s)"),
])
def test_a_misbehaving_cam_plugin_fails_its_images_with_one_line(pm, image_path, mode, message):
    plugin = Misbehaving(mode)
    pm.load_object(plugin, "bad-test")
    chain = build_chain(pm, "mobilenetv3", resolve_settings(pm, None, Overrides(method="bad", layers="model",
                                                                                   aug_smooth=False)),
                        ClassChoice(targets=("Mass",)), load=RANDOM)
    (result,) = chain.run([chain.prepare(image_path)])
    assert result.error is not None and message in result.error and "\n" not in result.error
    with pytest.raises(XcamError, match="bad"):
        chain.fail_fast = True
        chain.run([chain.prepare(image_path)])


def test_a_plugin_failing_on_every_image_stops_the_job(pm, tmp_path):
    from xcam.chain.guard import PluginGaveUp

    pm.load_object(Misbehaving("raise"), "bad-test")
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    chain = build_chain(pm, "mobilenetv3", resolve_settings(pm, None, Overrides(method="bad", layers="model")),
                        ClassChoice(targets=("Mass",)), load=RANDOM, max_plugin_failures=3)
    seen = []
    with pytest.raises(PluginGaveUp, match=r"stopping: cam method 'bad' \(local\) failed on 3 images in a row"):
        for result in chain.stream(paths, batch_size=1):
            seen.append(result)
    assert len(seen) == 3 and all(r.error for r in seen)  # the third, which stopped the job, is returned too


def test_a_bbox_strategy_returning_boxes_outside_the_mask_is_caught(pm, image_path, hotspot):
    from xcam.core.types import BboxStrategyRegistration, ScoredBox

    class Outside:
        @hookimpl
        def xcam_bbox_strategies(self):
            yield BboxStrategyRegistration(name="outside", boxes=lambda mask, cam=None, **_: [
                ScoredBox(0, 0, mask.shape[1] + 50, 10)])

    pm.load_object(Outside(), "outside-test", distribution="xcam-outside")
    chain = build_chain(pm, "mobilenetv3", hot_settings(pm, strategy="outside"), ClassChoice(targets=("Mass",)),
                        load=RANDOM)
    (result,) = chain.run([chain.prepare(image_path)])
    assert "bbox strategy 'outside' (xcam-outside): broke the contract: box (x=0, y=0, w=274, h=10) outside" \
        in result.error
