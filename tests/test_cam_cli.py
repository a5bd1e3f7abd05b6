"""``xcam cam`` and ``xcam analyze`` end to end (random-weight MobileNetV3, small images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_xcam, shared_data_dir

from xcam.cli import main

DATA = shared_data_dir()
NIH = (DATA or Path("/nonexistent")) / "nih"


def write_image(path: Path, width: int = 700, height: int = 500, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = 120 + 60 * np.sin(xx / 40.0 + seed) * np.cos(yy / 55.0) + rng.normal(0, 8, (height, width))
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``xcam`` in-process (models stay cached between tests): ``(exit code, stdout, stderr)``."""
    return run_xcam(list(args), capsys)


@pytest.fixture(autouse=True)
def no_plugins_toml(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./plugins.toml: the built-in defaults
    monkeypatch.delenv("XCAM_CONFIG", raising=False)


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom xcam.cli import cli\n"
        "for name in ('cam', 'analyze'):\n"
        "    r = CliRunner().invoke(cli, [name, '--help'])\n"
        "    assert r.exit_code == 0 and '--output-dir' in r.output, r.output\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_cam_writes_the_established_files(capsys, tmp_path):
    image = write_image(tmp_path / "scan.png")
    out = tmp_path / "OUTPUT"
    code, stdout, err = run(capsys, "cam", "--input", str(image), "--model", "mobilenetv3", "--random-weights",
                            "--target-class", "mass", "--method", "gradcam++", "--output-dir", str(out))
    assert code == 0, err
    assert "Mass" in stdout and "box x=" in stdout
    folder = out / "scan"
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "_input_image_.png", "metadata.json", "analysis.json", "mobilenetv3_Mass_cam.npy",
        "mobilenetv3_Mass_PBBox.json", *(f"mobilenetv3_Mass_{k}.png" for k in ("P0", "P1", "P2", "P3", "PBBox")),
    }
    assert np.load(folder / "mobilenetv3_Mass_cam.npy").shape == (160, 224)  # the work grid: 700x500 at 224 px
    from xcam.core.render import read_mask

    assert read_mask(folder / "mobilenetv3_Mass_P3.png").shape == (500, 700)  # images at the original size
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["models"]["mobilenetv3"]["method"] == "gradcam++"
    assert meta["models"]["mobilenetv3"]["cams"] == {"Mass": "mobilenetv3_Mass_cam.npy"}

    # the box command reads what cam wrote
    code, _, err = run(capsys, "bbox", "--input-mask", str(folder / "mobilenetv3_Mass_P3.png"))
    assert code == 0, err


def test_cam_top_k(capsys, tmp_path):
    image = write_image(tmp_path / "scan.png")
    code, stdout, err = run(capsys, "cam", "--input", str(image), "--model", "mobilenetv3", "--random-weights",
                            "--top-k", "2", "--output-dir", str(tmp_path / "o"))
    assert code == 0, err
    assert stdout.count("(top-k)") == 2
    assert len(list((tmp_path / "o" / "scan").glob("*_P3.png"))) == 2


