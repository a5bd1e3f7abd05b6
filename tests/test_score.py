"""``xcam score``: exactly-once scoring across kill -9 and resume, bad inputs, formats, boxes, memory.

Models are random-init (``--random-weights``, seeded: the same weights in every process);
a MobileNetV3-Small at 64 px (set through a test ``plugins.toml``) keeps inference cheap.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xcam.score.writers import read_rows

cv2 = pytest.importorskip("cv2")

SMALL_TOML = """
[options.mobilenetv3]
arch = "mobilenet_v3_small"
img_size = 64
"""
MODEL = ["--models", "mobilenetv3", "--random-weights", "--backend", "torch"]


# -- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "plugins.toml"
    path.write_text(SMALL_TOML)
    return path


def write_pngs(folder: Path, n: int, shape: tuple[int, int] = (48, 64), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.png"
        cv2.imwrite(str(p), (rng.rand(*shape) * 255).astype(np.uint8))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def images_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    write_pngs(folder, 300)
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png() -> bytes:
    """A valid PNG header that claims 100 000 × 100 000 pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + idat + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 good images, then corrupt, empty, non-image and huge files (all with image suffixes)."""
    folder = tmp_path_factory.mktemp("mixed")
    good = write_pngs(folder, 3)
    (folder / "corrupt.png").write_bytes(good[0].read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is a text file, not a PNG\n")
    (folder / "huge.png").write_bytes(huge_png())
    (folder / "README.txt").write_text("not an image suffix: not an input\n")
    return folder


def xcam_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "xcam.cli", "--config", str(config), "score", *args]


def invoke(config: Path, *args: str, pm=None):
    from xcam.cli import cli

    obj = {"pm": pm} if pm is not None else {}
    return CliRunner().invoke(cli, ["--config", str(config), "score", *args], obj=obj)


def complete_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return max(0, path.read_bytes().count(b"\n") - 1)  # minus the CSV header


def by_path(rows: list[dict]) -> dict[str, dict]:
    table = {r["path"]: r for r in rows}
    assert len(table) == len(rows), "a path appears twice"
    return table


# -- exactly once across kill -9 -----------------------------------------------------------------
def test_kill_and_resume_gives_identical_output(tmp_path: Path, images_300: Path, small_config: Path) -> None:
    reference = tmp_path / "reference.csv"
    done = invoke(small_config, "--input", str(images_300), "--output", str(reference), *MODEL, "--batch-size", "8")
    assert done.exit_code == 0 and "ok 300, failed 0" in done.output, done.output

    out = tmp_path / "resumed.csv"
    cmd = xcam_cmd(small_config, "--input", str(images_300), "--output", str(out), *MODEL, "--batch-size", "8")
    kills = 0
    for stop_at in (40, 160):  # kill -9 twice, at different points
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and complete_rows(out) < stop_at:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        rows = list(read_rows(out))  # readable after the kill
        by_path(rows)
        assert 0 < len(rows) <= 300
    assert kills >= 1, "the run finished before it could be killed"
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert "skipped" in final.stdout

    got, want = by_path(list(read_rows(out))), by_path(list(read_rows(reference)))
    assert sorted(got) == sorted(want) == sorted(str(p) for p in images_300.glob("*.png"))
    assert got == want  # every input exactly once, identical values


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_files_become_error_rows(tmp_path: Path, mixed_folder: Path, small_config: Path) -> None:
    out = tmp_path / "mixed.jsonl"
    result = invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL)
    assert result.exit_code == 1, result.output
    assert "ok 3, failed 4" in result.output
    rows = by_path(list(read_rows(out)))
    assert len(rows) == 7 and not any(p.endswith("README.txt") for p in rows)
    status = {Path(p).name: r["status"] for p, r in rows.items()}
    assert status["img0000.png"] == status["img0002.png"] == "ok"
    assert status["empty.png"] == "error: empty file (0 bytes)"
    assert status["notes.png"].startswith("error: not a readable image")
    assert status["corrupt.png"].startswith("error: ") and "corrupt" in status["corrupt.png"]
    assert "too large (100000x100000" in status["huge.png"]
    for row in rows.values():
        assert "\n" not in row["status"]
        probs = [v for k, v in row.items() if k.startswith("mobilenetv3:")]
        assert len(probs) == 14
        if row["status"] == "ok":
            assert all(0.0 <= v <= 1.0 for v in probs)
        else:
            assert all(v is None for v in probs)

    again = invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL)
    assert again.exit_code == 1  # the output still holds failures
    assert "scored 0 images" in again.output and "skipped 7" in again.output and "failed 4" in again.output


# -- formats ----------------------------------------------------------------------------------------
def test_csv_parquet_jsonl_carry_the_same_rows(tmp_path: Path, mixed_folder: Path, small_config: Path) -> None:
    tables = {}
    for suffix in ("csv", "parquet", "jsonl"):
        out = tmp_path / f"results.{suffix}"
        pool = ["--pool", "process"] if suffix == "parquet" else []  # the process pool gives the same rows
        result = invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL,
                        "--batch-size", "2", *pool)
        assert result.exit_code == 1, result.output
        tables[suffix] = by_path(list(read_rows(out)))
    assert tables["csv"] == tables["parquet"] == tables["jsonl"]
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "results.parquet")  # a normal Parquet dataset
    assert len(frame) == 7 and list(frame.columns[:2]) == ["path", "status"]


def test_torn_last_line_is_cut_on_resume(tmp_path: Path, mixed_folder: Path, small_config: Path) -> None:
    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"torn.{suffix}"
        assert invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL).exit_code == 1
        full = by_path(list(read_rows(out)))
        data = out.read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        out.write_bytes(data[: last + (len(data) - last) // 2])  # a kill in the middle of the last write
        assert len(list(read_rows(out))) == 6
        result = invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL)
        assert "scored 1 images" in result.output
        assert by_path(list(read_rows(out))) == full


def test_parquet_journal_recovery(tmp_path: Path) -> None:
    from xcam.score.schema import ModelColumns, Schema
    from xcam.score.writers import ParquetDirWriter

    schema = Schema(models=(ModelColumns("m", ("A", "B")),))
    rows = [schema.ok_row(f"/x/{i}.png", [{"A": i / 10, "B": 0.5}]) for i in range(10)]
    out = tmp_path / "r.parquet"
    w = ParquetDirWriter(out, schema, part_rows=4)
    assert w.open().done.__len__() == 0
    w.write(rows[:3])
    w.write(rows[3:6])  # 6 rows ≥ 4: committed as part 0
    w.write(rows[6:8])  # journalled only, then "killed" (no close)
    assert [p.name for p in sorted(out.glob("part-*"))] == ["part-000000.parquet"]
    assert len(list(read_rows(out))) == 6  # readers see committed parts only
    w._journal.close()  # what a kill does: files closed, the lock released
    w._lock_fh.close()
    (out / ".pending-000000.jsonl").write_text(json.dumps(rows[0]) + "\n")  # stale: part 0 exists
    with (out / ".pending-000001.jsonl").open("ab") as fh:
        fh.write(b'{"path": "/x/torn')  # a torn journal line
    w2 = ParquetDirWriter(out, schema, part_rows=4)
    state = w2.open()
    assert len(state.done) == 8 and state.ok == 8
    w2.write(rows[8:])
    w2.close()
    assert by_path(list(read_rows(out))) == by_path(rows)
    assert not list(out.glob(".pending-*")) and not list(out.glob(".part-*"))


def test_resume_refuses_other_columns(tmp_path: Path, mixed_folder: Path, small_config: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("path,status,other:Label\n")
    result = invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL)
    assert result.exit_code != 0 and "other columns" in str(result.exception)
    result = invoke(small_config, "--input", str(mixed_folder), "--output", str(out), *MODEL, "--no-resume")
    assert result.exit_code == 1 and "ok 3, failed 4" in result.output, result.output
    assert len(list(read_rows(out))) == 7


# -- inputs ---------------------------------------------------------------------------------------
def test_inputs_from_glob_and_list(tmp_path: Path, mixed_folder: Path) -> None:
    from xcam.score.inputs import iter_inputs

    folder = sorted(iter_inputs(str(mixed_folder)))
    assert len(folder) == 7
    assert sorted(iter_inputs(str(mixed_folder / "img*.png"))) == [p for p in folder if "img" in p]
    listing = mixed_folder.parent / "list.csv"
    rel = f"{mixed_folder.name}/img0001.png"  # relative to the list file's folder
    listing.write_text(f"id,path\n1,{rel}\n2,{mixed_folder / 'empty.png'}\n3,{rel}\n")
    listed = list(iter_inputs(str(listing)))
    one, empty = str(mixed_folder / "img0001.png"), str(mixed_folder / "empty.png")
    assert listed == [one, empty, one]


def test_listed_twice_is_scored_once(tmp_path: Path, mixed_folder: Path, small_config: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(mixed_folder / "img0001.png")] * 3 + [str(mixed_folder / "missing.png")]) + "\n")
    out = tmp_path / "r.jsonl"
    result = invoke(small_config, "--input", str(listing), "--output", str(out), *MODEL)
    rows = list(read_rows(out))
    assert len(rows) == 2 and "skipped 2" in result.output
    assert by_path(rows)[str(mixed_folder / "missing.png")]["status"] == "error: file not found"


# -- several models, boxes ---------------------------------------------------------------------------
def test_two_models_add_ensemble_columns(tmp_path: Path, mixed_folder: Path, small_config: Path, pm) -> None:
    listing = tmp_path / "two.txt"
    listing.write_text(f"{mixed_folder / 'img0000.png'}\n{mixed_folder / 'empty.png'}\n")
    out = tmp_path / "two.csv"
    result = invoke(small_config, "--input", str(listing), "--output", str(out), "--models", "mobilenetv3,densenet121",
                    "--random-weights", "--backend", "torch")
    assert result.exit_code == 1, result.output
    ok = next(r for r in read_rows(out) if r["status"] == "ok")
    mean = (ok["mobilenetv3:Cardiomegaly"] + ok["densenet121:Cardiomegaly"]) / 2
    assert ok["ensemble:Cardiomegaly"] == pytest.approx(mean)
    assert ok["ensemble:Lung Opacity"] == ok["densenet121:Lung Opacity"]  # only densenet121 has it
    assert ok["ensemble:Hernia"] == pytest.approx((ok["mobilenetv3:Hernia"] + ok["densenet121:Hernia"]) / 2)


class FixedCam:
    """A CAM plugin with a known hot square at model pixels x 56–111, y 84–139 (of 224)."""

    @staticmethod
    def compute(model, batch, class_indices, **_):
        size = batch.shape[-1]
        maps = np.zeros((len(class_indices), size, size), dtype=np.float32)
        s = size / 224
        maps[:, int(84 * s) : int(140 * s), int(56 * s) : int(112 * s)] = 1.0
        return maps


def test_boxes_are_in_original_coordinates(tmp_path: Path, small_config: Path) -> None:
    from xcam.core.config import load_config
    from xcam.core.hookspecs import hookimpl
    from xcam.core.manager import get_plugin_manager
    from xcam.core.types import CamMethodRegistration

    class Plugin:
        @hookimpl
        def xcam_cam_methods(self):
            yield CamMethodRegistration(name="fixedcam", compute=FixedCam.compute, needs_gradients=False)

    pm = get_plugin_manager(load_config(small_config))
    pm.load_object(Plugin(), "fixedcam-test")
    folder = tmp_path / "wide"
    write_pngs(folder, 1, shape=(100, 200))  # 200 wide, 100 high: padded 50 px above and below
    out = tmp_path / "boxes.jsonl"
    result = invoke(small_config, "--input", str(folder), "--output", str(out), "--models", "mobilenetv3,densenet121",
                    "--random-weights", "--backend", "torch", "--boxes", "--cam-method", "fixedcam",
                    "--cam-classes", "all", pm=pm)
    assert result.exit_code == 0, result.output
    (row,) = read_rows(out)
    boxes = json.loads(row["boxes"])
    count = {m: sum(b["model"] == m for b in boxes) for m in ("mobilenetv3", "densenet121", "ensemble")}
    assert count == {"mobilenetv3": 14, "densenet121": 18, "ensemble": 14}  # every class; shared labels combined
    for box in boxes:
        # mobilenetv3 (64 px): x 16..32 → 50..100 original px; y 24..40 → 75..125, minus the 50 px pad.
        # densenet121 (224 px): x 56..112 → 50..100; y 84..140 → 75..125 minus 50. The ensemble: the same.
        # Masks are thresholded in the 224-px work grid (bilinear upsampling of the 64-px map), and the
        # boxes mapped to original pixels: a step edge may move by a pixel or two.
        assert (box["x"], box["y"], box["width"], box["height"]) == pytest.approx((50, 25, 50, 50), abs=2)
        assert 0 <= box["probability"] <= 1

    peaks = tmp_path / "peaks.jsonl"  # --with-cams alone: each CAM's peak, in original pixels
    result = invoke(small_config, "--input", str(folder), "--output", str(peaks), *MODEL, "--with-cams",
                    "--cam-method", "fixedcam", "--cam-classes", "all", pm=pm)
    assert result.exit_code == 0, result.output
    (row,) = read_rows(peaks)
    cams = json.loads(row["cams"])
    assert len(cams) == 14 and "boxes" not in row
    assert all(49 <= c["peak_x"] <= 100 and 24 <= c["peak_y"] <= 75 and c["peak"] == 1.0 for c in cams)


def _chain_entries(analysis, boxes: bool = True) -> list[dict]:
    """What the ``boxes`` column must hold for one chain result (rounded as xcam score rounds)."""
    items = [(r.model, f) for r in analysis.results for f in r.findings]
    items += [("ensemble", c) for c in analysis.consolidated]
    out = []
    for model, f in items:
        base = {"model": model, "label": f.pathology, "probability": round(float(f.probability), 4)}
        for b in f.boxes:
            out.append(dict(base, x=round(b.x, 2), y=round(b.y, 2), width=round(b.width, 2),
                            height=round(b.height, 2), score=round(b.score, 4)))
    return out


@pytest.mark.parametrize("settings_args", [(), ("--profile", "legacy", "--mask", "percentile", "--strategy", "components")],
                         ids=["default-profile", "legacy+options"])
def test_score_boxes_equal_the_chain_boxes(tmp_path: Path, small_config: Path, settings_args: tuple[str, ...]) -> None:
    """``xcam score --boxes`` is the chain: the same boxes as ``build_chain(...).analyze`` with the
    same models (random weights, same seed), settings and classes, in original pixels."""
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions, clear_model_cache
    from xcam.chain.settings import ClassChoice, Overrides, resolve_settings
    from xcam.core.config import load_config
    from xcam.core.manager import get_plugin_manager

    folder = tmp_path / "one"
    (image,) = write_pngs(folder, 1, shape=(90, 130), seed=3)  # non-square: padded above and below
    out = tmp_path / "boxes.jsonl"
    models = "mobilenetv3,densenet121"
    result = invoke(small_config, "--input", str(folder), "--output", str(out), "--models", models,
                    "--random-weights", "--backend", "torch", "--boxes", "--cam-classes", "all", *settings_args)
    assert result.exit_code == 0, result.output
    (row,) = read_rows(out)
    got = json.loads(row["boxes"])

    clear_model_cache()  # the chain below rebuilds the random models from the same seed
    pm = get_plugin_manager(load_config(small_config))
    opts = dict(zip(settings_args[::2], settings_args[1::2]))
    settings = resolve_settings(pm, opts.get("--profile"), Overrides(mask=opts.get("--mask"),
                                                                       strategy=opts.get("--strategy")))
    chain = build_chain(pm, models, settings, ClassChoice(all_classes=True, ground_truth=False),
                        load=LoadOptions(backend="torch", random_init=True))
    analysis = chain.analyze(str(image))
    assert analysis.error is None
    want = _chain_entries(analysis)
    assert {b["model"] for b in want} == {"mobilenetv3", "densenet121", "ensemble"}
    assert [len(r.findings) for r in analysis.results] == [14, 18] and len(analysis.consolidated) == 14
    assert len(want) >= 14  # (a flat CAM of a random model has no box)
    assert got == want
    for r in analysis.results:  # and the probabilities are the chain's
        for label, p in r.predictions.items():
            assert row[f"{r.model}:{label}"] == pytest.approx(p, abs=1e-7)
    for b in got:
        assert 0 <= b["x"] and b["x"] + b["width"] <= 130 + 0.01 and 0 <= b["y"] and b["y"] + b["height"] <= 90 + 0.01


class FailsOnFlat:
    """A CAM plugin that fails on a flat (constant) image and works otherwise."""

    @staticmethod
    def compute(model, batch, class_indices, **_):
        x = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < 1e-6:
            raise RuntimeError("cannot explain a flat image")
        size = x.shape[-1]
        maps = np.zeros((len(class_indices), size, size), dtype=np.float32)
        maps[:, : size // 2, : size // 2] = 1.0
        return maps


def test_a_chain_failure_is_an_error_row_and_the_job_goes_on(tmp_path: Path, small_config: Path) -> None:
    from xcam.core.config import load_config
    from xcam.core.hookspecs import hookimpl
    from xcam.core.manager import get_plugin_manager
    from xcam.core.types import CamMethodRegistration

    class Plugin:
        @hookimpl
        def xcam_cam_methods(self):
            yield CamMethodRegistration(name="failsonflat", compute=FailsOnFlat.compute, needs_gradients=False)

    pm = get_plugin_manager(load_config(small_config))
    pm.load_object(Plugin(), "failsonflat-test")
    folder = tmp_path / "imgs"
    write_pngs(folder, 3, shape=(48, 48))  # square: no padding, so a constant image stays flat
    cv2.imwrite(str(folder / "img0001.png"), np.full((48, 48), 200, np.uint8))  # flat: the plugin fails on it
    out = tmp_path / "r.jsonl"
    result = invoke(small_config, "--input", str(folder), "--output", str(out), *MODEL, "--batch-size", "3",
                    "--boxes", "--cam-classes", "all", "--cam-method", "failsonflat", pm=pm)
    assert result.exit_code == 1, result.output
    assert "ok 2, failed 1" in result.output
    rows = {Path(p).name: r for p, r in by_path(list(read_rows(out))).items()}
    status = rows["img0001.png"]["status"]  # one line naming the plugin and its exception
    assert status.startswith("error: ") and "failsonflat" in status, status
    assert "RuntimeError: cannot explain a flat image" in status and "\n" not in status
    assert rows["img0001.png"]["boxes"] is None and rows["img0001.png"]["mobilenetv3:Mass"] is None
    for name in ("img0000.png", "img0002.png"):  # the rest of the batch, retried one by one, is scored
        assert rows[name]["status"] == "ok" and len(json.loads(rows[name]["boxes"])) == 14
    again = invoke(small_config, "--input", str(folder), "--output", str(out), *MODEL, "--batch-size", "3",
                   "--boxes", "--cam-classes", "all", "--cam-method", "failsonflat", pm=pm)
    assert "scored 0 images" in again.output and "skipped 3" in again.output  # resume: error rows are done


def test_a_plugin_failing_in_a_row_stops_the_job_and_a_rerun_resumes(tmp_path: Path, small_config: Path) -> None:
    from xcam.chain.guard import PluginGaveUp
    from xcam.core.config import load_config
    from xcam.core.hookspecs import hookimpl
    from xcam.core.manager import get_plugin_manager
    from xcam.core.types import CamMethodRegistration

    class Plugin:
        @hookimpl
        def xcam_cam_methods(self):
            yield CamMethodRegistration(name="failsonflat", compute=FailsOnFlat.compute, needs_gradients=False)

    pm = get_plugin_manager(load_config(small_config))
    pm.load_object(Plugin(), "failsonflat-test")
    folder = tmp_path / "imgs"
    write_pngs(folder, 5, shape=(48, 48))
    for i in (1, 2, 3):  # three flat images in a row
        cv2.imwrite(str(folder / f"img{i:04d}.png"), np.full((48, 48), 200, np.uint8))
    out = tmp_path / "r.csv"
    args = ("--input", str(folder), "--output", str(out), *MODEL, "--batch-size", "1", "--boxes",
            "--cam-classes", "all", "--cam-method", "failsonflat")
    stopped = invoke(small_config, *args, "--max-plugin-failures", "2", pm=pm)
    assert isinstance(stopped.exception, PluginGaveUp), stopped.output
    assert "failsonflat" in str(stopped.exception) and "2 images in a row" in str(stopped.exception)
    written = {Path(r["path"]).name: r["status"] for r in read_rows(out)}  # what was written stays
    assert written["img0000.png"] == "ok" and written["img0001.png"].startswith("error: ")
    assert written["img0002.png"].startswith("error: ")  # the failure that stopped the job is recorded too
    assert "img0003.png" not in written and "img0004.png" not in written
    resumed = invoke(small_config, *args, "--max-plugin-failures", "0", pm=pm)  # 0: never stop
    assert resumed.exit_code == 1 and "ok 1, failed 1" in resumed.output, resumed.output
    rows = {Path(p).name: r["status"] for p, r in by_path(list(read_rows(out))).items()}
    assert len(rows) == 5 and [rows[f"img{i:04d}.png"] == "ok" for i in range(5)] == [True, False, False, False, True]


def test_profile_and_plugin_names_fail_in_one_line(tmp_path: Path, small_config: Path, mixed_folder: Path) -> None:
    for args, expected in ((("--profile", "nosuch"), "unknown profile 'nosuch'"),
                           (("--strategy", "nosuch"), "nosuch"), (("--mask", "nosuch"), "nosuch")):
        proc = subprocess.run(xcam_cmd(small_config, "--input", str(mixed_folder), "--output",
                                       str(tmp_path / "r.csv"), *MODEL, "--boxes", *args),
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr, proc.stderr
        assert not (tmp_path / "r.csv").exists()  # failed before any output (or model) was made


def test_scorer_settings_and_classes() -> None:
    from xcam.score.scorer import ScoreOptions, parse_models

    refs = parse_models("densenet121,densenet121:all", "mobilenetv3")
    assert [r.key for r in refs] == ["densenet121@default", "densenet121@all"]
    import pickle

    options = ScoreOptions(refs, profile="fast", cam_method="gradcam", mask="otsu", strategy="tight", boxes=True,
                           cam_classes="all", threads=2)
    assert pickle.loads(pickle.dumps(options)) == options  # Ray actors rebuild the scorer from it
    assert options.class_choice().all_classes and not options.class_choice().ground_truth
    positive = ScoreOptions(refs, with_cams=True, threshold=0.3).class_choice()
    assert positive.threshold == 0.3 and positive.top_k is None and not positive.all_classes
    plain = ScoreOptions(refs).class_choice()
    assert plain.top_k == 0 and not plain.ground_truth  # predictions only: no CAM is computed
    load = options.load_options()
    assert load.threads == 2 and load.seed == 0


def test_gradcam_boxes_on_a_real_non_square_image(tmp_path: Path, small_config: Path, shared_data: Path) -> None:
    image = shared_data / "xrv-samples" / "16747_3_1.jpg"  # 1036 × 885
    listing = tmp_path / "one.txt"
    listing.write_text(f"{image}\n")
    out = tmp_path / "real.jsonl"
    result = invoke(small_config, "--input", str(listing), "--output", str(out), *MODEL, "--boxes", "--threshold", "0")
    assert result.exit_code == 0, result.output
    (row,) = read_rows(out)
    boxes = json.loads(row["boxes"])
    assert {b["label"] for b in boxes} <= {k.split(":", 1)[1] for k in row if k.startswith("mobilenetv3:")}
    assert boxes, "--threshold 0 makes every finding positive"
    for b in boxes:
        assert 0 <= b["x"] and b["x"] + b["width"] <= 1036 + 0.01
        assert 0 <= b["y"] and b["y"] + b["height"] <= 885 + 0.01


# -- memory stays flat ---------------------------------------------------------------------------
MEMORY_PROBE = """
import json, sys, tracemalloc
from xcam.core.config import load_config
from xcam.core.manager import get_plugin_manager
from xcam.score.inputs import PathSet
from xcam.score.job import PendingPaths
from xcam.score.local import run_local
from xcam.score.scorer import ScoreOptions, Scorer, parse_models

