"""The one-pass all-class Grad-CAM equals pytorch-grad-cam's GradCAM on the same target layer
(``model.target_layer()``), one ClassifierOutputTarget per image, on real X-rays with random
weights: max |Δ| ≤ 1e-4 on the normalized input-resolution maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from xcam.export.fast_cam import (
    cams_to_input_size,
    fast_gradcam_torch,
    normalize_cams,
    supports_fast_cam,
    torch_cam_fast_path,
)
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


def _check(model, x: np.ndarray, classes: list[int]) -> float:
    fast = cams_to_input_size(fast_gradcam_torch(model, x, normalize=False).numpy(), model.input_size)
    assert fast.shape == (len(x), len(model.labels), model.input_size, model.input_size)
    worst, nonzero = 0.0, 0
    for i, image in enumerate(x):
        ref = _reference(model, image, classes)
        worst = max(worst, float(np.abs(ref - fast[i, classes]).max()))
        nonzero += int((ref.max(axis=(1, 2)) > 0.5).sum())
    assert nonzero >= len(classes) * len(x) // 2, "most reference maps should be non-trivial"
    return worst


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


def test_rule_gradcam_with_gap_linear_head_only(pm):
    """The fast path serves gradcam on GAP→linear models; everything else falls back (None)."""
    densenet = _build(pm, "densenet121")
    x = synthetic_batch(2, 224)
    maps = torch_cam_fast_path(densenet, x, [1, 4], "gradcam")
    assert maps.shape == (2, 7, 7)
    full = fast_gradcam_torch(densenet, x).numpy()
    np.testing.assert_allclose(maps, full[[0, 1], [1, 4]])
    assert torch_cam_fast_path(densenet, x, [1, 4], "gradcam++") is None
    assert torch_cam_fast_path(densenet, x, [1, 4], "gradcam", {"aug_smooth": True}) is None
    assert torch_cam_fast_path(densenet, x, [1, 4], "gradcam", {"eigen_smooth": True}) is None
    mobilenet = pm.classifier("mobilenetv3").build(random_init=True)
    assert not supports_fast_cam(mobilenet)
    assert torch_cam_fast_path(mobilenet, x, [0, 0], "gradcam") is None
    with pytest.raises(ValueError, match="GAP"):
        fast_gradcam_torch(mobilenet, x)
