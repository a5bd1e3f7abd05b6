"""ONNX Runtime backend: the Classifier protocol, parity with the torch backend, all-class CAMs,
the pipeline's fast-path hook, ``auto`` fallback, INT8 loading and session options."""

from __future__ import annotations

import numpy as np
import pytest

from xcam.core.errors import XcamError
from xcam.core.inference import TorchClassifier
from xcam.export.backends import load_classifier
from xcam.core.weights import WeightsStore
from xcam.export import onnx_export
from xcam.export.runtime import OnnxClassifier
from xcam.export.samples import load_batch, synthetic_batch


@pytest.fixture(scope="module")
def store(random_weights):
    random_weights("densenet121")
    return WeightsStore.from_env()


@pytest.fixture(scope="module")
def onnx_clf(pm, store):
    return load_classifier(pm, "densenet121", backend="onnx", store=store)


@pytest.fixture(scope="module")
def torch_clf(pm, store):
    return load_classifier(pm, "densenet121", backend="torch", store=store)


@pytest.fixture(scope="module")
def real_batch(nih_images):
    return load_batch(nih_images[:3], 224)


def test_satisfies_the_classifier_protocol(onnx_clf, torch_clf):
    assert isinstance(onnx_clf, OnnxClassifier)
    for attr in ("name", "variant", "labels", "valid_indices", "input_size", "preprocessing", "backend"):
        assert getattr(onnx_clf, attr) == getattr(torch_clf, attr) or attr == "backend", attr
    assert onnx_clf.backend == "onnx:CPUExecutionProvider"
    assert onnx_clf.providers == ["CPUExecutionProvider"]
    assert onnx_clf.cam_layer == "head_relu"


def test_probabilities_and_logits_match_torch_on_real_images(onnx_clf, torch_clf, real_batch):
    np.testing.assert_allclose(onnx_clf.predict(real_batch), torch_clf.predict(real_batch), atol=1e-4)
    ref = torch_clf.logits(real_batch)
    assert (np.abs(onnx_clf.logits(real_batch) - ref) / np.maximum(1, np.abs(ref))).max() < 1e-3
    probs = onnx_clf.predict(real_batch)
    np.testing.assert_allclose(onnx_clf.calibrate(onnx_clf.logits(real_batch)), probs, atol=1e-5)


def test_all_class_cams_match_torch_einsum_on_real_images(onnx_clf, torch_clf, real_batch):
    from xcam.core.cam_math import fast_gradcam_torch

    cams = onnx_clf.all_class_cams(real_batch)
    assert cams.shape == (3, 18, 7, 7) and cams.min() >= 0 and cams.max() <= 1
    ref = fast_gradcam_torch(torch_clf.model, real_batch).numpy()
    assert np.abs(cams - ref).max() < 1e-4
    probs, cams2 = onnx_clf.predict_with_cams(real_batch)
    np.testing.assert_allclose(cams2, cams, atol=1e-6)
    assert probs.shape == (3, 18)


def test_pipeline_compute_cams_uses_the_fast_path(pm, onnx_clf, torch_clf, real_batch, monkeypatch):
    """Through xcam.core.pipeline.compute_cams: the ONNX fast path equals the torch gradcam plugin
    (pytorch-grad-cam); gradcam++ falls back to the torch model."""
    from xcam.core.pipeline import compute_cams

    classes = [0, 7, 10]
    fast = compute_cams(onnx_clf, real_batch, classes, "gradcam", pm=pm, cam_classifier=torch_clf)
    ref = compute_cams(torch_clf, real_batch, classes, "gradcam", pm=pm, truncate_backward=False)
    assert fast.shape == (3, 224, 224)
    assert np.abs(fast - ref).max() < 1e-4
    assert onnx_clf.cam_fast_path(real_batch, classes, "gradcam++", {}) is None
    plus = compute_cams(onnx_clf, real_batch[:1], [0], "gradcam++", pm=pm, cam_classifier=torch_clf)
    assert plus.shape == (1, 224, 224)


def test_cams_come_from_the_predict_pass_and_are_deduplicated(onnx_clf, real_batch, monkeypatch):
    onnx_clf.clear_cam_cache()
    x = real_batch[:1]
    onnx_clf.predict(x)
    calls = []
    original = onnx_clf.run
    monkeypatch.setattr(onnx_clf, "run", lambda b, outputs=None: calls.append(len(b)) or original(b, outputs))
    maps = onnx_clf.cam_fast_path(np.repeat(x, 3, axis=0), [0, 1, 2], "gradcam", {})
    assert maps.shape == (3, 7, 7) and calls == []  # served from the predict() pass
    onnx_clf.clear_cam_cache()
    onnx_clf.cam_fast_path(np.repeat(x, 3, axis=0), [0, 1, 2], "gradcam", {})
    assert calls == [1]  # three identical images: one inference


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
