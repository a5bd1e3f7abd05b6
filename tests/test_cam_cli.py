"""``xcam cam`` and ``xcam analyze`` end to end (random-weight MobileNetV3, small images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xcam.cli import main

DATA = Path(os.environ.get("XCAM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NIH = DATA / "nih"


def write_image(path: Path, width: int = 700, height: int = 500, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = 120 + 60 * np.sin(xx / 40.0 + seed) * np.cos(yy / 55.0) + rng.normal(0, 8, (height, width))
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``xcam`` in-process (models stay cached between tests): ``(exit code, stdout, stderr)``."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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
        "_input_image_.png", "metadata.json", "mobilenetv3_Mass_cam.npy", "mobilenetv3_Mass_PBBox.json",
        *(f"mobilenetv3_Mass_{k}.png" for k in ("P0", "P1", "P2", "P3", "PBBox")),
    }
    assert np.load(folder / "mobilenetv3_Mass_cam.npy").shape == (500, 700)
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


@pytest.mark.skipif(not (NIH / "images").is_dir(), reason=f"real NIH test data not found at {NIH}")
def test_cam_on_real_nih_image(capsys, tmp_path):
    image = min((NIH / "images").glob("*.png"))
    code, _, err = run(capsys, "cam", "--input", str(image), "--model", "densenet121", "--random-weights",
                            "--top-k", "1", "--output-dir", str(tmp_path))
    assert code == 0, err
    cam = np.load(next((tmp_path / image.stem).glob("*_cam.npy")))
    assert cam.shape == (1024, 1024) and np.isfinite(cam.astype(np.float32)).all()
