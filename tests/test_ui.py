"""The Streamlit UI driven by Streamlit's AppTest (no browser), and its Streamlit-free helpers.

Models run with random weights (``XCAM_UI_RANDOM_WEIGHTS=1``) except where weight loading itself is
tested; the default model is MobileNetV3 (fast on a CPU) and the third-party example plugin
(``tests/example_plugin``, made visible through a throw-away ``dist-info`` entry point) shows that a
new classifier appears in the page without UI changes. Every page runs with its own empty
``$XCAM_HOME`` and weight cache; the offline first-run tests put a small ``xcam demo`` cache there
(:func:`make_demo_cache`: six phantoms and a random-init checkpoint, no training).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import install_entry_point

from xcam.chain.models import clear_model_cache
from xcam.core.demo_assets import DEMO_COMMAND, DemoAssets, demo_caches, find_demo
from xcam.core.errors import UsageError
from xcam.ui.choices import (DEMO_LABEL, NO_WEIGHTS_HINT, VariantChoice, default_index, default_models,
                             needs_demo_hint, variant_choices)
from xcam.ui.export import zip_bytes
from xcam.ui.groundtruth import label_key, parse_file, parse_text, pick
from xcam.ui.settings import UiSettings, parse_checkpoint
from xcam.ui.uploads import SessionFolder, UploadError, safe_filename

APP = Path(__file__).resolve().parents[1] / "xcam" / "ui" / "app.py"
EXAMPLE_PLUGIN_SRC = Path(__file__).resolve().parent / "example_plugin" / "src"


def png_bytes(size: tuple[int, int] = (200, 160)) -> bytes:
    """A synthetic grey radiograph-like PNG (a bright blob on a gradient)."""
    import cv2

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = 60 + 80 * xx / w + 100 * np.exp(-(((xx - 0.6 * w) / 20) ** 2 + ((yy - 0.4 * h) / 25) ** 2))
    return cv2.imencode(".png", np.clip(image, 0, 255).astype(np.uint8))[1].tobytes()


# -- Streamlit-free helpers ----------------------------------------------------------------
def test_settings_round_trip_through_environment(tmp_path):
    settings = UiSettings(images_dir=tmp_path, weights_dir=tmp_path / "w", max_upload_mb=2.5, random_weights=True,
                          checkpoints=(("mobilenetv3", str(tmp_path / "best.pt")),), models=("a", "b"), profile="fast")
    back = UiSettings.from_env(settings.to_env())
    assert back == settings
    assert back.max_upload_bytes == int(2.5 * 1024 * 1024)
    assert back.checkpoints_for("MobileNetV3") == [str(tmp_path / "best.pt")]
    assert UiSettings.from_env({"XCAM_UI_MAX_UPLOAD_MB": "lots"}).max_upload_mb == 50
    assert parse_checkpoint("runs/best.pt") == ("mobilenetv3", str(Path("runs/best.pt").resolve()))
    assert parse_checkpoint("tinycnn=/x/y.pt") == ("tinycnn", "/x/y.pt")


def test_session_folder_keeps_uploads_inside_and_cleans_up():
    folder = SessionFolder()
    root = folder.path
    saved = folder.save_upload("../../etc/passwd x?.png", b"abc", max_bytes=10)
    assert saved.parent == (root / "uploads").resolve() and saved.name == "passwd_x_.png"
    second = folder.save_upload("b.png", b"def", max_bytes=10)
    assert not saved.exists() and second.read_bytes() == b"def"  # only the latest upload is kept
    with pytest.raises(UploadError, match="too large"):
        folder.save_upload("big.png", b"x" * 11, max_bytes=10)
    with pytest.raises(UploadError, match="empty"):
        folder.save_upload("none.png", b"", max_bytes=10)
    folder.cleanup()
    assert not root.exists() and not folder.alive
    assert safe_filename("..") == "upload" and safe_filename("C:\\x\\scan.dcm") == "scan.dcm"


def test_ground_truth_text_and_files():
    gt = parse_text("Cardiomegaly,277.5,459,540,301", 1024, 1024)
    assert gt.box == (277.5, 459.0, 540.0, 301.0) and gt.text == "Cardiomegaly,277.5,459,540,301"
    with pytest.raises(UsageError, match="outside"):
        parse_text("Mass,900,900,200,200", 1024, 1024)
    nih = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
           "a.png,Infiltrate,10,20,30,40\nb.png,Mass,1,2,3,4\na.png,Nodule,5,6,7,8\n")
    boxes = parse_file(nih.encode(), "a.png")
    assert [g.label for g in boxes] == ["Infiltrate", "Nodule"]
    assert pick(boxes, "Infiltration").box == (10, 20, 30, 40)  # NIH's two spellings are one class
    assert pick(boxes, "Mass") is None
    assert label_key("Pleural_Thickening") == label_key("pleural thickening")
    assert parse_file("Effusion,1,2,3,4\n", "any.png")[0].label == "Effusion"
    with pytest.raises(UsageError, match="not a number"):
        parse_file("Effusion,1,2,three,4\n", "any.png")


def test_zip_holds_images_and_the_page_json():
    data = zip_bytes({"m_Effusion_P0.png": np.zeros((4, 5, 3), np.uint8), "m_Effusion_P3.png": np.ones((4, 5), bool)},
                     {"pathology": "Effusion", "value": np.float32(0.5)})
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(archive.namelist()) == ["analysis.json", "m_Effusion_P0.png", "m_Effusion_P3.png"]
    assert json.loads(archive.read("analysis.json")) == {"pathology": "Effusion", "value": 0.5}


# -- the demo's model and phantoms (first run offline) ---------------------------------------
def make_demo_cache(home: Path, name: str = "fast-test", n: int = 6, seed: int = 7) -> DemoAssets:
    """What ``xcam demo --fast`` caches, without training: ``n`` held-out phantoms with their box
    list, and a random-init MobileNetV3 checkpoint in ``xcam train``'s format."""
    import torch

    from xcam.core.labels import NO_FINDING
    from xcam.datasets.phantom import generate_phantoms
    from xcam.nets.mobilenet import MobileNetV3

    root = home / "demo" / name
    phantoms = generate_phantoms(root / "heldout", n=n, size=128, seed=seed)
    labels = [label for label in phantoms.image_counts if label != NO_FINDING]
    torch.manual_seed(0)
    net = MobileNetV3(arch="mobilenet_v3_small", input_size=128, labels=labels)
    (root / "run").mkdir(parents=True)
    torch.save(net.checkpoint_object(), root / "run" / "best.pt")
    return DemoAssets.at(root)


