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
            # auto runs the INT8 model only where export kept it within budget: that counts as "best"
            {"model": "m", "device": "cpu", "backend": "auto", "batch_size": 1, "images_per_s": 44.0},
        ],
        "cams": [
            {"implementation": "onnx", "what": "classify only (graph without cams)", "ms_per_image": 10.0},
            {"implementation": "onnx", "what": "classify + Grad-CAM of all 18 classes (in-graph)", "ms_per_image": 11.0},
            {"implementation": "pytorch-grad-cam", "what": "GradCAM, all 18 classes (loop)", "ms_per_image": 1100.0},
        ],
        "analyze": {"pipeline_onnx": {"images_per_s": 5.0}, "script": {"images_per_s": 0.1}},
    }
    ratios = bench_module.ratios(results)
    assert ratios == {"onnx_vs_torch_b1": 3.0, "int8_vs_fp32_b1": 1.5, "best_vs_torch_b1": 4.4,
                      "best_int8_vs_fp32_b1": 1.5, "allclass_cam_vs_classify": 1.1,
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
    assert {r["runs_on"] for r in rows if r["backend"] == "onnx-int8"} == {"onnx-int8:CPUExecutionProvider [default]"}
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


LONG = "densenet121-with-a-very-long-plugin-name"


def _results(bench_module):
    from xcam.core.cpu import cpu_info

    c = cpu_info()
    row = {"model": LONG, "device": "cpu", "batch_size": 16, "p50_ms": 500.0, "p95_ms": 510.0, "images_per_s": 32.0,
           "cpu_ms_per_image": 60.0, "peak_rss_mb": 900.0, "peak_gpu_mb": None}
    return {"quick": False, "machine": {"cpu": c.model, "cpu_model": c.model, "isa": ["AVX2", "AVX-512", "VNNI"],
                                        "cores": 2, "cores_usable": 2, "load_average_start": [1, 1, 1],
                                        "load_average_end": [1, 1, 1]},
            "throughput": [{**row, "backend": "openvino-int8", "provider": "openvino-int8:CPU",
                            "runs_on": "openvino-int8:CPU [qdq-u8s8-conv-reduce-range]"},
                           {**row, "backend": "auto", "provider": "onnx:CPUExecutionProvider",
                            "runs_on": "onnx:CPUExecutionProvider"}],
            "targets": bench_module.targets({"best_vs_torch_b16": 2.7}), "notes": ["auto: onnx FP32 (why)"],
            "skipped": []}


def test_table_on_a_non_terminal_keeps_full_names(bench_module, capsys):
    bench_module.print_report(_results(bench_module))  # capsys: stdout is not a terminal
    out = capsys.readouterr().out
    assert LONG in out and "openvino-int8:CPU [qdq-u8s8-conv-reduce-range]" in out and "…" not in out
    header = out.splitlines()[0]
    assert "AVX2, AVX-512, VNNI" in header and "2 cores" in header
    assert bench_module.TARGETS["best_vs_torch_b16"][2] in out  # the long meaning, not cut


def test_markdown_format(bench_module, capsys):
    bench_module.print_report(_results(bench_module), fmt="markdown")
    out = capsys.readouterr().out
    assert out.startswith("**xcam bench") and "(AVX2, AVX-512, VNNI), 2 cores" in out.splitlines()[0]
    table = [line for line in out.splitlines() if line.startswith(f"| {LONG} |")]
    assert len(table) == 2 and "| openvino-int8:CPU [qdq-u8s8-conv-reduce-range] |" in table[0]
    assert "- auto: onnx FP32 (why)" in out


def test_cli_format_json_names_the_machine_and_what_auto_chose(pm, random_weights, tmp_path, nih_images):
    from xcam.cli import cli
    from xcam.core.cpu import cpu_info

    random_weights("densenet121")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        cli, ["bench", "--quick", "--sections", "throughput", "--backends", "onnx,auto", "--batch-sizes", "1",
              "--output", str(out), "--images", str(nih_images[0].parent), "--format", "json"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is the JSON alone
    assert data == json.loads(out.read_text()) | {"chart": data["chart"]}
    m, here = data["machine"], cpu_info()
    assert m["cpu_model"] == here.model and m["isa"] == here.isa and m["cores"] == here.cores
    assert m["cpu_key"] == here.key() and set(m["cpu_flags"]) == set(here.flags)
    rows = {r["backend"]: r for r in data["throughput"]}
    assert set(rows) == {"onnx", "auto"}
    assert rows["auto"]["runs_on"] == rows["auto"]["provider"] and rows["auto"]["runs_on"].startswith("onnx")
    assert any(n.startswith("densenet121 auto: ") and "FP32" in n for n in data["notes"])
