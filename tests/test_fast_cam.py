"""The one-pass all-class Grad-CAM (:mod:`xcam.core.cam_math`) equals pytorch-grad-cam's GradCAM on
the same target layer (``model.target_layer()``), one ClassifierOutputTarget per image, on real
X-rays with random weights: max |Δ| ≤ 1e-4 on the normalized input-resolution maps. Both backends
serve it from their forward pass (``predict_with_cams``) and declare it (``in_graph_cams``)
exactly when the model has a GAP → linear head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from xcam.core.cam_math import cams_to_input_size, fast_gradcam_torch, normalize_cams, supports_fast_cam
from xcam.core.inference import TorchClassifier
from xcam.export.samples import load_batch, synthetic_batch

TOL = 1e-4


def _reference(model, image: np.ndarray, classes: list[int]) -> np.ndarray:
    """pytorch-grad-cam GradCAM of ``classes`` for one image: the image repeated once per class,
    one ClassifierOutputTarget per batch item, CAM object used as a context manager."""
    x = torch.from_numpy(np.repeat(image[None], len(classes), axis=0))
    with GradCAM(model=model, target_layers=[model.target_layer()]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


def _build(pm, name: str):
    torch.manual_seed(0)
    return pm.classifier(name).build(random_init=True)


def _worst(model, maps: np.ndarray, x: np.ndarray, classes: list[int]) -> float:
    """Max |Δ| between feature-resolution maps ``[B, C, h, w]`` (finished like pytorch-grad-cam)
    and the reference, over ``classes`` of every image."""
    fast = cams_to_input_size(maps, model.input_size)
    assert fast.shape == (len(x), len(model.labels), model.input_size, model.input_size)
    worst, nonzero = 0.0, 0
    for i, image in enumerate(x):
        ref = _reference(model, image, classes)
        worst = max(worst, float(np.abs(ref - fast[i, classes]).max()))
        nonzero += int((ref.max(axis=(1, 2)) > 0.5).sum())
    assert nonzero >= len(classes) * len(x) // 2, "most reference maps should be non-trivial"
    return worst


def _check(model, x: np.ndarray, classes: list[int]) -> float:
    return _worst(model, fast_gradcam_torch(model, x, normalize=False).numpy(), x, classes)


def test_densenet121_all_classes_equal_pytorch_grad_cam_on_real_images(pm, nih_images):
    model = _build(pm, "densenet121")
    assert model.target_layer_path == "head_relu"
    x = load_batch(nih_images[:2], 224)
    assert _check(model, x, list(range(18))) <= TOL


def test_resnet50_equals_pytorch_grad_cam_on_a_real_image(pm, nih_images):
    model = _build(pm, "resnet50")
    assert model.target_layer_path == "model.layer4"
    assert _check(model, load_batch(nih_images[2:3], 512), [0, 7, 10, 16]) <= TOL


@pytest.mark.slow
def test_resnet50_all_classes_on_real_images(pm, nih_images):
    model = _build(pm, "resnet50")
    assert _check(model, load_batch(nih_images[3:5], 512), list(range(18))) <= TOL


def test_densenet121_on_generated_images(pm):
    model = _build(pm, "densenet121")
    assert _check(model, synthetic_batch(1, 224, seed=7), [0, 3, 9]) <= TOL


def test_feature_resolution_and_range(pm):
    model = _build(pm, "densenet121")
    cams = fast_gradcam_torch(model, synthetic_batch(2, 224))
    assert tuple(cams.shape) == (2, 18, 7, 7)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1


def test_normalization_matches_pytorch_grad_cam():
    from pytorch_grad_cam.utils.image import scale_cam_image

    rng = np.random.default_rng(0)
    maps = np.maximum(rng.normal(size=(3, 7, 7)).astype(np.float32), 0)
    maps[1] = 0  # an all-zero map stays zero
    np.testing.assert_allclose(normalize_cams(maps), scale_cam_image(maps), atol=1e-7)
    assert (normalize_cams(maps)[1] == 0).all()
    up = cams_to_input_size(maps, 224)
    np.testing.assert_allclose(up, scale_cam_image(scale_cam_image(maps, (224, 224))), atol=1e-6)


# -- the backends: predict_with_cams ------------------------------------------------------------
@pytest.fixture(scope="module")
def densenet(pm):
    return _build(pm, "densenet121")


@pytest.fixture(scope="module")
def densenet_onnx(densenet, tmp_path_factory):
    from xcam.export.onnx_export import export_model
    from xcam.export.runtime import OnnxClassifier

    path = export_model(densenet, tmp_path_factory.mktemp("fastcam") / "densenet.onnx", exporter="legacy").path
    return OnnxClassifier.from_path(path)


def test_torch_classifier_predict_with_cams_equals_pytorch_grad_cam(densenet, nih_images):
    clf = TorchClassifier(densenet)
    x = load_batch(nih_images[5:7], 224)
    probs, cams = clf.predict_with_cams(x)
    np.testing.assert_allclose(probs, clf.predict(x), atol=1e-6)  # the same forward pass
    assert cams.shape == (2, 18, 7, 7) and cams.min() >= 0 and cams.max() <= 1
    np.testing.assert_allclose(cams, normalize_cams(cams), atol=1e-6)  # already normalized per map
    assert _worst(densenet, cams, x, list(range(18))) <= TOL


def test_onnx_classifier_predict_with_cams_equals_pytorch_grad_cam(densenet, densenet_onnx, nih_images):
    x = load_batch(nih_images[7:9], 224)
    probs, cams = densenet_onnx.predict_with_cams(x)
    np.testing.assert_allclose(probs, TorchClassifier(densenet).predict(x), atol=1e-4)
    assert cams.shape == (2, 18, 7, 7) and cams.min() >= 0 and cams.max() <= 1
    assert _worst(densenet, cams, x, [0, 2, 5, 7, 10, 13, 16]) <= TOL


def test_onnx_predict_with_cams_is_one_inference(densenet_onnx, monkeypatch):
    calls = []
    run = densenet_onnx.run
    monkeypatch.setattr(densenet_onnx, "run", lambda b, outputs=None: calls.append(outputs) or run(b, outputs))
    densenet_onnx.predict_with_cams(synthetic_batch(2, 224))
    assert calls == [["probabilities", "cams"]]


# -- declared exactly when the head is GAP → linear -----------------------------------------------
def _tiny_mobilenet():
    from xcam.nets.mobilenet import MobileNetV3

    torch.manual_seed(0)
    model = MobileNetV3(arch="mobilenet_v3_small", input_size=32).eval()
    model.name, model.variant = "mobilenetv3", "tiny"
    return model


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "jfhealthcare", "mobilenetv3"])
def test_torch_backend_declares_in_graph_cams_exactly_for_gap_linear_heads(pm, name):
    registration = pm.classifier(name)
    model = _build(pm, name)
    gap = model.gap_linear_head() is not None
    assert gap == registration.gap_linear_head == supports_fast_cam(model)
    clf = TorchClassifier(model)
    assert clf.autograd_model is model
    assert clf.in_graph_cams == (frozenset({"gradcam"}) if gap else frozenset())
    assert clf.cam_layer == (model.target_layer_path if gap else "")
    x = synthetic_batch(1, model.input_size, model.preprocessing)
    probs, cams = clf.predict_with_cams(x)
    assert probs.shape == (1, len(model.labels))
    assert (cams is not None) == gap
    if not gap:
        with pytest.raises(ValueError, match="GAP"):
            fast_gradcam_torch(model, x)


def test_onnx_backend_declares_in_graph_cams_exactly_with_a_cams_output(densenet, densenet_onnx, tmp_path):
    from xcam.export.onnx_export import export_model
    from xcam.export.runtime import OnnxClassifier

    assert densenet_onnx.in_graph_cams == frozenset({"gradcam"}) and densenet_onnx.autograd_model is None
    assert densenet_onnx.cam_layer == densenet.target_layer_path == "head_relu"
    plain = OnnxClassifier.from_path(export_model(densenet, tmp_path / "plain.onnx", exporter="legacy",
                                                  with_cams=False).path)
    assert plain.in_graph_cams == frozenset() and plain.cam_layer == ""
    mobile = _tiny_mobilenet()
    assert mobile.gap_linear_head() is None
    clf = OnnxClassifier.from_path(export_model(mobile, tmp_path / "mobile.onnx", exporter="legacy").path)
    assert "cams" not in clf.output_names and clf.in_graph_cams == frozenset() and clf.cam_layer == ""
    probs, cams = clf.predict_with_cams(synthetic_batch(2, 32))
    assert cams is None and probs.shape == (2, len(mobile.labels))