def fake_cache(home: Path, name: str, parts=("run/best.pt", "heldout/images/", "heldout/BBox_List_2017.csv"),
               age_s: float = 0.0) -> Path:
    """A demo cache folder holding only ``parts`` (empty files; ``/``-ended: folders), its
    checkpoint ``age_s`` seconds old."""
    import time

    root = home / "demo" / name
    for part in parts:
        target = root / part
        if part.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" if target.suffix == ".csv" else "x")
    checkpoint = root / "run" / "best.pt"
    if checkpoint.is_file():
        when = time.time() - age_s
        os.utime(checkpoint, (when, when))
    return root


def test_find_demo_takes_complete_caches_full_first_then_newest(tmp_path):
    home = tmp_path / "home"
    assert find_demo(home) is None  # no $XCAM_HOME/demo at all
    fake_cache(home, "fast-nocheckpoint", ("heldout/images/", "heldout/BBox_List_2017.csv"))
    fake_cache(home, "fast-noboxes", ("run/best.pt", "heldout/images/"))
    fake_cache(home, "fast-noimages", ("run/best.pt", "heldout/BBox_List_2017.csv"))
    assert find_demo(home) is None and demo_caches(home) == []  # incomplete caches never count
    old = fake_cache(home, "fast-old", age_s=3600)
    assert find_demo(home).root == old
    new = fake_cache(home, "fast-new", age_s=10)
    found = find_demo(home)
    assert found.root == new and found.preset == "fast"  # the newest checkpoint wins
    assert found.checkpoint == new / "run" / "best.pt" and found.images == new / "heldout" / "images"
    assert found.boxes == new / "heldout" / "BBox_List_2017.csv"
    assert found.labels == new / "heldout" / "Data_Entry_2017.csv"
    full = fake_cache(home, "full-abc", age_s=7200)
    assert find_demo(home).root == full  # the full preset wins over fast, however old
    assert [c.root.name for c in demo_caches(home)] == ["full-abc", "fast-new", "fast-old"]
    assert find_demo(str(home)) == find_demo(home)
    assert DEMO_COMMAND == "xcam demo --fast"


def test_find_demo_defaults_to_xcam_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XCAM_HOME", str(tmp_path / "elsewhere"))
    assert find_demo() is None
    root = fake_cache(tmp_path / "elsewhere", "fast-1")
    assert find_demo().root == root


def test_demo_examples_are_the_held_out_images_with_boxes(tmp_path):
    from xcam.core.nih import read_box_table

    demo = make_demo_cache(tmp_path / "home")
    assert find_demo(tmp_path / "home") == demo
    table = read_box_table(demo.boxes)
    examples = demo.examples()
    assert examples and [p.name for p in examples] == sorted(table)  # only those with boxes, sorted
    assert len(list(demo.images.glob("*.png"))) > len(examples)  # the phantoms without findings are left out
    assert demo.examples(limit=2) == examples[:2]
    assert demo.ground_truth(examples[0]) == table[examples[0].name]
    assert demo.ground_truth("nosuch.png") == []


