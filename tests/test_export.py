"""ONNX export: graph outputs, dynamic batch, metadata, parity with PyTorch, the export cache and
``xcam export``. DenseNet121 is exported once per session (cached by weights hash); a tiny GAP
classifier covers the CLI and the in-graph op_norm quickly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from xcam.core.model import XCamModel
from xcam.core.types import ClassifierRegistration, WeightVariant
from xcam.core.weights import WeightsStore, sha256_of
from xcam.export.onnx_export import (
    cache_stem,
    ensure_export,
    export_model,
    onnx_cache_dir,
    read_metadata,
    strip_cams,
)
from xcam.export.parity import int8_deviation, onnx_parity, parity_report
from xcam.export.runtime import OnnxClassifier
from xcam.export.samples import load_batch, sample_batch, synthetic_batch

TINY_LABELS = ("Alpha", "", "Gamma", "Delta")
TINY_THRESHS = (0.3, float("nan"), 0.6, float("nan"))


class TinyGap(XCamModel):
    """conv → ReLU → GAP → linear, with op_norm thresholds (two NaN): exports in a second."""

    target_layer_path = "act"

    def __init__(self, gap: bool = True) -> None:
        super().__init__(TINY_LABELS, 32, TINY_THRESHS)
        self.name, self.variant = "tinygap", "tinygap-random"
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)
        self.gap = gap

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x / 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feature_map(x).mean(dim=(2, 3)))

    def gap_linear_head(self):
        if not self.gap:
            return None
        from xcam.nets.xrv import _FeatureMap

        return _FeatureMap(self), self.fc


def _tiny_registration() -> ClassifierRegistration:
    def build(request):
        torch.manual_seed(1)
        return TinyGap()

    return ClassifierRegistration(
        name="tinygap", labels=TINY_LABELS, input_size=32, target_layer="act",
        variants=(WeightVariant(name="tinygap-random", filename="tinygap.pt"),), builder=build,
        gap_linear_head=True,
    )


@pytest.fixture(scope="module")
def tiny_pm():
    from xcam.core.config import XcamConfig
    from xcam.core.hookspecs import hookimpl
    from xcam.core.manager import get_plugin_manager

    class Plugin:
        @hookimpl
        def xcam_classifiers(self):
            yield _tiny_registration()

    pm = get_plugin_manager(XcamConfig(), entrypoints=False)
    pm.load_object(Plugin(), "tinygap-plugin")
    return pm


@pytest.fixture(scope="module")
def densenet_export(pm, random_weights):
    """DenseNet121 with random weights saved under the real file name, exported through the cache."""
    path = random_weights("densenet121")
    artifact = ensure_export(pm.classifier("densenet121"), store=WeightsStore.from_env())
    return artifact, path


@pytest.fixture(scope="module")
def densenet_model(pm, densenet_export):
    return pm.classifier("densenet121").build(store=WeightsStore.from_env())


# -- the graph -----------------------------------------------------------------------------
def test_outputs_dynamic_batch_and_shapes(densenet_export):
    artifact, _ = densenet_export
    clf = OnnxClassifier.from_path(artifact.path)
    assert clf.output_names == ["logits", "probabilities", "cams"]
    for batch in (1, 3):
        out = clf.run(synthetic_batch(batch, 224))
        assert out["logits"].shape == (batch, 18)
        assert out["probabilities"].shape == (batch, 18)
        assert out["cams"].shape == (batch, 18, 7, 7)
        assert (out["cams"] >= 0).all()  # ReLU'd, not normalized
    assert clf.session.get_inputs()[0].shape[0] == "batch"


def test_metadata_travels_with_the_file(densenet_export, densenet_model):
    artifact, weights_file = densenet_export
    meta = read_metadata(artifact.path)
    assert json.loads(meta["labels"]) == list(densenet_model.labels)
    assert meta["input_size"] == "224" and meta["preprocessing"] == "xrv"
    threshs = json.loads(meta["op_threshs"])
    expected = densenet_model.op_threshs.tolist()
    assert len(threshs) == 18
    assert all((t is None and math.isnan(e)) or abs(t - e) < 1e-7 for t, e in zip(threshs, expected))
    # the export cache is keyed by the weights' sha256, so an identical file elsewhere may have made it
    assert Path(meta["weights_file"]).name == weights_file.name
    assert meta["weights_sha256"] == sha256_of(weights_file)
    assert meta["cam_target_layer"] == "head_relu"
    assert meta["version"] and meta["exporter"] in ("dynamo", "legacy")
    assert json.loads(meta["outputs"]) == ["logits", "probabilities", "cams"]


# -- parity --------------------------------------------------------------------------------
def test_parity_on_real_images(densenet_export, densenet_model, nih_images):
    batch = load_batch(nih_images[:4], 224)
    report = parity_report(densenet_model, densenet_export[0].path, batch, "nih")
    assert report["max_abs_probabilities"] < 1e-4
    assert report["max_rel_logits"] < 1e-3
    assert report["max_abs_cams"] < 1e-4


def test_parity_on_generated_images(densenet_export, densenet_model):
    report = parity_report(densenet_model, densenet_export[0].path, synthetic_batch(3, 224, seed=5), "generated")
    assert report["max_abs_probabilities"] < 1e-4
    assert report["max_rel_logits"] < 1e-3
    assert report["max_abs_cams"] < 1e-4


def _unsaturated_densenet(pm, images: np.ndarray) -> XCamModel:
    """DenseNet121 (random weights, seed 0) whose head gives logits that are not saturated.

    Its random head is useless for measuring INT8 error: logits spread ±300 (probabilities all 0
    or 1, so any error vanishes), and rescaled to a few units it reads directions in which the
    features barely vary between images, so the rescaling mostly amplifies quantization noise
    (measured: p95 |Δp| 0.09). A trained head reads the directions in which images differ; this
    one does too: each class mixes the top 8 principal directions of the pooled features of
    ``images``, scaled to a logit standard deviation of 2 across them and centred at the logit of
    its op_norm threshold, so calibrated probabilities spread around 0.5, op_norm's steepest part
    (91 % of the held-out ones in (0.05, 0.95))."""
    torch.manual_seed(0)
    model = pm.classifier("densenet121").build(random_init=True).eval()
    features, linear = model.gap_linear_head()
    with torch.no_grad():
        pooled = features(torch.from_numpy(images)).mean(dim=(2, 3)).double()
        _, _, directions = torch.linalg.svd(pooled - pooled.mean(0), full_matrices=False)
        mix = torch.randn(linear.out_features, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        weight = mix @ directions[:8]
        raw = pooled @ weight.T
        scale = 2.0 / raw.std(0)
        thresholds = torch.nan_to_num(model.op_threshs.double(), nan=0.5).clamp(1e-4, 1 - 1e-4)
        linear.weight.copy_((weight * scale[:, None]).float())
        linear.bias.copy_((torch.logit(thresholds) - raw.mean(0) * scale).float())
    return model


@pytest.fixture(scope="module")
def unsaturated(pm, nih_images, tmp_path_factory):
    """The unsaturated DenseNet121 exported (legacy exporter: faster), its 32 calibration and
    the other (held-out) real images."""
    if len(nih_images) < 48:
        pytest.skip(f"needs at least 48 real images (32 to calibrate, the rest held out); found {len(nih_images)}")
    images = load_batch(nih_images, 224)
    calibration, held = images[:32], images[32:]
    model = _unsaturated_densenet(pm, calibration)
    fp32 = export_model(model, tmp_path_factory.mktemp("unsat") / "densenet-unsaturated.onnx", exporter="legacy").path
    return model, fp32, calibration, held


def test_int8_parity_on_real_images(unsaturated):
    """Static INT8 (the default configuration) against FP32 on real X-rays it was not calibrated
    on: 32 calibration images (the CLI's default count), the other 27 held out; |Δp| over every
    (image, valid class) pair, 27 × 18.

    Measured (2-core AMD EPYC with AVX-512 VNNI, onnxruntime 1.32, torch 2.14; the same with the
    dynamo and the legacy exporter): |Δp| p95 0.037, max 0.086, mean 0.010; |Δlogit| max 0.49 for
    a logit s.d. of 2 (1.8 on the held-out images). Other random head mixtures (generator seeds 2-5) gave p95 0.021-0.028, max
    0.07-0.08, so 0.03 at p95 is not met by every head: bounds with margin over this head's values.
    Quantizing every op instead of convolutions only (presets ``qdq-s8s8-all``, ``op_types=()``)
    measured p95 0.09, max 0.34, mean 0.023 on this model: each bound below fails for them.
    The max bound (0.2): an outlier (image, class) sits where op_norm is steepest (slope 1/(2t)
    just below a small threshold t); 0.2 keeps it from carrying a clear negative (≤ 0.3) past 0.5.
    Normalized CAMs are not bounded: a class whose ReLU'd map is nearly empty normalizes noise, so
    their max |Δ| jumps between 0.2 and 1.0 from one head draw to the next.
    """
    from xcam.export.quantize import ensure_int8

    model, fp32, calibration, held = unsaturated
    with torch.no_grad():
        probs = model.calibrate(model(torch.from_numpy(held))).numpy()[:, model.valid_indices]
    assert ((probs > 0.05) & (probs < 0.95)).mean() > 0.7  # not saturated: the measurement means something
    int8 = ensure_int8(fp32, calibration)
    report = int8_deviation(fp32, int8, held, f"{len(held)} held-out NIH images")
    assert report["images"] == len(held) >= 16
    assert report["p95_abs_probabilities"] <= 0.05, report  # measured 0.037
    assert report["max_abs_probabilities"] <= 0.2, report  # measured 0.086
    assert report["mean_abs_probabilities"] <= 0.015, report  # measured 0.010
    assert report["max_abs_logits"] <= 1.0, report  # measured 0.49: half the logits' s.d. at most


def test_int8_selection_on_unsaturated_real_images(unsaturated, capsys):
    """The measured choice on the unsaturated model: each runtime's INT8 accuracy is what its
    file gives on the held-out images, nothing outside the 0.03 budget is kept, and ``auto``
    runs what the record says for this CPU (one line on stderr). Timing is one short round at
    batch 1 (the rule itself is tested with injected timings above)."""
    from xcam.export.backends import auto_choice
    from xcam.export.tuning import available_runtimes, tune_int8

    model, fp32, calibration, held = unsaturated
    selection, entry = tune_int8(fp32, calibration, held, presets=["default"], batch_sizes=(1,), rounds=1,
                                 held_source="held-out NIH")
    rows = {(r["runtime"], r["preset"]): r for r in entry["candidates"]}
    assert set(rows) == {(rt, p) for rt in available_runtimes() for p in ("fp32", "default")}
    ort = rows[("onnxruntime", "default")]
    expected = int8_deviation(fp32, fp32.parent / ort["file"], held)
    assert ort["accuracy"]["p95_abs_probabilities"] == pytest.approx(expected["p95_abs_probabilities"], abs=1e-6)
    assert 0.0 < ort["accuracy"]["mean_abs_probabilities"] < 0.05  # INT8 moves unsaturated outputs, a little
    for row in entry["candidates"]:
        if row["eligible"]:
            assert row["accuracy"]["p95_abs_probabilities"] <= 0.03
            assert all(v > 1.0 for v in row["speedup"].values())
        elif row["accuracy"] and row["accuracy"].get("p95_abs_probabilities", 0) > 0.03:
            assert row["verdict"].startswith("outside budget") and not row["speedup"]  # not even timed
    if ("openvino", "fp32") in rows:  # same file, other runtime: FP32 agrees closely
        assert rows[("openvino", "fp32")]["accuracy"]["max_abs_probabilities"] < 1e-3
    runtime, path, reason = auto_choice(fp32, "cpu")
    assert (runtime, path.name) == (selection.chosen.runtime, selection.chosen.file if selection.chosen.int8
                                    else fp32.name)
    assert reason.startswith(selection.reason) and "on this CPU" in reason


def test_in_graph_op_norm_nan_thresholds_and_cams(tmp_path):
    torch.manual_seed(0)
    model = TinyGap().eval()
    artifact = export_model(model, tmp_path / "tiny.onnx")
    x = synthetic_batch(5, 32, seed=1)
    got = OnnxClassifier.from_path(artifact.path).run(x)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        probs = model.calibrate(logits).numpy()
    np.testing.assert_allclose(got["probabilities"], probs, atol=1e-6)
    assert (got["probabilities"][:, [1, 3]] == 0.5).all()  # NaN thresholds → 0.5, as in xrv
    from xcam.core.cam_math import fast_gradcam_torch

    np.testing.assert_allclose(got["cams"], fast_gradcam_torch(model, x, normalize=False).numpy(), rtol=1e-4,
                               atol=1e-6)
    meta = read_metadata(artifact.path)
    threshs = json.loads(meta["op_threshs"])
    assert threshs[1] is None and threshs[3] is None
    assert threshs[0] == pytest.approx(0.3) and threshs[2] == pytest.approx(0.6)
    clf = OnnxClassifier.from_path(artifact.path)
    assert clf.valid_indices == [0, 2]
    np.testing.assert_allclose(clf.calibrate(got["logits"]), got["probabilities"], atol=1e-6)


def test_model_without_gap_head_exports_without_cams(tmp_path):
    torch.manual_seed(0)
    artifact = export_model(TinyGap(gap=False).eval(), tmp_path / "nocam.onnx")
    clf = OnnxClassifier.from_path(artifact.path)
    assert clf.output_names == ["logits", "probabilities"]
    assert clf.all_class_cams(synthetic_batch(1, 32)) is None
    assert clf.in_graph_cams == frozenset() and clf.autograd_model is None
    probs, cams = clf.predict_with_cams(synthetic_batch(2, 32))
    assert cams is None and probs.shape == (2, 4)
    assert read_metadata(artifact.path)["cam_target_layer"] == ""


def test_strip_cams_keeps_the_classifier(densenet_export):
    path = densenet_export[0].path
    plain = OnnxClassifier.from_path(strip_cams(path))
    full = OnnxClassifier.from_path(path)
    x = synthetic_batch(2, 224, seed=3)
    assert plain.output_names == ["logits", "probabilities"]
    np.testing.assert_allclose(plain.predict(x), full.predict(x), atol=1e-6)


def test_onnx_parity_helper_for_plugin_authors():
    torch.manual_seed(0)
    assert onnx_parity(TinyGap().eval(), torch.randn(2, 1, 32, 32) * 400) < 1e-4


def test_legacy_exporter_also_works(tmp_path):
    torch.manual_seed(0)
    artifact = export_model(TinyGap().eval(), tmp_path / "legacy.onnx", exporter="legacy")
    assert artifact.exporter == "legacy"
    assert OnnxClassifier.from_path(artifact.path).run(synthetic_batch(2, 32))["cams"].shape == (2, 4, 16, 16)


# -- the cache -----------------------------------------------------------------------------
def test_second_load_reuses_the_cached_export(pm, densenet_export):
    artifact, weights_file = densenet_export
    assert artifact.path.parent == onnx_cache_dir()
    assert sha256_of(weights_file)[:16] in artifact.path.name
    mtime = artifact.path.stat().st_mtime_ns
    again = ensure_export(pm.classifier("densenet121"), store=WeightsStore.from_env())
    assert not again.created and again.path == artifact.path and again.model is None
    from xcam.export.backends import load_classifier

    clf = load_classifier(pm, "densenet121", backend="onnx", store=WeightsStore.from_env())
    assert clf.path == artifact.path and artifact.path.stat().st_mtime_ns == mtime
    assert clf.backend == "onnx:CPUExecutionProvider"


def test_cache_key_changes_with_weights_opset_and_options(pm):
    variant = pm.classifier("densenet121").default
    base = cache_stem("densenet121", variant, "a" * 64)
    assert cache_stem("densenet121", variant, "b" * 64) != base
    assert cache_stem("densenet121", variant, "a" * 64, opset=17) != base
    assert cache_stem("densenet121", variant, "a" * 64, options={"x": 1}) != base
    assert cache_stem("densenet121", variant, "a" * 64, options={"weights": "nih"}) == base


# -- the command ---------------------------------------------------------------------------
def _invoke(pm, args):
    from xcam.cli import cli

    return CliRunner().invoke(cli, args, obj={"pm": pm}, catch_exceptions=False)


def test_cli_export_random_weights_with_int8(tiny_pm, tmp_path, nih_images):
    out = tmp_path / "tiny.onnx"
    result = _invoke(tiny_pm, ["export", "--model", "tinygap", "--random-weights", "--output", str(out),
                               "--quantize", "int8", "--calibration", str(nih_images[0].parent),
                               "--calibration-count", "4", "--quant-preset", "default,qdq-s8s8-all",
                               "--runtimes", "onnxruntime", "--tune-batch-sizes", "2", "--tune-rounds", "1",
                               "--time-all", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert out.is_file()
    assert report["parity"]["max_abs_probabilities"] < 1e-4
    assert report["parity"]["max_abs_cams"] < 1e-4
    assert "nih" in report["parity"]["source"] or "images from" in report["parity"]["source"]
    entry = report["int8_selection"]
    from xcam.core.cpu import cpu_info
    from xcam.export.quantize import Budget, candidates_from_rows, choose

    assert entry["cpu"]["model"] == cpu_info().model and entry["cpu"]["isa"] == cpu_info().isa
    assert entry["budget"]["p95"] == 0.03
    rows = {(r["runtime"], r["preset"]): r for r in entry["candidates"]}
    assert set(rows) == {("onnxruntime", p) for p in ("fp32", "default", "qdq-s8s8-all")}
    # the accuracy recorded for each INT8 file is what the file really gives on the held-out
    # images the command names (the 16 after the 4 calibration images)
    held, source = sample_batch(16, 32, "xrv", nih_images[0].parent, offset=4)
    assert entry["held_out"] == source
    for preset in ("default", "qdq-s8s8-all"):
        row = rows[("onnxruntime", preset)]
        int8 = next(p for p in _temp_exports(row["file"]) if p.is_file())
        expected = int8_deviation(out, int8, held)
        assert row["accuracy"]["p95_abs_probabilities"] == pytest.approx(expected["p95_abs_probabilities"], abs=1e-6)
        measurement = json.loads(read_metadata(int8)["int8_measurement"])
        assert measurement["cpu"]["model"] == cpu_info().model and "isa" in measurement["cpu"]
        assert measurement["runtimes"]["onnxruntime"]["accuracy"]["p95_abs_probabilities"] == \
            row["accuracy"]["p95_abs_probabilities"]
        assert set(measurement["runtimes"]["onnxruntime"]["speedup_vs_onnx_fp32"]) == {"2"}
    # what was kept follows the selection rule applied to the recorded numbers
    again = choose(candidates_from_rows(entry["candidates"]), Budget(0.03))
    kept = again.int8
    assert (report.get("int8_path") is not None) == (kept is not None)
    if kept is not None:
        assert rows[(kept.runtime, kept.preset)]["eligible"]
        assert json.loads(read_metadata(report["int8_path"])["quantization"])["type"] == "int8-static"
    assert entry["reason"] == again.reason


def _temp_exports(name: str) -> list[Path]:
    """Random-weight exports live in the per-process temporary folder of onnx_export."""
    from xcam.export import onnx_export

    return [Path(t.name) / name for t in onnx_export._TEMP]


def test_cli_export_human_report_names_the_choice(tiny_pm, nih_images, tmp_path):
    result = _invoke(tiny_pm, ["export", "--model", "tinygap", "--random-weights", "--output", str(tmp_path / "t.onnx"),
                               "--quantize", "int8",
                               "--calibration", str(nih_images[0].parent), "--calibration-count", "4",
                               "--quant-preset", "default", "--runtimes", "onnxruntime", "--tune-batch-sizes", "1",
                               "--tune-rounds", "1", "--budget-p95", "0.5"])
    assert result.exit_code == 0, result.output
    assert "int8 chosen by measurement on" in result.output
    assert "--backend auto on this CPU:" in result.output
    assert "int8 kept:" in result.output or "int8: none kept" in result.output


def test_cli_export_bad_tuning_options_are_one_line(tiny_pm):
    from xcam.core.errors import UsageError

    for args in (["--quant-preset", "nope"], ["--runtimes", "tensorflow"], ["--tune-batch-sizes", "0"]):
        with pytest.raises(UsageError) as info:
            _invoke(tiny_pm, ["export", "--model", "tinygap", "--random-weights", "--quantize", "int8",
                              "--calibration", ".", *args])
        assert "\n" not in str(info.value) and args[0] in str(info.value)


# -- INT8 chosen by measurement: the rule, with injected timings and accuracies --------------
def _cand(runtime, preset, ips, p95=0.0, mx=None, error=""):
    from xcam.export.quantize import Candidate

    acc = {} if error else {"p95_abs_probabilities": p95, "max_abs_probabilities": p95 * 2 if mx is None else mx,
                            "mean_abs_probabilities": p95 / 3}
    return Candidate(runtime, preset, f"{preset}-{runtime}.onnx", dict(ips), acc, error)


FP32_IPS = {1: 20.0, 16: 25.0}


def test_a_slower_int8_is_never_chosen():
    from xcam.export.quantize import choose

    fast_at_b1_only = _cand("onnxruntime", "default", {1: 60.0, 16: 24.0}, p95=0.001)  # 3× at b1, 0.96× at b16
    equal = _cand("onnxruntime", "qoperator", {1: 20.0, 16: 25.0}, p95=0.0)
    sel = choose([_cand("onnxruntime", "fp32", FP32_IPS), fast_at_b1_only, equal])
    assert sel.chosen.preset == "fp32" and sel.int8 is None
    verdicts = {r["preset"]: r["verdict"] for r in sel.rows}
    assert verdicts["default"].startswith("not faster") and "batch 16" in verdicts["default"]
    assert verdicts["qoperator"].startswith("not faster")
    assert sel.reason.startswith("onnx FP32")


def test_an_inaccurate_int8_is_never_chosen_however_fast():
    from xcam.export.quantize import Budget, choose

    wild = _cand("openvino", "default", {1: 200.0, 16: 250.0}, p95=0.55)  # 10× faster, p95 0.55
    edge = _cand("onnxruntime", "qdq-s8s8-all", {1: 40.0, 16: 50.0}, p95=0.0301)
    ok = _cand("onnxruntime", "default", {1: 30.0, 16: 30.0}, p95=0.02)
    sel = choose([_cand("onnxruntime", "fp32", FP32_IPS), wild, edge, ok])
    assert (sel.chosen.runtime, sel.chosen.preset) == ("onnxruntime", "default") and sel.int8 is sel.chosen
    assert "0.020" in sel.reason and "1.50× at batch 1" in sel.reason and "1.20× at batch 16" in sel.reason
    # a max bound rejects one whose p95 is fine
    sel = choose([_cand("onnxruntime", "fp32", FP32_IPS), _cand("onnxruntime", "default", {1: 30, 16: 30}, 0.02, 0.4)],
                 Budget(p95=0.03, max=0.2))
    assert sel.int8 is None and "max |Δp| 0.400 > 0.2" in sel.rows[1]["verdict"]
    # failed or unmeasured candidates are reported, never chosen
    sel = choose([_cand("onnxruntime", "fp32", FP32_IPS), _cand("onnxruntime", "qoperator", {}, error="boom")])
    assert sel.int8 is None and sel.rows[1]["verdict"] == "failed: boom"


def test_the_fastest_eligible_candidate_wins_and_fp32_openvino_counts():
    from xcam.export.quantize import choose

    cands = [_cand("onnxruntime", "fp32", FP32_IPS),
             _cand("onnxruntime", "default", {1: 36.0, 16: 40.0}, p95=0.02),  # 1.8× / 1.6×
             _cand("openvino", "fp32", {1: 44.0, 16: 55.0}, p95=1e-5),  # 2.2× / 2.2×, no INT8 at all
             _cand("openvino", "default", {1: 24.0, 16: 30.0}, p95=0.01)]  # 1.2× / 1.2×
    sel = choose(cands)
    assert (sel.chosen.runtime, sel.chosen.preset) == ("openvino", "fp32")
    assert (sel.int8.runtime, sel.int8.preset) == ("onnxruntime", "default")  # the INT8 kept for onnx-int8
    assert sel.chosen.backend == "openvino" and sel.int8.backend == "onnx-int8"


def test_recorded_selection_is_rederived_per_cpu(tmp_path):
    from xcam.export.quantize import Budget, choose, chosen_for, read_selections, selection_path, write_selection

    fp32 = tmp_path / "m.onnx"
    slow = _cand("onnxruntime", "default", {1: 10.0, 16: 10.0}, p95=0.0)
    sel = choose([_cand("onnxruntime", "fp32", FP32_IPS), slow], Budget())
    entry = {"cpu": {"key": "CPU-A|AVX2|2c"}, "budget": {"p95": 0.03, "max": None, "mean": None},
             "candidates": sel.rows, "chosen": {"preset": "default", "runtime": "onnxruntime"}}  # an edited record
    write_selection(fp32, entry)
    write_selection(fp32, {**entry, "cpu": {"key": "CPU-B|AVX-512+VNNI|2c"}})
    assert set(read_selections(fp32)) == {"CPU-A|AVX2|2c", "CPU-B|AVX-512+VNNI|2c"}
    again, _ = chosen_for(fp32, "CPU-A|AVX2|2c")
    assert again.chosen.preset == "fp32"  # the measurements decide, not the recorded "chosen" field
    assert chosen_for(fp32, "CPU-C|AVX2|2c") is None
    selection_path(fp32).write_text("{not json")
    assert read_selections(fp32) == {}


def test_cli_export_reports_reuse_from_cache(pm, densenet_export):
    result = _invoke(pm, ["export", "--model", "densenet121"])
    assert result.exit_code == 0, result.output
    assert "reused from cache" in result.output
    assert "parity vs PyTorch" in result.output


def test_cli_export_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "-m", "xcam.cli", "export", "--model", "densenet121", "--quantize", "int8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert "--calibration" in proc.stderr


def test_export_command_module_does_not_import_torch():
    code = "import sys, xcam.commands.export, xcam.commands.bench; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout.strip() == "False"


@pytest.mark.slow
def test_resnet50_export_parity(pm, random_weights, nih_images):
    random_weights("resnet50")
    reg = pm.classifier("resnet50")
    artifact = ensure_export(reg, store=WeightsStore.from_env())
    model = reg.build(store=WeightsStore.from_env())
    report = parity_report(model, artifact.path, load_batch(nih_images[:2], 512), "nih")
    assert report["max_abs_probabilities"] < 1e-4 and report["max_rel_logits"] < 1e-3
    assert report["max_abs_cams"] < 1e-4
    assert OnnxClassifier.from_path(artifact.path).run(load_batch(nih_images[:1], 512))["cams"].shape == (1, 18, 16, 16)


@pytest.mark.slow
def test_mobilenet_and_jf_export_without_cams(pm, tmp_path):
    for name in ("mobilenetv3", "jfhealthcare"):
        torch.manual_seed(0)
        model = pm.classifier(name).build(random_init=True)
        x = synthetic_batch(2, model.input_size)
        assert onnx_parity(model, x) < 1e-3
        artifact = export_model(model, tmp_path / f"{name}.onnx")
        assert "cams" not in OnnxClassifier.from_path(artifact.path).output_names


def test_mobilenet_lse_head_exports(tmp_path):
    from xcam.nets.mobilenet import MobileNetV3

    torch.manual_seed(0)
    model = MobileNetV3(["Mass", "Nodule"], "mobilenet_v3_small", 64, head="lse", dilated=True).eval()
    model.name, model.variant = "mobilenetv3", "lse-test"
    assert onnx_parity(model, synthetic_batch(2, 64)) < 1e-3  # log-sum-exp pooling in the graph
