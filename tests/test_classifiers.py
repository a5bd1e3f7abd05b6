"""Classifier plugins: offline builds from random weights saved under the real file names,
parity with torchxrayvision itself, and classification of real and generated images."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xcam.core.imageio import load_image
from xcam.export.backends import load_classifier
from xcam.core.preprocess import preprocess
from xcam.core.weights import WeightsStore
from xcam.plugins.classifiers.xrv_catalog import DENSENET_VARIANTS, RESNET_VARIANTS


def test_catalog_matches_torchxrayvision():
    import torchxrayvision as xrv

    for name, (filename, labels, _) in {**DENSENET_VARIANTS, **RESNET_VARIANTS}.items():
        entry = xrv.models.model_urls[name]
        assert os.path.basename(entry["weights_url"]) == filename
        assert tuple(entry["labels"]) == labels, name
    xrv_densenets = {k for k in xrv.models.model_urls if k.startswith("densenet121-res224-")}
    assert xrv_densenets == set(DENSENET_VARIANTS)


def test_all_seven_densenet_variants_are_registered(pm):
    registration = pm.classifier("densenet121")
    assert {v.name for v in registration.variants} == set(DENSENET_VARIANTS)
    assert len(registration.variants) == 7
    assert registration.default.name == "densenet121-res224-all"
    assert registration.variant("nih").name == "densenet121-res224-nih"


@pytest.mark.parametrize("variant", ["densenet121-res224-all", "densenet121-res224-nih", "densenet121-res224-rsna"])
def test_densenet_matches_torchxrayvision(pm, random_weights, weights_cache, variant):
    import torchxrayvision as xrv

    random_weights("densenet121", variant)
    ours = pm.classifier("densenet121").build(variant)
    reference = xrv.models.DenseNet(weights=variant, cache_dir=str(weights_cache)).eval()
    x = torch.randn(2, 1, 224, 224) * 300
    with torch.no_grad():
        np.testing.assert_allclose(ours.predict(x).numpy(), reference(x).numpy(), atol=1e-5)
    valid = [label for label in ours.labels if label]
    assert [ours.labels[i] for i in ours.valid_indices] == valid


def test_resnet50_matches_torchxrayvision(pm, random_weights, weights_cache):
    import torchxrayvision as xrv

    random_weights("resnet50")
    ours = pm.classifier("resnet50").build()
    reference = xrv.models.ResNet(weights="resnet50-res512-all", cache_dir=str(weights_cache)).eval()
    x = torch.randn(1, 1, 512, 512) * 300
    with torch.no_grad():
        np.testing.assert_allclose(ours.predict(x).numpy(), reference(x).numpy(), atol=1e-5)
    # outputs without an operating point (NaN threshold) are not shown to users
    assert "Lung Lesion" not in [ours.labels[i] for i in ours.valid_indices]


def test_jfhealthcare_builds_without_fetching_imagenet(pm, random_weights, monkeypatch):
    import torch.utils.model_zoo
    import torchxrayvision.baseline_models.jfhealthcare as jf

    def no_network(*args, **kwargs):
        raise AssertionError("the JF Healthcare model must not fetch ImageNet weights")

    monkeypatch.setattr(torch.utils.model_zoo, "load_url", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    random_weights("jfhealthcare")
    ours = pm.classifier("jfhealthcare").build()
    assert ours.labels == ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Effusion"]
    # torchxrayvision's own forward pass on the same network gives the same probabilities
    xrv_like = SimpleNamespace(model=ours.model, apply_sigmoid=True)
    x = torch.randn(1, 1, 512, 512) * 300
    with torch.no_grad():
        expected = jf.DenseNet.forward(xrv_like, x)
        np.testing.assert_allclose(ours.predict(x).numpy(), expected.numpy(), atol=1e-5)


def test_mobilenet_checkpoint_round_trip(pm, tmp_path):
    registration = pm.classifier("mobilenetv3")
    model = registration.build(random_init=True, options={"arch": "mobilenet_v3_small", "img_size": 96})
    path = tmp_path / "best.pt"
    torch.save(model.checkpoint_object(), path)
    loaded = registration.build(str(path))
    assert loaded.input_size == 96 and loaded.arch == "mobilenet_v3_small"
    assert len(loaded.labels) == 14
    x = torch.randn(2, 1, 96, 96) * 300
    with torch.no_grad():
        np.testing.assert_allclose(loaded.predict(x).numpy(), model.eval().predict(x).numpy(), atol=1e-6)
    assert loaded.target_layer() is loaded.get_submodule(loaded.target_layer_path)


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "jfhealthcare"])
def test_classifies_real_images(pm, random_weights, nih_images, shared_data, name):
    random_weights(name)
    clf = load_classifier(pm, name)
    paths = [nih_images[0], shared_data / "xrv-samples" / "16747_3_1.jpg"]
    batch = np.stack([preprocess(load_image(p), clf.input_size, clf.preprocessing)[0] for p in paths])
    probs = clf.predict(batch)
    assert probs.shape == (2, len(clf.labels))
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    logits = clf.logits(batch)  # random weights saturate probabilities; logits still differ
    assert not np.allclose(logits[0], logits[1]), "different images should give different outputs"


def test_classifies_generated_images(pm, random_weights):
    random_weights("densenet121")
    clf = load_classifier(pm, "densenet121")
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1024, 1024, size=(3, 1, 224, 224)).astype(np.float32)
    probs = clf.predict(batch)
    assert probs.shape == (3, 18) and ((probs >= 0) & (probs <= 1)).all()
    assert np.unique(clf.logits(batch).round(4), axis=0).shape[0] == 3


def test_every_classifier_meets_the_plugin_contract(pm):
    from xcam.testing import check_classifier

    for name in ("densenet121", "mobilenetv3"):
        report = check_classifier(pm.classifier(name), cam_method=None, onnx=False, batch=1)
        assert report.ok, report.problems