def test_weight_choices_and_the_models_the_page_opens_with(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("XRV_CACHE_DIR", str(tmp_path / "xrv"))  # no weights anywhere but what we write
    weights = tmp_path / "weights"
    weights.mkdir()
    s = UiSettings(weights_dir=weights)
    demo = DemoAssets.at(fake_cache(tmp_path / "home", "fast-1"))
    mobilenet, densenet = pm.classifier("mobilenetv3"), pm.classifier("densenet121")
    names = sorted(pm.classifiers())

    def has_weights(setting: UiSettings, with_demo):
        return lambda m: any(c.present for c in variant_choices(pm.classifier(m), setting, None, with_demo))

    # no weight files: the demo checkpoint is offered for mobilenetv3 only, and selected
    menu = variant_choices(mobilenet, s, None, demo)
    assert menu == [VariantChoice("mobilenetv3-nih", "mobilenetv3-nih (file missing)", False),
                    VariantChoice(str(demo.checkpoint), DEMO_LABEL, True, demo=True)]
    assert default_index(menu) == 1
    assert not any(c.demo for c in variant_choices(densenet, s, None, demo))
    assert default_models(names, (), "densenet121", has_weights(s, demo), demo) == ["mobilenetv3"]
    assert default_models(names, (), "densenet121", has_weights(s, None), None) == ["densenet121"]
    assert default_models(names, ("densenet121",), "densenet121", has_weights(s, demo), demo) == ["densenet121"]
    assert default_models(names, ("nosuch",), None, has_weights(s, demo), demo) == ["mobilenetv3"]
    # with --random-weights every variant counts as present and the demo is not offered
    random = UiSettings(weights_dir=weights, random_weights=True)
    assert not any(c.demo for c in variant_choices(mobilenet, random, None, demo))
    assert default_models(names, (), "densenet121", has_weights(random, demo), demo, True) == ["densenet121"]
    # a checkpoint given with --weights comes before the demo; the demo's own path is not listed twice
    given = UiSettings(weights_dir=weights, checkpoints=(("mobilenetv3", "/runs/best.pt"),))
    assert [c.label for c in variant_choices(mobilenet, given, None, demo)] == [
        "mobilenetv3-nih (file missing)", "checkpoint /runs/best.pt", DEMO_LABEL]
    same = UiSettings(weights_dir=weights, checkpoints=(("mobilenetv3", str(demo.checkpoint)),))
    assert [c.demo for c in variant_choices(mobilenet, same, None, demo)] == [False, False]
    # real weights, once present, are preferred: the default model stays, mobilenetv3 picks its file
    (weights / densenet.default.filename).write_bytes(b"x")
    assert default_models(names, (), "densenet121", has_weights(s, demo), demo) == ["densenet121"]
    (weights / "mobilenetv3-nih.pt").write_bytes(b"x")
    menu = variant_choices(mobilenet, s, None, demo)
    assert [c.label for c in menu] == ["mobilenetv3-nih (✓ file present)", DEMO_LABEL] and default_index(menu) == 0
    assert default_index([VariantChoice("a", "a", False), VariantChoice("b", "b", False)]) == 0


def test_the_no_weights_hint_needs_no_weights_and_no_demo(tmp_path):
    missing, present = VariantChoice("v", "v", False), VariantChoice("w", "w", True)
    demo = DemoAssets.at(tmp_path)
    assert needs_demo_hint([[missing], [missing]], None)
    assert not needs_demo_hint([[missing], [missing, present]], None)
    assert not needs_demo_hint([[missing]], demo)
    assert not needs_demo_hint([[missing]], None, random_weights=True)
    assert not needs_demo_hint([], None)  # no model selected: the page says so itself
    assert DEMO_COMMAND in NO_WEIGHTS_HINT and "about a minute" in NO_WEIGHTS_HINT


def boxes_of(items) -> list[tuple[float, float, float, float, float]]:
    return [(b.x, b.y, b.width, b.height, b.score) for b in items]


def test_ui_engine_gives_the_boxes_of_the_chain(tmp_path):
    """The page's two passes give the boxes, peaks, CAMs, consolidation and (ground truth applied
    afterwards) metrics that ``build_chain(...).analyze`` gives, as ``xcam analyze`` runs it, for the
    same image, models and settings: a profile with per-classifier CAM settings (MobileNetV3:
    LayerCAM fused over two layers with test-time augmentation; DenseNet: in-graph Grad-CAM) and
    the page's plugin choices over it."""
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.settings import ClassChoice, Overrides, resolve_settings
    from xcam.core.config import XcamConfig
    from xcam.core.imageio import load_image
    from xcam.core.manager import get_plugin_manager
    from xcam.ui import engine

    path = tmp_path / "phantom.png"
    path.write_bytes(png_bytes((300, 420)))  # not square: the work grid crops padding
    pm = get_plugin_manager(XcamConfig())
    options = engine.Options(profile="default", strategy="components", ensembler="max")
    settings = options.settings(pm)
    specs = [engine.ModelSpec("mobilenetv3", "mobilenetv3-nih"), engine.ModelSpec("densenet121", "densenet121-res224-all")]
    where = dict(store=None, device="cpu", random_init=True)
    image = load_image(path)
    clear_model_cache()
    try:
        first = engine.analyze(engine.build(pm, specs, settings, None, **where), image)
        assert [r.findings for r in first.results] == [[], []] and first.combined_predictions
        pathology = "Cardiomegaly"  # both models predict it (random DenseNet's CAM is flat for some classes)
        ui = engine.analyze(engine.build(pm, specs, settings, pathology, **where), image)
        gt = (pathology, (100.0, 80.0, 150.0, 120.0))
        ui = engine.with_ground_truth(ui, gt)

        cli_settings = resolve_settings(pm, "default", Overrides(strategy="components", ensembler="max"))
        assert cli_settings == settings
        chain = build_chain(pm, "mobilenetv3,densenet121", cli_settings,
                            ClassChoice(targets=(pathology,)), load=LoadOptions(random_init=True))
        cli = chain.analyze(str(path), ground_truth=[gt])
    finally:
        clear_model_cache()
    assert [r.method for r in ui.results] == [r.method for r in cli.results] == ["layercam", "gradcam (in-graph)"]
    assert ui.grid == cli.grid and (ui.width, ui.height) == (cli.width, cli.height) == (420, 300)
    for (_, a), (_, b) in zip(ui.findings, cli.findings, strict=True):
        assert a.pathology == b.pathology == pathology
        assert boxes_of(a.boxes) == boxes_of(b.boxes) and a.boxes
        assert a.peak == b.peak and np.array_equal(a.cam, b.cam) and np.array_equal(a.mask, b.mask)
        assert a.ground_truth == b.ground_truth == [gt[1]] and a.metrics == b.metrics
    (a,), (b,) = ui.consolidated, cli.consolidated
    assert boxes_of(a.boxes) == boxes_of(b.boxes) and a.boxes and a.metrics == b.metrics
    assert a.ensembler == "max" and a.models == ["mobilenetv3", "densenet121"]
    assert first.combined_predictions == cli.combined_predictions
    # the page's JSON is the chain's analysis.json summary with the file's name
    doc = engine.document(ui, "phantom.png", settings, pathology=pathology)
    assert doc["image"] == "phantom.png" and doc["settings"]["strategy"] == "components"
    assert [f["box"] for m in doc["models"] for f in m["findings"]] == [
        {"x": f.box.x, "y": f.box.y, "width": f.box.width, "height": f.box.height, "x2": f.box.x2, "y2": f.box.y2,
         "score": f.box.score} for _, f in cli.findings]


def test_ui_images_are_full_resolution_with_the_colour_convention(tmp_path):
    """Maps are shown at the image's resolution (not the work grid's); box images carry the
    prediction (magenta) and truth (green) colours and the consolidated image each model's colour."""
    from xcam.chain.results import Consolidation, Finding, ImageResult, ModelResult
    from xcam.core import render
    from xcam.core.preprocess import Geometry, WorkGrid
    from xcam.core.types import ScoredBox
    from xcam.ui import engine

    width, height = 400, 300
    grid = WorkGrid.of(Geometry(width, height, 64, 0, 50))
    cam = np.zeros(grid.shape, np.float32)
    cam[10:20, 30:40] = 1.0
    box = ScoredBox(30 * grid.scale_x, 10 * grid.scale_y, 10 * grid.scale_x, 10 * grid.scale_y)

    def finding(**kw):
        return Finding("Mass", 1, 0.7, "target", cam, cam > 0.5, [box], (10.0, 10.0), **kw)

    model = lambda name: ModelResult(name, "w", "torch", "gradcam", ("l",), False, "threshold", "largest",  # noqa: E731
                                     {"Mass": 0.7}, [finding()], 64)
    result = ImageResult("x.png", width, height, grid=grid, results=[model("a"), model("b")])
    result.consolidated.append(Consolidation("Mass", ["a", "b"], 0.7, "mean", cam, cam > 0.5, [box], None))
    result = engine.with_ground_truth(result, ("mass", (10.0, 10.0, 50.0, 40.0)))
    grey = np.full((height, width), 100, np.uint8)
    images = engine.finding_images(grey, result, result.results[0], result.results[0].findings[0], 0.5)
    assert sorted(images) == ["a_Mass_P0.png", "a_Mass_P3.png", "a_Mass_PBBox.png"]
    assert all(im.shape[:2] == (height, width) for im in images.values())
    rows, cols = grid.shape  # 48 x 64: the padding is cropped off
    assert images["a_Mass_P3.png"].mean() == pytest.approx(255 * 100 / (rows * cols), rel=0.1)
    drawn = images["a_Mass_PBBox.png"].reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(drawn, axis=0)}
    assert render.PREDICTION in colours and render.TRUTH in colours
    together = engine.consolidated_images(grey, result, result.consolidated[0], 0.5)
    assert sorted(together) == ["Mass_consolidated.png", "Mass_consolidated_P0.png", "Mass_consolidated_bbox.png"]
    colours = {tuple(int(v) for v in c) for c in np.unique(together["Mass_consolidated_bbox.png"].reshape(-1, 3), axis=0)}
    assert {render.PALETTE[0], render.PALETTE[1], render.PREDICTION, render.TRUTH} <= colours
    # several rows of a box list (an example phantom's two Mass boxes): scored as the chain scores them
    from xcam.chain.localize import box_metrics

    two = [("Mass", (10.0, 10.0, 50.0, 40.0)), ("Mass", (box.x, box.y, box.width, box.height)), ("Nodule", (1, 1, 5, 5))]
    scored = engine.with_ground_truth(result, two)
    (f,) = scored.results[0].findings
    assert f.ground_truth == [two[0][1], two[1][1]] and f.metrics["iou"] == pytest.approx(1.0)
    assert f.metrics == box_metrics([box], (10.0, 10.0), [two[0][1], two[1][1]], width, height)
    assert scored.consolidated[0].ground_truth == f.ground_truth and len(scored.ground_truth) == 3
    assert engine.with_ground_truth(result, []) is result and engine.with_ground_truth(result, None) is result


