"""``xcam score --engine ray``: the same rows as the local engine (boxes included: each actor runs
the same chain), and the same resume rule.

One module-scoped local Ray instance (``num_cpus=2``); skipped when Ray Data is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from test_score import MODEL, SMALL_TOML, by_path, invoke, write_pngs

from xcam.score.writers import read_rows


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def test_ray_engine_matches_local_and_resumes(tmp_path: Path, local_ray: None) -> None:
    config = tmp_path / "plugins.toml"
    config.write_text(SMALL_TOML)
    folder = tmp_path / "imgs"
    paths = write_pngs(folder, 10, shape=(60, 40))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a JPEG\n")

    chain = ("--boxes", "--threshold", "0", "--profile", "fast")  # boxes for every class, in original pixels
    local = tmp_path / "local.csv"
    result = invoke(config, "--input", str(folder), "--output", str(local), *MODEL, *chain, "--batch-size", "4")
    assert result.exit_code == 1 and "ok 10, failed 2" in result.output, result.output

    # first a Ray run over half of the inputs, then over all of them: the done half is skipped
    half = tmp_path / "half.txt"
    half.write_text("".join(f"{p}\n" for p in paths[:5]))
    out = tmp_path / "ray.parquet"
    first = invoke(config, "--input", str(half), "--output", str(out), *MODEL, *chain, "--engine", "ray",
                   "--batch-size", "4")
    assert first.exit_code == 0 and "ok 5, failed 0" in first.output, first.output
    second = invoke(config, "--input", str(folder), "--output", str(out), *MODEL, *chain,
                    "--engine", "ray", "--batch-size", "4")
    assert second.exit_code == 1, second.output
    assert "scored 7 images" in second.output and "skipped 5" in second.output and "failed 2" in second.output

    got, want = by_path(list(read_rows(out))), by_path(list(read_rows(local)))
    assert sorted(got) == sorted(want) and len(got) == 12
    for path, row in want.items():
        assert got[path]["status"] == row["status"]
        for column, value in row.items():
            if column.startswith("mobilenetv3:") and value is not None:
                assert got[path][column] == pytest.approx(value, abs=1e-6), (path, column)
        if row["status"] != "ok":
            assert got[path]["boxes"] is None
            continue
        boxes, want_boxes = json.loads(got[path]["boxes"]), json.loads(row["boxes"])
        assert len(boxes) == len(want_boxes) and want_boxes, path
        for b, w in zip(boxes, want_boxes):
            assert (b["model"], b["label"]) == (w["model"], w["label"])
            assert 0 <= w["x"] and w["x"] + w["width"] <= 40.01 and 0 <= w["y"] and w["y"] + w["height"] <= 60.01
            for key in ("x", "y", "width", "height"):  # the geometry travels through Ray's columns
                assert b[key] == pytest.approx(w[key], abs=0.02), (path, key)
