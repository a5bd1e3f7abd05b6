"""``xcam bench``: the output format of a ``--quick`` run (not its speed), and the pieces."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from xcam.commands.bench import load_bench_module


@pytest.fixture(scope="module")
def bench_module():
    return load_bench_module()


def test_measure_interleaves_and_reports(bench_module):
    order = []
    fns = {"a": lambda: order.append("a") or time.sleep(0.002), "b": lambda: order.append("b")}
    stats = bench_module.measure(fns, warmup=1, repeats=3, images={"a": 4})
    assert order == ["a", "b"] * 4  # warm-up round, then interleaved rounds
    assert stats["a"]["repeats"] == 3 and stats["a"]["p50_ms"] >= 2
    assert stats["a"]["images_per_s"] == pytest.approx(4 / (stats["a"]["p50_ms"] / 1000))
    assert stats["b"]["p95_ms"] >= stats["b"]["p50_ms"] >= stats["b"]["min_ms"]


def test_ratios_and_targets(bench_module):
    results = {
        "throughput": [
            {"model": "m", "device": "cpu", "backend": "torch", "batch_size": 1, "images_per_s": 10.0},
            {"model": "m", "device": "cpu", "backend": "onnx", "batch_size": 1, "images_per_s": 30.0},
            {"model": "m", "device": "cpu", "backend": "onnx-int8", "batch_size": 1, "images_per_s": 45.0},
        ],
        "cams": [
            {"implementation": "onnx", "what": "classify only (graph without cams)", "ms_per_image": 10.0},
            {"implementation": "onnx", "what": "classify + Grad-CAM of all 18 classes (in-graph)", "ms_per_image": 11.0},
            {"implementation": "pytorch-grad-cam", "what": "GradCAM, all 18 classes (loop)", "ms_per_image": 1100.0},
        ],
        "analyze": {"pipeline_onnx": {"images_per_s": 5.0}, "script": {"images_per_s": 0.1}},
    }
    ratios = bench_module.ratios(results)
    assert ratios == {"onnx_vs_torch_b1": 3.0, "int8_vs_fp32_b1": 1.5, "allclass_cam_vs_classify": 1.1,
                      "gradcam_loop_vs_allclass": 100.0, "analyze_vs_script": 50.0}
    targets = bench_module.targets(ratios)
    assert targets["onnx_vs_torch_b1"]["met"] and not targets["int8_vs_fp32_b1"]["met"]
    assert targets["allclass_cam_vs_classify"]["target"] == "<= 1.25"


def test_quick_bench_output_format(pm, random_weights, tmp_path, nih_images):
    """``xcam bench --quick`` end to end; batch sizes 1 and 2 keep it short."""
    from xcam.cli import cli

    random_weights("densenet121")  # same seed-0 weights as the bench's: the ONNX export is shared
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli, ["bench", "--quick", "--batch-sizes", "1,2", "--output", str(out), "--images", str(nih_images[0].parent)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema"] == "xcam-bench/1" and data["quick"] is True
    assert {"cpu", "cores_usable", "versions", "load_average_start", "load_average_end"} <= set(data["machine"])
    rows = data["throughput"]
    assert {(r["backend"], r["batch_size"]) for r in rows} == {(b, n) for b in ("torch", "onnx", "onnx-int8")
                                                                 for n in (1, 2)}
    for r in rows:
        assert r["device"] == "cpu" and r["p95_ms"] >= r["p50_ms"] > 0 and r["images_per_s"] > 0
        assert r["peak_rss_mb"] > 0 and r["cpu_ms_per_image"] >= 0
    assert {r["provider"] for r in rows if r["backend"] == "onnx-int8"} == {"onnx-int8:CPUExecutionProvider"}
    impls = {r["implementation"] for r in data["cams"]}
    assert impls == {"onnx", "torch", "pytorch-grad-cam", "xcam plugin"}
    assert all(r["ms_per_image"] > 0 for r in data["cams"])
    analyze = data["analyze"]
    assert analyze["pipeline_onnx"]["images_per_s"] > 0 and analyze["script"]["classes_per_image"] == 18
    # through the chain: Grad-CAM served by the ONNX pass, timed per chain stage
    assert analyze["pipeline_onnx"]["backend"] == "onnx:CPUExecutionProvider"
    assert analyze["pipeline_onnx"]["method"] == "gradcam (in-graph)"
    assert set(analyze["pipeline_onnx"]["stage_ms_per_image"]) == {"load", "model", "cam", "mask_box", "write"}
    assert {"onnx_vs_torch_b1", "int8_vs_fp32_b1", "allclass_cam_vs_classify", "gradcam_loop_vs_allclass",
            "analyze_vs_script"} <= set(data["ratios"])
    assert set(data["targets"]) <= set(bench_module_targets())
    assert (tmp_path / "bench.png").stat().st_size > 1000
    assert "Throughput" in result.output and "Targets" in result.output


def bench_module_targets():
    return load_bench_module().TARGETS


def test_bad_options_are_one_line_errors(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "xcam.cli", "bench", "--backends", "tensorflow"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "tensorflow" in proc.stderr