def test_ui_command_builds_streamlit_call_and_needs_streamlit(tmp_path, monkeypatch, capsys):
    from xcam.cli import main

    main(["ui", "--print-command", "--port", "9123", "--images-dir", str(tmp_path), "--max-upload-mb", "2.5",
          "--model", "mobilenetv3", "--random-weights", "--profile", "fast"])
    out = capsys.readouterr().out
    assert "XCAM_UI_PROFILE=fast" in out
    assert "-m streamlit run" in out and str(Path("xcam/ui/app.py")) in out
    assert "--server.port 9123" in out and "--server.maxUploadSize 3" in out and "--server.address 127.0.0.1" in out
    assert f"XCAM_UI_IMAGES_DIR={tmp_path}" in out and "XCAM_UI_RANDOM_WEIGHTS=1" in out
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "streamlit" else object())
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--port", "9124"])
    assert exit_info.value.code == 2
    assert 'pip install "xcam[ui]"' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an unknown profile fails before any server starts
        main(["ui", "--print-command", "--profile", "nosuch"])
    assert "unknown profile 'nosuch'" in capsys.readouterr().err


def test_app_script_has_no_stray_module_level_values():
    """Streamlit's "magic" writes every bare expression of the script's top level on the page: only
    the module docstring and the ``run()`` call may stand there."""
    import ast

    tree = ast.parse(APP.read_text())
    bare = [node for node in tree.body[1:] if isinstance(node, ast.Expr)]
    assert [ast.unparse(node) for node in bare] == ["run()"]


