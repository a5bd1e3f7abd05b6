"""Bad input is refused in one line, before any work: DICOM windows, ensemble probabilities,
score inputs that match nothing, export parity folders, phantom sizes and environment limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from xcam.core.errors import UsageError


def _one_line_error(code: int, err: str) -> str:
    """The single error line of a failed command (exit code 2, no traceback)."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(lines) == 1, err
    return lines[0]


# -- 1: --dicom-voi -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["nan,400", "inf,inf", "100,nan", "2048,-inf"])
def test_dicom_voi_rejects_non_finite_window(text):
    from xcam.core.imageio import DicomReadOptions

    with pytest.raises(ValueError, match="finite"):
        DicomReadOptions.parse(text)


def test_dicom_voi_non_finite_is_a_one_line_cli_error(xcam_cli, tmp_path):
    from xcam.core.imageio import DicomReadOptions, dicom_options, set_dicom_options

    previous = dicom_options()
    try:
        code, _, err = xcam_cli("score", "--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "r.csv"),
                                "--dicom-voi", "nan,400")
        assert dicom_options() == DicomReadOptions()  # the bad window was never set
    finally:
        set_dicom_options(previous)
    line = _one_line_error(code, err)
    assert "--dicom-voi" in line and "nan,400" in line and "finite" in line


def test_dicom_voi_finite_window_still_parses():
    from xcam.core.imageio import DicomReadOptions

    assert DicomReadOptions.parse("-600,1500").window == (-600.0, 1500.0)


# -- 2: ensemble probabilities ------------------------------------------------------------------
def _metadata(path: Path, predictions: str) -> Path:
    path.write_text('{"models": {"m": {"predictions": %s}}}' % predictions)
    return path


@pytest.mark.parametrize("predictions, shown", [
    ('{"Nodule": 5, "Mass": 0.2}', "5"),
    ('{"Nodule": 0.3, "Mass": -2}', "-2"),
    ('{"Nodule": NaN, "Mass": 0.2}', "nan"),
    ('{"Nodule": Infinity, "Mass": 0.2}', "inf"),
    ('{"Nodule": "high", "Mass": 0.2}', "high"),
])
def test_ensemble_rejects_probabilities_outside_0_1(xcam_cli, tmp_path, predictions, shown):
    source = _metadata(tmp_path / "range.json", predictions)
    code, out, err = xcam_cli("ensemble", "--inputs", str(source), "--output-dir", str(tmp_path / "out"))
    line = _one_line_error(code, err)
    assert str(source) in line and "'m'" in line and shown in line
    assert ("'Nodule'" in line) != ("'Mass'" in line)
    assert not (tmp_path / "out" / "ensemble.json").exists()


def test_ensemble_accepts_the_bounds_and_skips_null(xcam_cli, tmp_path):
    source = _metadata(tmp_path / "ok.json", '{"Nodule": 1, "Mass": 0, "Effusion": null}')
    code, out, err = xcam_cli("ensemble", "--inputs", str(source))
    assert code == 0, err
    report = json.loads((tmp_path / "ensemble.json").read_text())
    assert report["predictions"] == {"Nodule": 1.0, "Mass": 0.0}


# -- 3: score inputs that match nothing -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["glob", "folder", "txt", "csv"])
def test_score_input_matching_nothing_is_an_error(xcam_cli, tmp_path, kind):
    spec = {"glob": tmp_path / "nomatch*.png", "folder": tmp_path / "empty", "txt": tmp_path / "list.txt",
            "csv": tmp_path / "list.csv"}[kind]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not an image")
    (tmp_path / "list.txt").write_text("")
    (tmp_path / "list.csv").write_text("path\n")
    output = tmp_path / "q3.csv"
    code, out, err = xcam_cli("score", "--random-weights", "--input", str(spec), "--output", str(output))
    line = _one_line_error(code, err)
    assert f"--input '{spec}'" in line and "no images found" in line
    assert "scored" not in out and not output.exists()


@pytest.mark.parametrize("output, coco, expected", [
    ("isdir.csv", None, "--output {t}/isdir.csv: is a folder (a file name is needed)"),
    ("afile/out.csv", None, "--output {t}/afile/out.csv: cannot create it, {t}/afile is a file"),
    ("afile/o.parquet", None, "--output {t}/afile/o.parquet: cannot create it, {t}/afile is a file"),
    ("ok.csv", "afile/c.json", "--coco {t}/afile/c.json: cannot create it, {t}/afile is a file"),
])
def test_score_output_that_cannot_be_written_fails_before_work(xcam_cli, tmp_path, output, coco, expected):
    (tmp_path / "isdir.csv").mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    extra = ["--boxes", "--coco", str(tmp_path / coco)] if coco else []
    code, out, err = xcam_cli("score", "--random-weights", "--input", str(tmp_path / "in"),
                              "--output", str(tmp_path / output), *extra)
    assert _one_line_error(code, err) == "error: " + expected.format(t=tmp_path)
    assert "scored" not in out and not (tmp_path / "ok.csv").exists()


