"""ONNX Runtime backend: the Classifier protocol and its declared capabilities, parity with the
torch backend, all-class CAMs from one pass, the chain routing CAMs by what the backend declares,
``auto`` fallback, INT8 loading and session options."""

from __future__ import annotations

import numpy as np
import pytest

from xcam.core.errors import XcamError
from xcam.core.inference import TorchClassifier
from xcam.export.backends import load_classifier
from xcam.export import onnx_export
from xcam.export.runtime import OnnxClassifier
from xcam.export.samples import load_batch, synthetic_batch


@pytest.fixture(scope="module")
def torch_clf(pm, store):
    return load_classifier(pm, "densenet121", backend="torch", store=store)


@pytest.fixture(scope="module")
def real_batch(nih_images):
    return load_batch(nih_images[:3], 224)


def test_satisfies_the_classifier_protocol(onnx_clf, torch_clf):
    assert isinstance(onnx_clf, OnnxClassifier)
    for attr in ("name", "variant", "labels", "valid_indices", "input_size", "preprocessing", "in_graph_cams",
                 "cam_layer", "localization_layers"):
        assert getattr(onnx_clf, attr) == getattr(torch_clf, attr), attr
    assert onnx_clf.backend == "onnx:CPUExecutionProvider"
    assert onnx_clf.providers == ["CPUExecutionProvider"]
    assert onnx_clf.cam_layer == "head_relu"
    # declared, not probed: ONNX Runtime has no autograd; both serve gradcam from the forward pass
    assert onnx_clf.autograd_model is None and torch_clf.autograd_model is torch_clf.model
    assert onnx_clf.in_graph_cams == frozenset({"gradcam"})
    for name in ("cam_fast_path", "clear_cam_cache"):
        assert not hasattr(onnx_clf, name), name


def test_probabilities_and_logits_match_torch_on_real_images(onnx_clf, torch_clf, real_batch):
    np.testing.assert_allclose(onnx_clf.predict(real_batch), torch_clf.predict(real_batch), atol=1e-4)
    ref = torch_clf.logits(real_batch)
    assert (np.abs(onnx_clf.logits(real_batch) - ref) / np.maximum(1, np.abs(ref))).max() < 1e-3
    probs = onnx_clf.predict(real_batch)
    np.testing.assert_allclose(onnx_clf.calibrate(onnx_clf.logits(real_batch)), probs, atol=1e-5)


def test_all_class_cams_match_torch_on_real_images(onnx_clf, torch_clf, real_batch):
    from xcam.core.cam_math import fast_gradcam_torch

    cams = onnx_clf.all_class_cams(real_batch)
    assert cams.shape == (3, 18, 7, 7) and cams.min() >= 0 and cams.max() <= 1
    ref = fast_gradcam_torch(torch_clf.model, real_batch).numpy()
    assert np.abs(cams - ref).max() < 1e-4
    probs, cams2 = onnx_clf.predict_with_cams(real_batch)
    np.testing.assert_allclose(cams2, cams, atol=1e-6)
    torch_probs, torch_cams = torch_clf.predict_with_cams(real_batch)
    np.testing.assert_allclose(probs, torch_probs, atol=1e-4)
    assert np.abs(cams2 - torch_cams).max() < 1e-4


def test_predict_with_cams_is_one_inference(onnx_clf, real_batch, monkeypatch):
    calls = []
    original = onnx_clf.run
    monkeypatch.setattr(onnx_clf, "run", lambda b, outputs=None: calls.append((len(b), outputs)) or original(b, outputs))
    probs, cams = onnx_clf.predict_with_cams(real_batch[:2])
    assert calls == [(2, ["probabilities", "cams"])]
    calls.clear()
    onnx_clf.predict(real_batch[:2])
    assert calls == [(2, ["probabilities"])]  # classification alone does not run the CAM einsum


def _chain(pm, store, backend, method, targets):
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.settings import ClassChoice, Overrides, resolve_settings

    settings = resolve_settings(pm, "fast", Overrides(method=method, layers="model", aug_smooth=False))
    return build_chain(pm, "densenet121", settings, ClassChoice(targets=targets, ground_truth=False),
                       load=LoadOptions(backend=backend), store=store)