def test_ui_command_imports_neither_streamlit_nor_torch():
    import subprocess
    import sys

    code = ("import sys, xcam.commands.ui; "
            "print(sorted(m for m in ('streamlit', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_weights_and_random_weights_are_exclusive(tmp_path, capsys):
    from xcam.cli import main

    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"x")
    with pytest.raises(SystemExit):
        main(["ui", "--print-command", "--weights", str(checkpoint), "--random-weights"])
    assert "use one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ui", "--print-command", "--weights", str(tmp_path / "missing.pt")])
    assert "missing.pt not found" in capsys.readouterr().err


# -- the app under AppTest -----------------------------------------------------------------
try:
    import streamlit as st
    from streamlit.testing.v1 import AppTest
except ImportError:  # the helpers above are still tested
    st = AppTest = None

needs_uploader = pytest.mark.skipif(AppTest is not None and not hasattr(AppTest, "file_uploader"),
                                    reason="this Streamlit's AppTest cannot drive st.file_uploader")


@pytest.fixture
def app(monkeypatch, tmp_path):
    """``app(**env)`` → an AppTest of the UI with random MobileNetV3 weights and fresh caches."""
    if AppTest is None:
        pytest.skip("the web UI needs Streamlit (pip install 'xcam[ui]')")
    for key in list(os.environ):
        if key.startswith("XCAM_UI_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XCAM_UI_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("XCAM_UI_MODELS", "mobilenetv3")
    monkeypatch.setenv("XCAM_CONFIG", str(tmp_path / "no-plugins.toml"))  # built-in defaults, not ./plugins.toml
    monkeypatch.setenv("XCAM_HOME", str(tmp_path / "xcam-home"))  # no demo cache unless a test makes one
    monkeypatch.setenv("XRV_CACHE_DIR", str(tmp_path / "xrv-cache"))  # no weight files either
    (tmp_path / "no-plugins.toml").write_text("")
    st.cache_resource.clear()
    clear_model_cache()

    def make(**env: str) -> AppTest:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return AppTest.from_file(str(APP), default_timeout=120)

    yield make
    st.cache_resource.clear()
    clear_model_cache()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)


def chain_finding(pathology: str, path: Path, ground_truth=()):
    """What ``xcam analyze --models mobilenetv3 --random-weights --target-class PATHOLOGY`` computes
    (with the app's plugins.toml and default profile)."""
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.settings import ClassChoice, resolve_settings
    from xcam.core.config import load_config
    from xcam.core.manager import get_plugin_manager

    pm = get_plugin_manager(load_config(os.environ["XCAM_CONFIG"]))
    chain = build_chain(pm, "mobilenetv3", resolve_settings(pm, None), ClassChoice(targets=(pathology,)),
                        load=LoadOptions(random_init=True))
    (finding,) = chain.analyze(path, ground_truth=ground_truth).results[0].findings
    return finding


@needs_uploader
def test_upload_runs_the_whole_chain(app, tmp_path):
    from xcam.chain.outputs import finding_prefix
    from xcam.core.metrics import box_dict

    at = app()
    at.run()
    assert_clean(at)
    assert "Upload a chest X-ray" in at.info[0].value
    at.file_uploader(key="upload").upload("phantom.png", png_bytes(), "image/png")
    at.run()
    assert_clean(at)
    doc = at.session_state["xcam_document"]
    assert doc["image"] == "phantom.png" and doc["image_size"] == {"width": 160, "height": 200}
    (model,) = doc["models"]
    assert model["model"] == "mobilenetv3" and len(model["predictions"]) == 14
    assert all(0 <= p <= 1 for p in model["predictions"].values())
    assert doc["pathology"] == max(model["predictions"], key=model["predictions"].get)
    (finding,) = model["findings"]
    assert finding["pathology"] == doc["pathology"] and finding["reason"] == "target"
    if finding["box"] is None:  # random weights: this class's LayerCAM is flat (all zero), so no box
        assert finding["peak"] is None and any(c.endswith("no box (flat CAM)") for i in at.image for c in i.captions)
        at.selectbox(key="pathology").set_value("Cardiomegaly").run()
        assert_clean(at)
        doc = at.session_state["xcam_document"]
        ((model, (finding,)),) = [(m, m["findings"]) for m in doc["models"]]
    assert finding["pathology"] == doc["pathology"]
    box = finding["box"]
    assert box is not None and 0 <= box["x"] < box["x2"] <= 160 and 0 <= box["y"] < box["y2"] <= 200
    # the settings profile of plugins.toml (none here: "default"), as every command uses it
    assert doc["profile"] == "default" and doc["settings"]["profile"] == "default"
    assert model["method"] == "layercam" and model["mask_extractor"] == "threshold"  # default's mobilenetv3 CAM
    # the same boxes as the command line's chain on the same file
    (tmp_path / "phantom.png").write_bytes(png_bytes())
    expected = chain_finding(doc["pathology"], tmp_path / "phantom.png")
    assert finding["boxes"] == [box_dict(b) for b in expected.boxes] and finding["peak"] == list(expected.peak)
    captions = [m.value for m in at.markdown]
    assert any(c.startswith("Positive (≥ 0.5)") for c in captions)
    captions = [c for image in at.image for c in image.captions]
    assert "P0 overlay · " + doc["pathology"] + " · layercam" in captions
    assert any(c.startswith("mask · threshold · ") for c in captions)
    assert any(c.startswith("box · largest · ") for c in captions)
    # maps are shown at the image's resolution, not the work grid's
    prefix = finding_prefix("mobilenetv3", doc["pathology"])
    assert doc["work_grid"]["side"] == 224 and doc["work_grid"]["width"] < 224  # CAMs live in the work grid
    assert at.session_state["xcam_images"] == {"_input_image_.png": (200, 160), f"{prefix}_P0.png": (200, 160, 3),
                                               f"{prefix}_P3.png": (200, 160), f"{prefix}_PBBox.png": (200, 160, 3)}
    # the upload went into this session's private folder, which cleanup removes
    folder = at.session_state["_xcam_session_folder"]
    assert [p.name for p in (folder.path / "uploads").iterdir()] == ["phantom.png"]
    folder.cleanup()
    assert not folder.path.exists()


