"""A third-party plugin that fails never stops a batch job.

``tests/flaky_plugin`` is installed the way pip would (an ``xcam`` entry point of the distribution
``xcam-flaky``). Its ``flaky`` CAM method is Grad-CAM except on the images whose pixels hash to
"raise" (``RuntimeError``) or "nan" (NaN maps); ``broken`` raises on every call. ``score`` (local
and Ray) and ``analyze`` record those images as errors naming the plugin, its distribution and the
problem, and give every other image exactly what a plain ``gradcam`` run gives; ``--fail-fast``
stops at the first failure; ``broken`` stops the job early with its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import install_entry_point, run_xcam

from test_score import SMALL_TOML, by_path, invoke, write_pngs

from xcam.score.writers import read_rows

PLUGIN_SRC = Path(__file__).resolve().parent / "flaky_plugin" / "src"
MODEL = ["--models", "mobilenetv3", "--random-weights", "--backend", "torch", "--profile", "fast"]
BOXES = ["--boxes", "--cam-classes", "all"]
RAISED = "cam method 'flaky' (xcam-flaky 0.1.0): RuntimeError: flaky plugin failure"
NAN = "cam method 'flaky' (xcam-flaky 0.1.0): broke the contract: NaN or infinite values in the maps"


@pytest.fixture
def flaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plugin's distribution on the path (this process, subprocesses and Ray workers)."""
    install_entry_point(tmp_path, monkeypatch, "xcam-flaky", "0.1.0", "flaky", "xcam_flaky.plugin", PLUGIN_SRC)
    config = tmp_path / "plugins.toml"
    config.write_text(SMALL_TOML)
    return config


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    write_pngs(folder, 12, shape=(48, 64), seed=4)
    return folder


def statuses(rows: dict[str, dict]) -> dict[str, str]:
    return {Path(p).name: r["status"] for p, r in rows.items()}


def test_score_marks_the_failed_images_and_scores_the_rest_as_gradcam(flaky: Path, images: Path, tmp_path: Path):
    reference, out = tmp_path / "gradcam.csv", tmp_path / "flaky.csv"
    ref = invoke(flaky, "--input", str(images), "--output", str(reference), *MODEL, *BOXES, "--cam-method", "gradcam")
    assert ref.exit_code == 0, ref.output
    run = invoke(flaky, "--input", str(images), "--output", str(out), *MODEL, *BOXES, "--cam-method", "flaky",
                 "--batch-size", "4")
    assert run.exit_code == 1, run.output  # the job went on; the exit code counts the failures
    got, want = by_path(list(read_rows(out))), by_path(list(read_rows(reference)))
    assert sorted(got) == sorted(want) and len(got) == 12  # nothing lost
    failed = {name: s for name, s in statuses(got).items() if s != "ok"}
    assert {s for s in failed.values()} == {f"error: {RAISED}", f"error: {NAN}"}  # both kinds, one line each
    assert f"ok {12 - len(failed)}, failed {len(failed)}" in run.output
    for path, row in got.items():
        if row["status"] == "ok":  # a neighbour of a failing image in its batch: as if nothing had failed
            assert row["boxes"] == want[path]["boxes"] and row["mobilenetv3:Mass"] == want[path]["mobilenetv3:Mass"]
        else:
            assert row["boxes"] is None and row["mobilenetv3:Mass"] is None


def test_fail_fast_stops_at_the_first_failure(flaky: Path, images: Path, tmp_path: Path, capsys):
    code, _, err = run_xcam(["--config", str(flaky), "score", "--input", str(images), "--output",
                             str(tmp_path / "r.csv"), *MODEL, *BOXES, "--cam-method", "flaky", "--fail-fast"], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: cam method 'flaky' (xcam-flaky 0.1.0): ")


def test_a_plugin_failing_on_every_image_stops_the_job_early(flaky: Path, images: Path, tmp_path: Path):
    from xcam.chain.guard import PluginGaveUp

    out = tmp_path / "r.csv"
    args = ("--input", str(images), "--output", str(out), *MODEL, *BOXES, "--cam-method", "broken",
            "--batch-size", "2")
    stopped = invoke(flaky, *args, "--max-plugin-failures", "3")
    assert isinstance(stopped.exception, PluginGaveUp)
    assert str(stopped.exception) == ("stopping: cam method 'broken' (xcam-flaky 0.1.0) failed on 3 images in a row "
                                      "(last: RuntimeError: this plugin always fails)")
    written = list(read_rows(out))
    assert len(written) == 3 and all(r["status"].startswith("error: cam method 'broken'") for r in written)
    resumed = invoke(flaky, *args, "--max-plugin-failures", "0")  # what was written is valid: resume after it
    assert resumed.exit_code == 1 and "skipped 3" in resumed.output and "failed 9" in resumed.output
    assert len(list(read_rows(out))) == 12


def test_analyze_marks_the_failed_images_and_keeps_the_rest(flaky: Path, images: Path, tmp_path: Path, capsys):
    common = ["--config", str(flaky), "analyze", "--input", str(images), *MODEL, "--target-class", "Mass",
              "--json-only", "--quiet", "--batch-size", "4"]
    code, _, err = run_xcam([*common, "--method", "gradcam", "--output-dir", str(tmp_path / "ref")], capsys)
    assert code == 0, err
    code, out, err = run_xcam([*common, "--method", "flaky", "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 1
    summary = json.loads((tmp_path / "run" / "analyze_summary.json").read_text())
    failed = [i for i in summary["images"] if i["status"] == "error"]
    assert failed and summary["failed"] == len(failed) and f"error: {len(failed)} of 12 images failed" in err
    assert all(RAISED in i["error"] or NAN in i["error"] for i in failed)
    for item in summary["images"]:
        if item["status"] == "ok":
            name = Path(item["image"]).stem
            mine = json.loads((tmp_path / "run" / name / "analysis.json").read_text())["models"][0]["findings"]
            ref = json.loads((tmp_path / "ref" / name / "analysis.json").read_text())["models"][0]["findings"]
            assert [f["boxes"] for f in mine] == [f["boxes"] for f in ref]

    code, _, err = run_xcam([*common, "--method", "broken", "--max-plugin-failures", "4",
                             "--output-dir", str(tmp_path / "broken")], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: stopping: cam method 'broken' (xcam-flaky 0.1.0) failed on 4 images in a row "
        "(last: RuntimeError: this plugin always fails); 8 images not analyzed")
    assert json.loads((tmp_path / "broken" / "analyze_summary.json").read_text())["stopped"].startswith("stopping:")


@pytest.mark.slow
def test_ray_marks_the_same_images_as_the_local_engine(flaky: Path, images: Path, tmp_path: Path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    args = (*MODEL, *BOXES, "--cam-method", "flaky", "--batch-size", "4")
    assert invoke(flaky, "--input", str(images), "--output", str(local), *args).exit_code == 1
    started = not ray.is_initialized()
    if started:  # workers get the plugin through PYTHONPATH (set by the fixture)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = invoke(flaky, "--input", str(images), "--output", str(remote), *args, "--engine", "ray")
    finally:
        if started:
            ray.shutdown()
    assert result.exit_code == 1, result.output
    got, want = by_path(list(read_rows(remote))), by_path(list(read_rows(local)))
    assert statuses(got) == statuses(want)
    assert {p: r["boxes"] for p, r in got.items()} == {p: r["boxes"] for p, r in want.items()}
