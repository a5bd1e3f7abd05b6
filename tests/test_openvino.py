"""OpenVINO backend on the same exported files as ONNX Runtime: the Classifier protocol, parity of
probabilities, logits and in-graph CAMs with ONNX Runtime and PyTorch on real X-rays, loading
through ``load_classifier``, and INT8 files. Skipped with a reason when openvino is absent."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (optional extra: pip install 'xcam[openvino]')")

from xcam.core.errors import XcamError  # noqa: E402
from xcam.export.backends import load_classifier  # noqa: E402
from xcam.export.openvino_runtime import OpenVinoClassifier  # noqa: E402
from xcam.export.samples import load_batch, synthetic_batch  # noqa: E402


@pytest.fixture(scope="module")
def ov_clf(pm, store, onnx_clf):
    return load_classifier(pm, "densenet121", backend="openvino", store=store)


@pytest.fixture(scope="module")
def real_batch(nih_images):
    return load_batch(nih_images[:3], 224)


def test_same_file_same_classifier(ov_clf, onnx_clf):
    assert isinstance(ov_clf, OpenVinoClassifier)
    assert ov_clf.path == onnx_clf.path  # no conversion, no second cache
    for attr in ("name", "variant", "labels", "valid_indices", "input_size", "preprocessing", "in_graph_cams",
                 "cam_layer", "localization_layers", "output_names"):
        assert getattr(ov_clf, attr) == getattr(onnx_clf, attr), attr
    assert ov_clf.backend == "openvino:CPU" and ov_clf.autograd_model is None and not ov_clf.uses_gpu
    np.testing.assert_array_equal(ov_clf.op_threshs, onnx_clf.op_threshs)


def test_outputs_match_onnx_runtime_and_torch_on_real_images(ov_clf, onnx_clf, pm, store, real_batch):
    got, ref = ov_clf.run(real_batch), onnx_clf.run(real_batch)
    assert set(got) == {"logits", "probabilities", "cams"}  # OpenVINO's "/Einsum_output_0" is found as cams
    for name in got:
        assert got[name].shape == ref[name].shape and got[name].dtype == np.float32, name
    np.testing.assert_allclose(got["probabilities"], ref["probabilities"], atol=1e-4)
    assert (np.abs(got["logits"] - ref["logits"]) / np.maximum(1, np.abs(ref["logits"]))).max() < 1e-3
    probs, cams = ov_clf.predict_with_cams(real_batch)
    _, ort_cams = onnx_clf.predict_with_cams(real_batch)
    assert cams.shape == (3, 18, 7, 7) and np.abs(cams - ort_cams).max() < 1e-3
    torch_clf = load_classifier(pm, "densenet121", backend="torch", store=store)
    torch_probs, torch_cams = torch_clf.predict_with_cams(real_batch)
    np.testing.assert_allclose(probs, torch_probs, atol=1e-4)
    assert np.abs(cams - torch_cams).max() < 1e-3
    np.testing.assert_allclose(ov_clf.calibrate(got["logits"]), got["probabilities"], atol=1e-5)


def test_dynamic_batch_and_fresh_buffers(ov_clf):
    a = ov_clf.predict(synthetic_batch(1, 224, seed=1))
    b = ov_clf.predict(synthetic_batch(5, 224, seed=2))
    assert a.shape == (1, 18) and b.shape == (5, 18)
    np.testing.assert_array_equal(a, ov_clf.predict(synthetic_batch(1, 224, seed=1)))  # not overwritten in place


def test_int8_file_runs_on_openvino(ov_clf, onnx_clf, pm, store, nih_images):
    from xcam.export.quantize import ensure_int8

    int8 = ensure_int8(onnx_clf.path, load_batch(nih_images[:8], 224))
    clf = load_classifier(pm, "densenet121", backend="openvino-int8", store=store)
    assert clf.path == int8 and clf.backend == "openvino-int8:CPU" and clf.quantized
    probs, cams = clf.predict_with_cams(load_batch(nih_images[20:22], 224))
    assert probs.shape == (2, 18) and np.isfinite(probs).all() and cams.shape == (2, 18, 7, 7)


def test_errors_are_one_line(tmp_path):
    with pytest.raises(XcamError, match="not found"):
        OpenVinoClassifier.from_path(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(XcamError) as info:
        OpenVinoClassifier.from_path(bad)
    assert "cannot compile with OpenVINO" in str(info.value) and "\n" not in str(info.value)