def test_chain_serves_gradcam_in_graph_on_onnx_and_matches_torch(pm, store, nih_images):
    """Through the chain: gradcam comes from the ONNX pass (no PyTorch model is built) and equals
    the torch backend's; gradcam++ is not declared in-graph, so the chain builds the PyTorch model."""
    targets = ("Atelectasis", "Effusion", "Mass")
    onnx_chain = _chain(pm, store, "onnx", "gradcam", targets)
    model = onnx_chain.models[0]
    assert model.classifier.backend.startswith("onnx:")
    result = onnx_chain.analyze(nih_images[0])
    assert result.ok, result.error
    assert result.results[0].method == "gradcam (in-graph)" and not model.autograd_loaded
    ref = _chain(pm, store, "torch", "gradcam", targets).analyze(nih_images[0])
    got = {f.pathology: f for f in result.results[0].findings}
    want = {f.pathology: f for f in ref.results[0].findings}
    assert set(got) == set(want) == set(targets)
    for label in targets:
        assert np.abs(got[label].cam - want[label].cam).max() < 1e-3, label
        assert got[label].probability == pytest.approx(want[label].probability, abs=1e-4)
    plus_chain = _chain(pm, store, "onnx", "gradcam++", targets[:1])
    plus = plus_chain.analyze(nih_images[0])
    assert plus.ok and plus.results[0].method == "gradcam++"
    assert plus_chain.models[0].autograd_loaded and plus.results[0].findings[0].cam.max() == pytest.approx(1.0)


def test_auto_backend_prefers_onnx(pm, store):
    assert load_classifier(pm, "densenet121", backend="auto", store=store).backend.startswith("onnx:")