pm = get_plugin_manager(load_config(sys.argv[1]))
scorer = Scorer(ScoreOptions(parse_models("mobilenetv3", ""), random_weights=True), pm=pm)


def run(n):
    state = {"pulled": 0, "written": 0, "lead": 0}

    def paths():
        for i in range(n):
            state["pulled"] += 1
            yield f"/nonexistent/{i:08d}.png"  # error rows: exercises the whole pipeline, no model time

    def write(rows):
        state["written"] += len(rows)
        state["lead"] = max(state["lead"], state["pulled"] - state["written"])

    tracemalloc.start()
    stats = run_local(PendingPaths(paths(), PathSet()), scorer, write, batch_size=16, workers=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"n": n, "written": state["written"], "failed": stats.failed, "lead": state["lead"],
            "inflight": stats.peak_inflight, "peak": peak}


print(json.dumps([run(1_000), run(20_000)]))
"""


def test_inputs_stream_through_a_bounded_queue(small_config: Path) -> None:
    # Measured in a fresh interpreter: tracemalloc counts every thread's allocations, and threads
    # left behind by earlier tests in this process made the peak depend on test order.
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(small_config)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    small, large = json.loads(out.stdout.strip().splitlines()[-1])
    for r in (small, large):
        assert r["written"] == r["n"] and r["failed"] == r["n"]
        assert r["inflight"] <= 2 * 16 + 2 * 2
        assert r["lead"] <= 2 * 16 + 2 * 2  # never read far ahead
    per_input = (large["peak"] - small["peak"]) / 19_000
    print(f"peak traced memory: {small['peak']} B for 1000 inputs, {large['peak']} B for 20000 ({per_input:.1f} B/input)")
    assert per_input < 40, f"memory grows {per_input:.0f} bytes per input"  # the done-set's fingerprints only


def test_path_set_is_compact() -> None:
    from xcam.score.inputs import PathSet

    s = PathSet()
    assert all(s.add(f"/data/{i}.png") for i in range(50_000))
    assert not s.add("/data/123.png") and "/data/49999.png" in s and "/data/50000.png" not in s
    assert len(s) == 50_000 and s.nbytes < 50_000 * 24


# -- CLI details ----------------------------------------------------------------------------------
def test_command_module_does_not_import_torch() -> None:
    code = ("import sys, xcam.commands.score, xcam.score.job; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_line_errors(tmp_path: Path, small_config: Path, mixed_folder: Path) -> None:
    bad = subprocess.run(xcam_cmd(small_config, "--input", str(mixed_folder), "--output", str(tmp_path / "r.xlsx")),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "use .csv, .jsonl or .parquet" in bad.stderr
    missing = subprocess.run(xcam_cmd(small_config, "--input", str(tmp_path / "nope"),
                                      "--output", str(tmp_path / "r.csv")),
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "no such folder" in missing.stderr


def test_ray_missing_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from xcam.core.errors import XcamError
    from xcam.score.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(XcamError, match=r"pip install 'xcam\[ray\]'"):
        import_ray()


def test_backend_auto_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from xcam.core.errors import UsageError
    from xcam.score import scorer

    monkeypatch.setattr(scorer, "runtime_available", lambda: False)
    assert scorer.resolve_backend("auto") == "torch"
    with pytest.raises(UsageError, match="--backend torch"):
        scorer.resolve_backend("onnx")
    monkeypatch.setattr(scorer, "runtime_available", lambda: True)
    assert scorer.resolve_backend("auto") == "auto"


def test_summary_numbers() -> None:
    from xcam.score.progress import Summary

    s = Summary("r.csv", "local", ["torch:cpu"], new_ok=8, new_failed=2, previous_ok=5, wall_s=2.0, skipped=5)
    assert s.images_per_s == 5.0 and s.ok == 13 and s.failed == 2
    assert "failed 2" in s.text() and math.isclose(s.as_dict()["images_per_s"], 5.0)