@needs_uploader
def test_dicom_upload_runs_the_chain(app, shared_data):
    at = app(XCAM_UI_PROFILE="fast")  # `xcam ui --profile fast`: Grad-CAM on the target layer
    at.run()
    assert at.selectbox(key="profile").value == "fast"
    dicom = shared_data / "xrv-samples" / "Fake_MONOHR1.dcm"
    at.file_uploader(key="upload").upload(dicom.name, dicom.read_bytes(), "application/dicom")
    at.run()
    assert_clean(at)
    doc = at.session_state["xcam_document"]
    assert doc["image"] == "Fake_MONOHR1.dcm" and doc["image_size"] == {"width": 1024, "height": 1024}
    assert doc["profile"] == "fast" and doc["models"][0]["method"] == "gradcam"
    assert doc["models"][0]["findings"][0]["box"] is not None


@needs_uploader
def test_bad_and_oversized_uploads_show_one_line_errors(app):
    at = app(XCAM_UI_MAX_UPLOAD_MB="0.004")  # about 4 KB
    at.run()
    at.file_uploader(key="upload").upload("bad.png", b"this is not an image", "image/png")
    at.run()
    assert not at.exception
    assert errors(at) == ["Cannot read bad.png: not a readable image (unknown or corrupt format)"]
    assert "xcam_document" not in at.session_state
    at.file_uploader(key="upload").clear()
    at.file_uploader(key="upload").upload("big.png", b"\0" * 8192, "image/png")
    at.run()
    assert not at.exception
    assert errors(at) == ["Upload refused: big.png: file too large (8.0 KB); the limit is 4.1 KB"]


@needs_uploader
def test_models_are_built_once_and_ground_truth_gives_metrics(app, monkeypatch, tmp_path):
    import xcam.export.backends as backends
    from xcam.chain.engine import Chain
    from xcam.core.metrics import box_iou

    calls: list[str | None] = []
    original = backends.load_classifier
    monkeypatch.setattr(backends, "load_classifier", lambda pm, name=None, *a, **k: calls.append(name) or original(pm, name, *a, **k))
    runs: list[str] = []
    analyze = Chain.analyze
    monkeypatch.setattr(Chain, "analyze", lambda self, *a, **k: runs.append("analyze") or analyze(self, *a, **k))
    at = app()
    at.run()
    at.file_uploader(key="upload").upload("phantom.png", png_bytes(), "image/png")
    at.run()
    at.selectbox(key="pathology").set_value("Effusion")
    at.slider(key="alpha").set_value(0.8)
    at.text_input(key="gt_text").input("Effusion,60,40,60,60")
    at.run()
    assert_clean(at)
    assert calls == ["mobilenetv3"]  # three runs, one build
    doc = at.session_state["xcam_document"]
    assert doc["ground_truth"] == [{"label": "Effusion", "box": [60.0, 40.0, 60.0, 60.0]}]
    (finding,) = doc["models"][0]["findings"]
    metrics = finding["metrics"]
    # the metrics are against the typed box: what the command line's chain gives with that box as truth
    (tmp_path / "phantom.png").write_bytes(png_bytes())
    expected = chain_finding("Effusion", tmp_path / "phantom.png", ground_truth=[("Effusion", (60, 40, 60, 60))])
    assert metrics == expected.metrics and set(metrics) >= {"iou", "dice", "iobb", "pixel_accuracy", "pointing_game"}
    b = finding["box"]
    assert metrics["iou"] == pytest.approx(box_iou((b["x"], b["y"], b["width"], b["height"]), (60, 40, 60, 60)))
    assert len(at.dataframe) == 1
    # typing the predicted box itself scores a perfect match, and recomputes no CAM
    before = len(runs)
    at.text_input(key="gt_text").input(f"Effusion,{b['x']!r},{b['y']!r},{b['width']!r},{b['height']!r}").run()
    assert_clean(at)
    assert len(runs) == before
    (again,) = at.session_state["xcam_document"]["models"][0]["findings"]
    assert again["box"] == b and again["metrics"]["iou"] == pytest.approx(1.0) and again["metrics"]["iobb"] == pytest.approx(1.0)
    at.text_input(key="gt_text").input("Tumour,1,1,10,10").run()
    assert not at.exception
    assert len(errors(at)) == 1 and "unknown class 'Tumour'" in errors(at)[0]
    at.text_input(key="gt_text").input("Effusion,1,1").run()
    assert "malformed" in errors(at)[0]


