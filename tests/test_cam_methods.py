"""CAM method plugins (pytorch-grad-cam) on every built-in classifier, with random weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from xcam.core.config import XcamConfig
from xcam.core.manager import get_plugin_manager
from xcam.core.model import XCamModel
from xcam.chain.models import LoadOptions, ModelRef, load_models
from xcam.plugins.cam_methods import METHODS, compute_cam, normalize_maps

CLASSIFIERS = ("densenet121", "mobilenetv3", "resnet50", "jfhealthcare")
GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")
SLOW_METHODS = ("scorecam", "ablationcam")


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(XcamConfig(), entrypoints=False)


def model_of(pm, name: str, **options) -> XCamModel:
    """Random-init model (seeded: the same weights on every run)."""
    if options:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return pm.classifier(name).build(random_init=True, options=options)
    (loaded,) = load_models(pm, [ModelRef(name)], LoadOptions(random_init=True))
    return loaded.autograd_model()


def xray_batch(size: int, n: int, seed: int = 0) -> "torch.Tensor":
    """Smooth blob images in xrv scaling ([-1024, 1024]), ``[n, 1, size, size]``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        img = np.zeros((size, size))
        for _ in range(6):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            r = rng.uniform(0.05, 0.2)
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        images.append((2 * img / img.max() - 1) * 1024)
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32)


def check_maps(maps: np.ndarray, n: int, size: int) -> None:
    assert maps.shape == (n, size, size)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_registered_methods(pm):
    assert set(pm.cam_methods()) == set(METHODS) == {
        "gradcam", "gradcam++", "scorecam", "hirescam", "ablationcam", "xgradcam", "eigencam", "layercam"
    }
    assert pm.cam_method("GradCAM++").name == "gradcam++"
    assert not pm.cam_method("scorecam").needs_gradients and pm.cam_method("hirescam").needs_gradients


def test_plugin_module_does_not_import_torch():
    code = "import sys, xcam.plugins.cam_methods; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_gradient_methods_on_every_classifier(pm, classifier):
    """Each gradient method (and Eigen-CAM) on each classifier's declared target layer, at its input size."""
    model = model_of(pm, classifier)
    size = model.input_size
    n = 2 if size <= 224 else 1  # the 512-px models: one image
    x = xray_batch(size, n)
    informative = []
    for method in GRADIENT_METHODS:
        maps = pm.cam_method(method).compute(model, x, list(range(n)))
        check_maps(maps, n, size)
        informative.append(bool(maps.max() == 1.0 and maps.min() == 0.0))
    assert sum(informative) >= len(GRADIENT_METHODS) - 1, informative  # random weights may zero one map
    assert not model.target_layer()._forward_hooks  # every hook released