def test_auto_falls_back_to_torch_with_one_line(pm, store, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise onnx_export.ExportError("cannot export densenet121 to ONNX (test)")

    monkeypatch.setattr(onnx_export, "ensure_export", fail)
    clf = load_classifier(pm, "densenet121", backend="auto", store=store)
    assert isinstance(clf, TorchClassifier)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "using PyTorch" in err
    with pytest.raises(onnx_export.ExportError):
        load_classifier(pm, "densenet121", backend="onnx", store=store)


def test_int8_loads_and_classifies(pm, store, onnx_clf, nih_images, capsys, tmp_path):
    import shutil

    from xcam.export.quantize import ensure_int8

    lone = tmp_path / onnx_clf.path.name  # an export with no INT8 sibling yet (others may be cached)
    shutil.copy(onnx_clf.path, lone)
    with pytest.raises(XcamError, match="--calibration"):
        ensure_int8(lone)

    calib = load_batch(nih_images[:8], 224)
    path = ensure_int8(onnx_clf.path, calib)
    assert ensure_int8(onnx_clf.path, calib) == path  # cached
    clf = load_classifier(pm, "densenet121", backend="onnx-int8", store=store)
    assert clf.path == path and clf.backend == "onnx-int8:CPUExecutionProvider"
    held = load_batch(nih_images[20:26], 224)
    probs = clf.predict(held)
    assert probs.shape == (6, 18) and np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1
    assert np.abs(probs - onnx_clf.predict(held)).mean() < 0.05
    assert clf.all_class_cams(held).shape == (6, 18, 7, 7)
    assert path.stat().st_size < onnx_clf.path.stat().st_size / 2


def test_session_options_use_all_cores_and_full_optimization():
    import onnxruntime as ort

    from xcam.export.providers import cpu_threads, session_options

    so = session_options()
    assert so.intra_op_num_threads == cpu_threads()
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(XcamError, match="not found"):
        OnnxClassifier.from_path(tmp_path / "missing.onnx")


def test_generated_images_work_without_real_data(onnx_clf):
    out = onnx_clf.predict(synthetic_batch(2, 224))
    assert out.shape == (2, 18)


def _record(fp32, int8, int8_ips: float, p95: float, cpu_key: str | None = None) -> None:
    """A measurement record for this CPU (or ``cpu_key``) with injected timings and accuracy."""
    from xcam.core.cpu import cpu_info
    from xcam.export.quantize import Candidate, choose, write_selection

    acc = {"p95_abs_probabilities": p95, "max_abs_probabilities": 2 * p95, "mean_abs_probabilities": p95 / 3}
    sel = choose([Candidate("onnxruntime", "fp32", fp32.name, {1: 10.0, 16: 10.0}, {"p95_abs_probabilities": 0.0}),
                  Candidate("onnxruntime", "default", int8.name, {1: int8_ips, 16: int8_ips}, acc)])
    cpu = {**cpu_info().to_dict(), **({"key": cpu_key} if cpu_key else {})}
    write_selection(fp32, {"cpu": cpu, "measured": "2026-01-01T00:00:00", "candidates": sel.rows,
                           "budget": {"p95": 0.03, "max": None, "mean": None}})


def test_auto_runs_int8_only_where_it_measured_faster_and_within_budget(pm, store, onnx_clf, nih_images, capsys):
    from xcam.export.quantize import ensure_int8, selection_path

    fp32 = onnx_clf.path
    int8 = ensure_int8(fp32, load_batch(nih_images[:8], 224))
    selection_path(fp32).unlink(missing_ok=True)
    try:
        capsys.readouterr()
        cases = [  # (record, backend auto must run, words of its one line)
            (None, "onnx:", "no INT8/OpenVINO measurement for this CPU"),
            ((20.0, 0.01, "Another-CPU|AVX-512+VNNI|2c"), "onnx:", "measured only on Another-CPU"),
            ((8.0, 0.0, None), "onnx:", "not faster than onnx FP32: 0.80×"),  # slower: never run
            ((30.0, 0.2, None), "onnx:", "p95 |Δp| 0.200 > 0.03"),  # 3× faster but outside the budget
            ((20.0, 0.01, None), "onnx-int8:", "2.00× at batch 16"),  # faster and within: run
        ]
        for record, backend, words in cases:
            selection_path(fp32).unlink(missing_ok=True)
            if record:
                _record(fp32, int8, *record)
            clf = load_classifier(pm, "densenet121", backend="auto", store=store)
            err = capsys.readouterr().err.strip()
            assert clf.backend.startswith(backend), (record, clf.backend)
            assert err.count("\n") == 0 and err.startswith("xcam: --backend auto → ") and words in err, err
            if backend == "onnx-int8:":
                assert clf.path == int8 and "on this CPU" in err
            else:
                assert clf.path == fp32
    finally:
        selection_path(fp32).unlink(missing_ok=True)


def test_explicit_int8_uses_the_kept_file_and_notes_a_rejected_one(pm, store, onnx_clf, nih_images, capsys):
    from xcam.export.quantize import ensure_int8, selection_path

    fp32 = onnx_clf.path
    int8 = ensure_int8(fp32, load_batch(nih_images[:8], 224))
    try:
        _record(fp32, int8, 8.0, 0.0)
        capsys.readouterr()
        clf = load_classifier(pm, "densenet121", backend="onnx-int8", store=store)
        err = capsys.readouterr().err.strip()
        assert clf.backend.startswith("onnx-int8:") and err.count("\n") == 0 and "was not kept on this CPU" in err
    finally:
        selection_path(fp32).unlink(missing_ok=True)


def test_cpu_info_reads_flags_and_keys_by_isa():
    from xcam.core.cpu import CpuInfo, cpu_info, parse_proc_cpuinfo

    text = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\n"
            "processor\t: 1\nmodel name\t: other\n")
    model, flags = parse_proc_cpuinfo(text)
    assert model == "AMD EPYC" and flags == {"avx2", "avx512f", "avx512_vnni", "amx_tile"}
    zen5, zen2 = CpuInfo(model, 2, 2, flags, "test"), CpuInfo(model, 2, 2, frozenset({"avx2"}), "test")
    assert zen5.isa == ["AVX2", "AVX-512", "VNNI", "AMX"] and zen2.isa == ["AVX2"]
    assert zen5.key() != zen2.key()  # same model name, different machines
    here = cpu_info()
    assert here.model and here.cores >= 1 and here.to_dict()["key"] == here.key()