# -- 4: export --parity-images ------------------------------------------------------------------
def test_export_parity_images_missing_folder_is_an_error(xcam_cli, tmp_path):
    code, out, err = xcam_cli("export", "--model", "mobilenetv3", "--random-weights",
                              "--parity-images", str(tmp_path / "nope"))
    line = _one_line_error(code, err)
    assert "--parity-images" in line and "nope" in line and "does not exist" in line
    assert "exported" not in out


def _png(path: Path, value: int = 128) -> None:
    cv2.imwrite(str(path), np.full((40, 40), value, np.uint8))


def test_export_parity_images_skips_unreadable_files(tmp_path, capsys):
    from xcam.commands.export import _readable_batch

    (tmp_path / "0.dcm").write_bytes(b"")
    (tmp_path / "1.png").write_bytes(b"not a png")
    _png(tmp_path / "2.png", 100)
    _png(tmp_path / "3.png", 200)
    batch, source = _readable_batch(str(tmp_path), 4, 32, "xrv")
    assert batch.shape == (2, 1, 32, 32) and source == f"2 images from {tmp_path}"
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: --parity-images: skipped") for w in warnings)
    assert "0.dcm: empty file" in warnings[0] and "1.png: not a readable image" in warnings[1]


def test_export_parity_images_stops_at_n_readable(tmp_path):
    from xcam.commands.export import _readable_batch

    for i in range(6):
        _png(tmp_path / f"{i}.png", 20 * i)
    batch, source = _readable_batch(str(tmp_path), 4, 32, "xrv")
    assert batch.shape[0] == 4 and source.startswith("4 images")


@pytest.mark.parametrize("bad", [True, False])
def test_export_parity_images_without_a_readable_image_is_an_error(tmp_path, bad):
    from xcam.commands.export import _readable_batch

    if bad:
        (tmp_path / "0.dcm").write_bytes(b"")
    with pytest.raises(UsageError, match="--parity-images .*" + ("none of its 1 image files" if bad else "no image")):
        _readable_batch(str(tmp_path), 4, 32, "xrv")


# -- 5: phantom --size ----------------------------------------------------------------------------
def test_phantom_size_has_an_upper_bound(xcam_cli, tmp_path, monkeypatch):
    import xcam.datasets.phantom as phantom

    def never(*args, **kwargs):
        raise AssertionError("generate_phantoms must not run")

    monkeypatch.setattr(phantom, "generate_phantoms", never)
    code, _, err = xcam_cli("phantom", "--out", str(tmp_path / "p5"), "--n", "1", "--size", "100000")
    line = _one_line_error(code, err)
    assert "--size" in line and "at most 4096" in line and "100000" in line
    assert not (tmp_path / "p5").exists()


# -- 6: XCAM_MAX_PIXELS / XCAM_MAX_FILE_BYTES ----------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5", "1e6"])
def test_env_limit_rejects_non_positive_integers(monkeypatch, value):
    from xcam.core.imageio import env_limit

    monkeypatch.setenv("XCAM_MAX_PIXELS", value)
    with pytest.raises(UsageError, match=f"XCAM_MAX_PIXELS='{value}': expected a positive integer"):
        env_limit("XCAM_MAX_PIXELS", 100)


def test_env_limit_reads_a_positive_integer(monkeypatch):
    from xcam.core.imageio import env_limit

    monkeypatch.setenv("XCAM_MAX_PIXELS", " 2500 ")
    assert env_limit("XCAM_MAX_PIXELS", 100) == 2500
    monkeypatch.delenv("XCAM_MAX_PIXELS")
    assert env_limit("XCAM_MAX_PIXELS", 100) == 100


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_bad_max_pixels_is_a_one_line_cli_error(tmp_path, value):
    """The limit is read when xcam.core.imageio is first imported: a fresh process."""
    env = {**os.environ, "XCAM_MAX_PIXELS": value, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", "from xcam.cli import main; main()", "score",
                          "--input", str(tmp_path), "--output", str(tmp_path / "r.csv")],
                         env=env, capture_output=True, text=True, timeout=120)
    line = _one_line_error(run.returncode, run.stderr)
    assert line == f"error: XCAM_MAX_PIXELS='{value}': expected a positive integer"