@pytest.mark.parametrize("method", SLOW_METHODS)
def test_forward_only_methods_fast_setting(pm, method):
    """ScoreCAM / AblationCAM on MobileNetV3 with an early CAM layer (24 channels, 16x16) at 64 px, 2 images."""
    model = model_of(pm, "mobilenetv3", cam_layer="net.features.3")
    x = xray_batch(64, 2)
    maps = pm.cam_method(method).compute(model, x, [2, 7], batch_size=72)
    check_maps(maps, 2, 64)
    assert (maps.reshape(2, -1).max(axis=1) == 1.0).all()
    singles = np.concatenate([pm.cam_method(method).compute(model, x[i : i + 1], [c], batch_size=24)
                              for i, c in enumerate([2, 7])])
    np.testing.assert_allclose(maps, singles, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("classifier", CLASSIFIERS)
@pytest.mark.parametrize("method", SLOW_METHODS)
def test_forward_only_methods_every_classifier(pm, classifier, method):
    """The full matrix for the slow methods, at a reduced input (JF's pyramid attention needs 128 px)."""
    model = model_of(pm, classifier)
    size = 128 if classifier == "jfhealthcare" else 64
    maps = pm.cam_method(method).compute(model, xray_batch(size, 1), [0], batch_size=128)
    check_maps(maps, 1, size)


def test_batch_uses_one_target_per_image(pm):
    """Batch maps are non-zero for every image and equal the one-at-a-time maps."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model_of(pm, "densenet121")
    x = xray_batch(224, 3, seed=1)
    classes = [0, 7, 10]
    batch = compute_cam("gradcam++", model, x, classes)
    singles = np.concatenate([compute_cam("gradcam++", model, x[i : i + 1], [c]) for i, c in enumerate(classes)])
    assert (batch.reshape(3, -1).max(axis=1) == 1.0).all()
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    # the library pitfall this guards against: one target for the whole batch zeroes maps 2..B
    with GradCAM(model, [model.target_layer()]) as cam:
        pitfall = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    assert pitfall[0].max() > 0 and pitfall[1:].max() == 0


@pytest.mark.parametrize("classifier", ["densenet121", "mobilenetv3"])
def test_classes_of_one_image_share_one_forward_pass(pm, classifier):
    """K copies of one image with K classes: one forward pass gives the same maps as K passes."""
    model = model_of(pm, classifier)
    x = xray_batch(224, 1, seed=4).repeat(3, 1, 1, 1)
    calls = []
    handle = model.target_layer().register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        for method in GRADIENT_METHODS:
            calls.clear()
            shared = compute_cam(method, model, x, [0, 5, 9])
            assert calls == [1], calls  # the network saw one image
            separate = compute_cam(method, model, x, [0, 5, 9], share_forward=False)
            np.testing.assert_allclose(shared, separate, atol=1e-4)
            assert shared.reshape(3, -1).max(axis=1).sum() >= 2  # random weights may zero one map
    finally:
        handle.remove()


class _SkipHead(XCamModel):
    """A head that concatenates the target output with an earlier activation (cannot share a forward)."""

    def __init__(self) -> None:
        super().__init__(["A", "B", "C"], 32)
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.mid = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 3)
        self.target_layer_path = "mid"

    def forward(self, x):
        a = self.stem(x)
        return self.head(torch.cat([self.mid(a), a], 1).mean(dim=(2, 3)))


def test_shared_forward_falls_back_when_the_head_mixes_rows():
    torch.manual_seed(0)
    model = _SkipHead()
    x = torch.randn(1, 1, 32, 32).repeat(3, 1, 1, 1)
    shared = compute_cam("gradcam", model, x, [0, 1, 2])
    separate = compute_cam("gradcam", model, x, [0, 1, 2], share_forward=False)
    np.testing.assert_allclose(shared, separate, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_truncated_backward_equals_library(pm, method):
    """Cutting the backward pass at the target layer changes nothing in the maps."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model_of(pm, "mobilenetv3")
    x = xray_batch(224, 2, seed=2)
    fast = compute_cam(method, model, x, [3, 4], truncate_backward=True)
    full = compute_cam(method, model, x, [3, 4], truncate_backward=False)
    with getattr(pytorch_grad_cam, METHODS[method][0])(model, [model.target_layer()]) as cam:
        reference = normalize_maps(cam(input_tensor=x, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(4)]))
    np.testing.assert_allclose(fast, full, atol=1e-5)
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def test_cams_come_from_logits_not_probabilities(pm):
    """A class whose calibrated probability saturates (exactly 0 or 1) still gets an informative map;
    the same method on the calibrated output would give an all-zero map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model_of(pm, "densenet121")
    x = xray_batch(224, 1, seed=3)
    probs = model.predict(x)[0]
    saturated = [i for i in model.valid_indices if float(probs[i]) in (0.0, 1.0)]
    assert saturated, "random-init densenet121 no longer saturates: pick another probe"
    c = saturated[0]
    maps = compute_cam("gradcam", model, x, [c])
    assert maps.max() == 1.0 and maps.min() == 0.0

    class Calibrated(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner.calibrate(self.inner(t))

    with GradCAM(Calibrated(model), [model.target_layer()]) as cam:
        via_probs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])
    assert via_probs.max() == 0.0


class _Tiny(XCamModel):
    """A 3-label model whose CAM layer outputs zeros (constant maps) and, with ``short``, only 2 logits."""

    def __init__(self, short: bool = False) -> None:
        super().__init__(["A", "B", "C"], 32)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.zero = torch.nn.ReLU()
        self.head = torch.nn.Linear(4, 2 if short else 3)
        self.target_layer_path = "zero"

    def forward(self, x):
        feats = self.zero(self.conv(x) * 0.0)
        return self.head(feats.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_constant_maps_become_zeros(method):
    maps = compute_cam(method, _Tiny(), torch.randn(2, 1, 32, 32), [0, 2])
    check_maps(maps, 2, 32)
    assert maps.max() == 0.0


def test_normalize_maps_handles_nan_and_constants():
    maps = np.stack([np.full((4, 4), np.nan), np.full((4, 4), 3.0), np.arange(16.0).reshape(4, 4)])
    maps[2, 0, 0] = np.nan
    out = normalize_maps(maps)
    assert np.isfinite(out).all()
    assert out[0].max() == 0 and out[1].max() == 0
    assert out[2].min() == 0.0 and out[2].max() == 1.0 and out[2, 0, 0] == 0.0


def test_errors_release_hooks_and_are_not_swallowed():
    model = _Tiny(short=True)  # label "C" has no output: pytorch-grad-cam raises IndexError, which it swallows
    with pytest.raises(RuntimeError, match="pytorch-grad-cam failed"):
        compute_cam("gradcam", model, torch.randn(1, 1, 32, 32), [2])
    assert not model.zero._forward_hooks
    with pytest.raises(RuntimeError):  # wrong channel count fails inside the forward pass
        compute_cam("gradcam", _Tiny(), torch.randn(1, 3, 32, 32), [0])
    with pytest.raises(ValueError, match="one per image"):
        compute_cam("gradcam", _Tiny(), torch.randn(2, 1, 32, 32), [0])
    with pytest.raises(ValueError, match="out of range"):
        compute_cam("gradcam", _Tiny(), torch.randn(1, 1, 32, 32), [5])


def test_model_state_is_restored(pm):
    model = model_of(pm, "mobilenetv3")
    model.train()
    try:
        compute_cam("gradcam", model, xray_batch(224, 1), [0])
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