@pytest.fixture
def third_party_plugin(tmp_path, monkeypatch):
    """The example ``tinycnn`` plugin, installed the way pip would: an ``xcam`` entry point."""
    install_entry_point(tmp_path, monkeypatch, "xcam-tinycnn", "0.2.0", "tinycnn", "xcam_tinycnn.plugin",
                        EXAMPLE_PLUGIN_SRC)
    return "tinycnn"


def test_folder_pick_switch_models_and_consolidate(app, shared_data, third_party_plugin):
    at = app(XCAM_UI_IMAGES_DIR=str(shared_data / "xrv-samples"))
    at.run()
    assert "tinycnn" in at.multiselect(key="models").options  # a third-party model, no UI change
    at.radio(key="source").set_value("Pick from folder").run()
    at.selectbox(key="folder_image").set_value(shared_data / "xrv-samples" / "16747_3_1.jpg").run()
    assert_clean(at)
    assert at.session_state["xcam_document"]["image_size"] == {"width": 1036, "height": 885}
    at.multiselect(key="models").select("tinycnn").run()
    at.selectbox(key="pathology").set_value("Effusion")  # both models predict it
    at.selectbox(key="ensembler").set_value("max").run()
    assert_clean(at)
    doc = at.session_state["xcam_document"]
    assert [m["model"] for m in doc["models"]] == ["mobilenetv3", "tinycnn"]
    assert set(doc["models"][1]["predictions"]) == {"Nodule", "Mass", "Effusion"}
    assert [f["pathology"] for m in doc["models"] for f in m["findings"]] == ["Effusion", "Effusion"]
    (consolidated,) = doc["consolidated"]
    assert consolidated["ensembler"] == "max" and consolidated["models"] == ["mobilenetv3", "tinycnn"]
    assert consolidated["box"]["x2"] <= 1036 and consolidated["box"]["y2"] <= 885
    assert any(h.value == "Consolidated box (max of mobilenetv3, tinycnn)" for h in at.subheader)
    assert set(at.session_state["xcam_images"]) >= {"Effusion_consolidated.png", "Effusion_consolidated_P0.png",
                                                    "Effusion_consolidated_bbox.png", "tinycnn_Effusion_PBBox.png"}
    assert at.session_state["xcam_images"]["Effusion_consolidated_bbox.png"] == (885, 1036, 3)
    # the plugin selectors default to the profile's values; another profile changes what they keep
    assert at.selectbox(key="profile").value == "default"
    assert at.selectbox(key="mask_extractor").options[0] == "as the profile: threshold"
    assert at.selectbox(key="cam_method").options[0] == "as the profile: gradcam; mobilenetv3: layercam + aug_smooth"
    assert [m["method"] for m in doc["models"]] == ["layercam", "gradcam"]
    at.selectbox(key="profile").set_value("legacy").run()
    assert_clean(at)
    assert at.selectbox(key="mask_extractor").options[0] == "as the profile: otsu"
    doc = at.session_state["xcam_document"]
    assert doc["profile"] == "legacy" and doc["settings"]["ensembler"] == "max"  # the explicit choice stays
    assert [(m["method"], m["mask_extractor"]) for m in doc["models"]] == [("gradcam", "otsu"), ("gradcam", "otsu")]
    at.selectbox(key="pathology").set_value("Hernia").run()  # tinycnn does not predict it
    assert not at.exception
    assert errors(at) == ["tinycnn does not predict 'Hernia'; its classes: Nodule, Mass, Effusion"]
    at.multiselect(key="models").unselect("mobilenetv3").run()
    assert_clean(at)
    assert [m["model"] for m in at.session_state["xcam_document"]["models"]] == ["tinycnn"]


def test_missing_weights_name_the_file_and_checkpoints_load(app, tmp_path):
    import torch

    from xcam.nets.mobilenet import MobileNetV3

    torch.manual_seed(0)
    labels = ("Effusion", "Mass", "Nodule")
    net = MobileNetV3(labels=labels, arch="mobilenet_v3_small", input_size=96)
    checkpoint = tmp_path / "runs" / "best.pt"
    checkpoint.parent.mkdir()
    torch.save({"model_state": net.state_dict(), "labels": list(labels), "arch": "mobilenet_v3_small",
                "img_size": 96}, checkpoint)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    at = app(XCAM_UI_RANDOM_WEIGHTS="0", XCAM_WEIGHTS_DIR=str(weights_dir),
             XCAM_UI_CHECKPOINTS=f"mobilenetv3={checkpoint}", XCAM_UI_IMAGES_DIR=str(tmp_path / "images"))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "phantom.png").write_bytes(png_bytes())
    at.run()
    at.radio(key="source").set_value("Pick from folder").run()
    assert_clean(at)  # the weights that are present are picked first: the checkpoint
    weights = at.selectbox(key="weights_mobilenetv3")
    assert weights.value == str(checkpoint)
    assert weights.options == ["mobilenetv3-nih (file missing)", f"checkpoint {checkpoint}"]
    (model,) = at.session_state["xcam_document"]["models"]
    assert model["weights"] == str(checkpoint) and set(model["predictions"]) == set(labels)
    at.selectbox(key="weights_mobilenetv3").set_value("mobilenetv3-nih").run()
    assert not at.exception
    (message,) = errors(at)
    assert message.startswith("mobilenetv3: weights file mobilenetv3-nih.pt not found")
    assert f"place it at {weights_dir / 'mobilenetv3-nih.pt'}" in message
    assert "Select at least one model whose weights are available." in [i.value for i in at.info]