def test_cam_unknown_class_is_one_line_listing_valid_names(capsys, tmp_path):
    image = write_image(tmp_path / "scan.png")
    code, _, err = run(capsys, "cam", "--input", str(image), "--model", "mobilenetv3", "--random-weights",
                       "--target-class", "Pneumothoraxx", "--output-dir", str(tmp_path / "o"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unknown target class 'Pneumothoraxx'" in lines[0]
    assert "Pneumothorax" in lines[0].split("valid:")[1]
    assert not (tmp_path / "o").exists()


def test_cam_bad_image_is_one_line_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    code, _, err = run(capsys, "cam", "--input", str(bad), "--model", "mobilenetv3", "--random-weights")
    assert code == 2
    assert err.strip().count("\n") == 0 and str(bad) in err and "not a readable image" in err


def test_cam_rejects_target_class_with_top_k(capsys, tmp_path):
    image = write_image(tmp_path / "scan.png")
    code, _, err = run(capsys, "cam", "--input", str(image), "--model", "mobilenetv3", "--random-weights",
                       "--target-class", "Mass", "--top-k", "2")
    assert code == 2 and "either --target-class or --top-k" in err


def test_analyze_folder_with_a_bad_image_and_ground_truth(capsys, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", seed=1)
    write_image(folder / "b.png", 600, 600, seed=2)
    (folder / "c.png").write_bytes(b"garbage")
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Infiltrate,100,120,200,150\n")
    out = tmp_path / "OUTPUT"
    code, stdout, err = run(capsys, "analyze", "--input", str(folder), "--models", "mobilenetv3", "--random-weights",
                            "--top-k", "1", "--threshold", "0", "--ground-truth-csv", str(csv),
                            "--output-dir", str(out))
    assert code == 1
    assert f"error: {folder / 'c.png'}: " in err and "1 of 3 images failed" in err
    for stage in ("model", "CAM", "masks/boxes", "writing"):
        assert stage in stdout
    assert "2 of 3 images analyzed" in stdout
    report = json.loads((out / "a" / "analysis.json").read_text())
    findings = {f["pathology"]: f for f in report["models"][0]["findings"]}
    assert findings["Infiltration"]["reason"] in ("ground-truth", "top-k")
    assert set(findings["Infiltration"]["metrics"]) >= {"iou", "iobb", "dice", "pointing_game"}
    assert (out / "b" / "analysis.json").is_file() and not (out / "c").exists()
    summary = json.loads((out / "analyze_summary.json").read_text())
    assert [i["status"] for i in summary["images"]] == ["ok", "ok", "error"]


def test_analyze_two_models_json_only(capsys, tmp_path):
    image = write_image(tmp_path / "x.png")
    out = tmp_path / "OUTPUT"
    code, _, err = run(capsys, "analyze", "--input", str(image), "--models", "mobilenetv3,densenet121",
                            "--random-weights", "--target-class", "Mass", "--json-only", "--output-dir", str(out))
    assert code == 0, err
    names = sorted(p.name for p in (out / "x").iterdir())
    assert names == ["Mass_consolidated_bbox.json", "analysis.json", "densenet121_Mass_PBBox.json", "metadata.json",
                     "mobilenetv3_Mass_PBBox.json"]
    meta = json.loads((out / "x" / "metadata.json").read_text())
    assert set(meta["models"]) == {"mobilenetv3", "densenet121"}


def test_analyze_missing_input_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "analyze", "--input", str(tmp_path / "nope"), "--random-weights")
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope'}: not found"


def test_analyze_file_in_the_way_is_that_images_error_and_the_run_goes_on(capsys, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        write_image(folder / f"{name}.png", 160, 120, seed=i)
    out = tmp_path / "OUTPUT"
    out.mkdir()
    (out / "a").write_text("")  # a file where image a's folder goes
    code, stdout, err = run(capsys, "analyze", "--input", str(folder), "--models", "mobilenetv3", "--random-weights",
                            "--target-class", "Mass", "--json-only", "--quiet", "--output-dir", str(out))
    assert code == 1 and "Traceback" not in err
    assert f"error: cannot write {out / 'a'}: a file is in the way" in err.splitlines()
    assert "2 of 3 images analyzed" in stdout
    summary = json.loads((out / "analyze_summary.json").read_text())
    assert [i["status"] for i in summary["images"]] == ["error", "ok", "ok"]
    assert summary["images"][0]["error"] == f"cannot write {out / 'a'}: a file is in the way"
    assert (out / "b" / "analysis.json").is_file() and (out / "c" / "analysis.json").is_file()


@pytest.mark.parametrize("option", ["--coco", "--output-dir"])
def test_analyze_output_path_under_a_file_fails_before_any_work(capsys, tmp_path, option):
    image = write_image(tmp_path / "x.png", 160, 120)
    (tmp_path / "afile").write_text("")
    out = tmp_path / "OUTPUT"
    args = {"--coco": ["--coco", str(tmp_path / "afile" / "x.json"), "--output-dir", str(out)],
            "--output-dir": ["--output-dir", str(tmp_path / "afile" / "o")]}[option]
    code, stdout, err = run(capsys, "analyze", "--input", str(image), "--models", "mobilenetv3", "--random-weights",
                            "--target-class", "Mass", "--json-only", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {option} {tmp_path / 'afile'}/") and f"{tmp_path / 'afile'} is a file" in err
    assert not out.exists() and "analyzed" not in stdout


def test_analyze_negative_model_weights_fail_before_any_work(capsys, tmp_path):
    image = write_image(tmp_path / "x.png", 160, 120)
    out = tmp_path / "OUTPUT"
    code, _, err = run(capsys, "analyze", "--input", str(image), "--models", "mobilenetv3,densenet121",
                       "--random-weights", "--ensembler", "weighted", "--model-weights", "1,-1",
                       "--output-dir", str(out))
    assert code == 2 and err.strip() == "error: --model-weights '1,-1': weights must be non-negative with a positive sum"
    assert not out.exists()


def test_analyze_ground_truth_box_outside_its_image_is_reported_not_scored(capsys, tmp_path):
    image = write_image(tmp_path / "x.png", 160, 120)
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   "x.png,Mass,4600,20,30,30\n"  # far outside the 160x120 image
                   "x.png,Nodule,120,90,41,31\n")  # overhangs by a pixel (rounding): clipped
    out = tmp_path / "OUTPUT"
    code, _, err = run(capsys, "analyze", "--input", str(image), "--models", "mobilenetv3", "--random-weights",
                       "--target-class", "Mass", "--json-only", "--quiet", "--ground-truth-csv", str(csv),
                       "--output-dir", str(out))
    problem = (f"{csv}: ground-truth box Mass (x=4600, y=20, w=30, h=30) of x.png lies outside the 160x120 image; "
               "not scored")
    assert code == 1 and f"error: {problem}" in err.splitlines() and "Traceback" not in err
    summary = json.loads((out / "analyze_summary.json").read_text())
    assert summary["ground_truth_errors"] == 1 and summary["images"][0]["ground_truth_errors"] == [problem]
    report = json.loads((out / "x" / "analysis.json").read_text())
    assert report["ground_truth"] == [{"label": "Nodule", "box": [120.0, 90.0, 40.0, 30.0]}]
    mass = next(f for f in report["models"][0]["findings"] if f["pathology"] == "Mass")
    assert mass["ground_truth"] == [] and mass["metrics"] is None  # the bad box is not scored


@pytest.mark.skipif(not (NIH / "images").is_dir(), reason=f"real NIH test data not found at {NIH}")
def test_cam_on_real_nih_image(capsys, tmp_path):
    image = min((NIH / "images").glob("*.png"))
    code, _, err = run(capsys, "cam", "--input", str(image), "--model", "densenet121", "--random-weights",
                            "--top-k", "1", "--output-dir", str(tmp_path))
    assert code == 0, err
    cam = np.load(next((tmp_path / image.stem).glob("*_cam.npy")))
    assert cam.shape == (224, 224) and np.isfinite(cam.astype(np.float32)).all()  # the work grid
    from xcam.core.render import read_png

    assert read_png(next((tmp_path / image.stem).glob("*_P0.png")), color=True).shape == (1024, 1024, 3)


# -- bbox, consolidate and ensemble on what the chain wrote ------------------------------------
@pytest.fixture(scope="module")
def chain_result(tmp_path_factory):
    """A result folder written by the chain itself (two random-weight models, one ground-truth box), as
    `xcam cam` / `xcam analyze` leave it; independent of those commands. ``(folder, ImageResult)``."""
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.outputs import write_result
    from xcam.chain.settings import ClassChoice, resolve_settings
    from xcam.core.config import XcamConfig
    from xcam.core.manager import get_plugin_manager

    root = tmp_path_factory.mktemp("chain")
    image = write_image(root / "scan.png", 420, 300, seed=3)
    pm = get_plugin_manager(XcamConfig())
    settings = resolve_settings(pm, "fast")
    chain = build_chain(pm, "mobilenetv3,densenet121", settings, ClassChoice(targets=("Mass",)),
                        load=LoadOptions(random_init=True), keep_images=True)
    result = chain.analyze(str(image), [("Mass", (50.0, 60.0, 100.0, 80.0))])
    assert result.ok, result.error
    write_result(result, root / "OUTPUT", settings=settings.as_dict())
    return root / "OUTPUT" / "scan", result


@pytest.fixture
def result_copy(chain_result, tmp_path):
    import shutil

    folder, result = chain_result
    return Path(shutil.copytree(folder, tmp_path / "scan")), result


def box_tuple(entry) -> tuple[float, float, float, float]:
    return (entry["x"], entry["y"], entry["width"], entry["height"])


def iou(a, b) -> float:
    from xcam.core.metrics import box_iou

    return box_iou(a, b)


def test_bbox_reuses_the_chain_boxes_exactly(capsys, result_copy):
    from xcam.core.metrics import box_dict

    folder, result = result_copy
    finding = next(f for r, f in result.findings if r.model == "densenet121")
    assert np.load(folder / "densenet121_Mass_cam.npy").shape == result.grid.shape  # the work grid, not 420x300
    code, out, err = run(capsys, "bbox", "--input-mask", str(folder / "densenet121_Mass_P3.png"),
                         "--ground-truth", "Mass,50,60,100,80")
    assert code == 0, err
    report = json.loads((folder / "densenet121_Mass_PBBox.json").read_text())
    assert report["boxes_from"] == "recorded" and "recorded largest boxes" in out
    assert report["boxes"] == [box_dict(b) for b in finding.boxes]
    assert report["metrics"] == pytest.approx(finding.metrics)

    code, out, err = run(capsys, "bbox", "--input-mask", str(folder / "densenet121_Mass_P3.png"),
                         "--strategy", "tight", "--output-dir", str(folder / "tight"))
    assert code == 0, err
    report = json.loads((folder / "tight" / "densenet121_Mass_PBBox.json").read_text())
    assert report["boxes_from"] == "mask" and report["strategy"] == "tight" and "tight boxes from the mask" in out
    assert report["image_size"] == {"width": 420, "height": 300} and report["metrics"]["iou"] >= 0  # recorded truth
    x, y, w, h = box_tuple(report["box"])
    assert 0 <= x and 0 <= y and x + w <= 420 and y + h <= 300


def test_consolidate_and_ensemble_combine_the_stored_cams(capsys, result_copy):
    from xcam.core.render import read_png

    folder, result = result_copy
    (chained,) = result.consolidated
    masks = [str(folder / f"{m}_Mass_P3.png") for m in ("mobilenetv3", "densenet121")]
    code, out, err = run(capsys, "consolidate", *masks, "--rule", "ensembler", "--target-class", "mass",
                         "--output-dir", str(folder / "c"))
    assert code == 0, err
    report = json.loads((folder / "c" / "Mass_consolidated_bbox.json").read_text())
    assert report["rule"] == "ensembler:mean" and report["grid"] == {"width": result.grid.shape[1],
                                                                    "height": result.grid.shape[0]}
    assert [s["boxes_from"] for s in report["sources"]] == ["recorded", "recorded"]
    assert report["image_size"] == {"width": 420, "height": 300}
    if chained.box is not None:  # the same ensembler on the same (float16-stored) work-grid CAMs
        assert iou(box_tuple(report["box"]), chained.box) > 0.9

    code, out, err = run(capsys, "ensemble", "--input-dir", str(folder), "--target-class", "Mass",
                         "--output-dir", str(folder / "e"))
    assert code == 0, err
    target = json.loads((folder / "e" / "ensemble.json").read_text())["target"]
    assert target["image_size"] == {"width": 420, "height": 300}
    if chained.box is not None:
        assert iou(box_tuple(target["box"]), chained.box) > 0.9
    assert read_png(folder / "e" / "ensemble_Mass_PBBox.png", color=True).shape == (300, 420, 3)