def test_first_run_offline_uses_the_demo_model_and_its_examples(app, tmp_path):
    """No weight files, no ``--random-weights``, no ``--model``: the page opens on mobilenetv3 with the
    demo checkpoint and an example phantom, whose ground-truth box gives metrics at once."""
    demo = make_demo_cache(tmp_path / "xcam-home")
    examples = demo.examples()
    at = app(XCAM_UI_RANDOM_WEIGHTS="0", XCAM_UI_MODELS="")
    at.run()
    assert_clean(at)
    assert at.radio(key="source").value == "Examples (demo phantoms)"
    assert at.radio(key="source").options == ["Examples (demo phantoms)", "Upload a file"]
    assert at.multiselect(key="models").value == ["mobilenetv3"]
    weights = at.selectbox(key="weights_mobilenetv3")
    assert weights.value == str(demo.checkpoint) and weights.options == ["mobilenetv3-nih (file missing)", DEMO_LABEL]
    assert at.selectbox(key="example").value == examples[0]
    doc = at.session_state["xcam_document"]
    label = demo.ground_truth(examples[0])[0][0]
    boxes = [list(b) for lab, b in demo.ground_truth(examples[0]) if lab == label]  # every box of its class
    assert doc["image"] == examples[0].name and doc["pathology"] == label  # the selector starts at the box's class
    assert doc["ground_truth"] == [{"label": label, "box": b} for b in boxes]
    (model,) = doc["models"]
    assert model["weights"] == str(demo.checkpoint) and NO_WEIGHTS_HINT not in [i.value for i in at.info]
    assert any(m.value.startswith("**mobilenetv3** · `demo model`") for m in at.markdown)
    (finding,) = model["findings"]
    assert finding["ground_truth"] == boxes and "iou" in finding["metrics"]
    assert len(at.dataframe) == 1  # the metrics panel
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("P0 overlay · " + label) for c in captions)
    # another example: its own box, and the selector moves to its class
    other = next(p for p in examples if demo.ground_truth(p)[0][0] != label)
    other_label = demo.ground_truth(other)[0][0]
    other_boxes = [list(b) for lab, b in demo.ground_truth(other) if lab == other_label]
    at.selectbox(key="example").set_value(other).run()
    assert_clean(at)
    doc = at.session_state["xcam_document"]
    assert doc["image"] == other.name and doc["pathology"] == other_label
    assert doc["ground_truth"] == [{"label": other_label, "box": b} for b in other_boxes]
    # the user's pathology stays while the example does (a box of another class is not scored)
    choice = next(p for p in at.selectbox(key="pathology").options if label_key(p) != label_key(other_label))
    at.selectbox(key="pathology").set_value(choice).run()
    assert not at.exception
    assert at.session_state["xcam_document"]["pathology"] == choice
    at.selectbox(key="pathology").set_value(other_label).run()
    # a typed ground truth overrides the example's
    at.text_input(key="gt_text").input(f"{other_label},2,3,20,30").run()
    assert_clean(at)
    doc = at.session_state["xcam_document"]
    assert doc["ground_truth"] == [{"label": other_label, "box": [2.0, 3.0, 20.0, 30.0]}]
    assert doc["models"][0]["findings"][0]["metrics"] is not None


@needs_uploader
def test_no_weights_and_no_demo_say_how_to_make_one(app):
    """Offline with nothing at all: one info box with the command, no download error, before and
    after an upload."""
    at = app(XCAM_UI_RANDOM_WEIGHTS="0", XCAM_UI_MODELS="")
    at.run()
    assert_clean(at)
    assert [i.value for i in at.info] == [NO_WEIGHTS_HINT]
    assert not at.radio  # upload is the only image source: no examples without a demo
    at.file_uploader(key="upload").upload("phantom.png", png_bytes(), "image/png")
    at.run()
    assert_clean(at)  # no "weights file ... not found and could not be downloaded"
    assert [i.value for i in at.info] == [NO_WEIGHTS_HINT]


def test_random_weights_mode_never_offers_the_demo_checkpoint(app, tmp_path):
    """``--random-weights`` never offers the demo checkpoint; the examples are still there."""
    make_demo_cache(tmp_path / "xcam-home")
    at = app()
    at.run()
    assert_clean(at)
    assert at.selectbox(key="weights_mobilenetv3").options == ["mobilenetv3-nih (random weights)"]
    assert at.session_state["xcam_document"]["models"][0]["weights"] == "mobilenetv3-nih"


def test_an_example_box_of_a_class_no_model_predicts_is_no_error(app, tmp_path, third_party_plugin):
    """tinycnn predicts Nodule, Mass and Effusion only: an example with none of those boxes is
    analysed without a ground truth (and without an error)."""
    demo = make_demo_cache(tmp_path / "xcam-home")
    tiny = {"nodule", "mass", "effusion"}
    example = next(p for p in demo.examples() if not {label_key(lab) for lab, _ in demo.ground_truth(p)} & tiny)
    at = app(XCAM_UI_MODELS="tinycnn")
    at.run()
    at.selectbox(key="example").set_value(example).run()
    assert_clean(at)
    doc = at.session_state["xcam_document"]
    assert doc["image"] == example.name and doc["ground_truth"] == []
    assert not [w.value for w in at.warning if "ground truth" in w.value]  # only the random-weights banner
