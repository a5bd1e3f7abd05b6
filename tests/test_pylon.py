"""The PYLON-style head of the trainable MobileNetV3 (``xcam train --head pylon``): a pyramid
decoder whose stride-8 class maps are pooled into the logits and are the model's CAM — in the
chain, in ONNX Runtime and through pytorch-grad-cam."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xcam.nets.pylon import CLASS_MAP_LAYER, SMOOTH_LAYER

LABELS = ["Cardiomegaly", "Effusion", "Mass"]
SIZE = 64


def _cams(maps: torch.Tensor) -> np.ndarray:
    """What the chain should show for raw class maps: ReLU'd (the class's Grad-CAM), or where a map
    is negative everywhere its relative evidence; min-max normalized."""
    from xcam.core.cam_math import normalize_cams

    m = maps.numpy()
    top = m.max(axis=(-2, -1), keepdims=True)
    return normalize_cams(np.where(top > 0, np.maximum(m, 0.0), m - m.min(axis=(-2, -1), keepdims=True)))


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v3_large"])
@pytest.mark.parametrize("pool", ["max", "lse"])
def test_head_gives_stride_8_class_maps_pooled_into_the_logits(arch: str, pool: str):
    from xcam.nets.mobilenet import MobileNetV3

    model = MobileNetV3(LABELS, arch, 96, head="pylon", pylon_pool=pool).eval()
    x = torch.randn(2, 1, 96, 96) * 400
    with torch.no_grad():
        logits, maps = model.logits_and_maps(x)
        assert torch.equal(model(x), logits)
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 12, 12)  # 96 / 8
    flat = maps.flatten(2)
    expected = flat.amax(2) if pool == "max" else (torch.logsumexp(5 * flat, 2) - np.log(144)) / 5
    assert torch.allclose(logits, expected, atol=1e-5)
    assert model.target_layer_path == CLASS_MAP_LAYER and model.localization_layers == (CLASS_MAP_LAYER,)
    assert model.get_submodule(CLASS_MAP_LAYER).out_channels == 3
    with pytest.raises(ValueError, match="pylon pooling"):
        MobileNetV3(LABELS, arch, 96, head="pylon", pylon_pool="mean")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from xcam.datasets.phantom import generate_phantoms

    root = tmp_path_factory.mktemp("pylon-phantoms")
    generate_phantoms(root, n=120, size=SIZE, seed=4)
    return root


@pytest.fixture(scope="module")
def trained(phantoms: Path, tmp_path_factory):
    """Three short epochs of ``xcam train --head pylon`` (seconds)."""
    from xcam.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("pylon-run")
    config = TrainConfig(imgpath=str(phantoms / "images"), csvpath=str(phantoms / "Data_Entry_2017.csv"),
                         out=str(out), epochs=3, batch_size=16, lr=3e-3, img_size=SIZE, arch="mobilenet_v3_small",
                         seed=2, labels=LABELS, head="pylon", progress=False, val_fraction=0.25, augment=False)
    return train(config, log=lambda m: None)


def test_training_lowers_the_loss_and_records_the_head(trained):
    losses = [row["train_loss"] for row in trained.history]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.9, losses
    obj = torch.load(trained.out / "last.pt", weights_only=True)  # plain data, no allowlist
    assert obj["head"] == "pylon" and obj["pylon_pool"] == "lse" and obj["cam_layer"] == CLASS_MAP_LAYER
    assert any(k.startswith("net.classifier.lateral.") for k in obj["model_state"])


@pytest.fixture(scope="module")
def loaded(pm, trained):
    from xcam.core.weights import WeightsStore
    from xcam.export.backends import load_classifier

    return load_classifier(pm, "mobilenetv3", str(trained.out / "last.pt"), store=WeightsStore.from_env())


def test_checkpoint_loads_through_the_plugin_with_in_graph_class_maps(loaded, trained):
    from xcam.nets.mobilenet import MobileNetV3

    model = loaded.model
    assert isinstance(model, MobileNetV3) and model.head == "pylon" and loaded.labels == LABELS
    assert loaded.in_graph_cams == frozenset({"gradcam"}) and loaded.cam_layer == CLASS_MAP_LAYER
    x = np.random.default_rng(0).normal(0, 400, (2, 1, SIZE, SIZE)).astype(np.float32)
    probs, cams = loaded.predict_with_cams(x)
    with torch.no_grad():
        logits, maps = model.logits_and_maps(torch.from_numpy(x))
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), atol=1e-6)
    np.testing.assert_allclose(cams, _cams(maps), atol=1e-6)
    assert cams.shape == (2, 3, SIZE // 8, SIZE // 8)


def _chain(pm, checkpoint: Path, backend: str = "torch", profile: str | None = None, **over):
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions, ModelRef
    from xcam.chain.settings import ClassChoice, Overrides, resolve_settings

    settings = resolve_settings(pm, profile, Overrides(**over))
    return build_chain(pm, [ModelRef("mobilenetv3", str(checkpoint))], settings, ClassChoice(all_classes=True),
                       load=LoadOptions(backend=backend))


def _an_image(phantoms: Path) -> Path:
    return sorted((phantoms / "images").glob("*.png"))[0]


def test_default_chain_uses_the_class_maps_and_onnx_gives_the_same(pm, phantoms, trained, loaded):
    from xcam.chain.cams import normalize
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import Geometry, WorkGrid, preprocess

    checkpoint = trained.out / "last.pt"
    image = _an_image(phantoms)
    chain = _chain(pm, checkpoint, aug_smooth=False)  # the default profile (LayerCAM for mlp heads), no TTA
    result = chain.analyze(image).results[0]
    assert result.method == "gradcam (in-graph)" and result.layers == (CLASS_MAP_LAYER,)
    x, _ = preprocess(load_image(image), SIZE)
    with torch.no_grad():
        maps = loaded.model.class_maps(torch.from_numpy(x[None]))
    grid = WorkGrid.of(Geometry(SIZE, SIZE, SIZE, 0, 0))
    expected = normalize(grid.from_model(_cams(maps)[0]))  # upsampled class maps
    for finding in result.findings:
        np.testing.assert_allclose(finding.cam, expected[finding.class_index], atol=1e-5)

    (model,) = chain.models
    onnx_result = _chain(pm, checkpoint, backend="onnx", aug_smooth=False).analyze(image).results[0]
    assert onnx_result.method == "gradcam (in-graph)" and onnx_result.backend.startswith("onnx")
    assert [f.pathology for f in onnx_result.findings] == [f.pathology for f in result.findings]
    for mine, theirs in zip(result.findings, onnx_result.findings):
        assert abs(mine.probability - theirs.probability) < 1e-4
        assert np.abs(mine.cam - theirs.cam).max() < 2e-3

    # with the default profile's test-time augmentation: still the in-graph route, maps differ
    augmented = _chain(pm, checkpoint).analyze(image).results[0]
    assert augmented.method == "gradcam (in-graph)" and augmented.aug_smooth


def test_export_has_the_class_maps_as_cams_output(pm, loaded, trained):
    from xcam.core.weights import WeightsStore
    from xcam.export.onnx_export import ensure_export, read_metadata
    from xcam.export.parity import parity_report
    from xcam.export.runtime import OnnxClassifier

    # what `xcam export` and `--backend onnx` make (cached: the chain test above made it already)
    path = ensure_export(pm.classifier("mobilenetv3"), str(trained.out / "last.pt"), store=WeightsStore.from_env()).path
    meta = read_metadata(path)
    assert meta["cam_target_layer"] == CLASS_MAP_LAYER and "cams" in meta["outputs"]
    clf = OnnxClassifier.from_path(path)
    assert clf.in_graph_cams == frozenset({"gradcam"}) and clf.localization_layers == (CLASS_MAP_LAYER,)
    x = np.random.default_rng(1).normal(0, 400, (3, 1, SIZE, SIZE)).astype(np.float32)
    probs, cams = clf.predict_with_cams(x)
    ref_probs, ref_cams = loaded.predict_with_cams(x)
    assert np.abs(probs - ref_probs).max() < 1e-4 and np.abs(cams - ref_cams).max() < 1e-3
    report = parity_report(loaded.model, path, x)
    assert report["max_abs_cams"] < 1e-3 and report["max_abs_logits"] < 1e-3


def test_grad_cam_plugin_on_the_class_conv_is_the_class_map_and_works_on_the_decoder(pm, loaded, phantoms):
    import cv2

    from xcam.core.cam_math import normalize_cams
    from xcam.core.inference import TorchClassifier
    from xcam.nets.mobilenet import MobileNetV3

    torch.manual_seed(0)
    model = MobileNetV3(LABELS, "mobilenet_v3_small", SIZE, head="pylon").eval()
    x = torch.randn(1, 1, SIZE, SIZE) * 400
    classify = model.get_submodule(CLASS_MAP_LAYER)
    with torch.no_grad():  # class 0: positive and negative parts; class 1: negative everywhere
        maps = model.class_maps(x)[0]
        classify.bias[0] -= float(maps[0].median())
        classify.bias[1] -= float(maps[1].max()) + 1.0
        maps = model.class_maps(x)[0].numpy()
    assert maps[0].max() > 0 > maps[0].min() and maps[1].max() < 0
    batch = x.repeat(3, 1, 1, 1)
    ref = pm.cam_method("gradcam").compute(model, batch, [0, 1, 2], target_layer=CLASS_MAP_LAYER)
    _, cams = TorchClassifier(model).predict_with_cams(x.numpy())
    for c in (0, 2) if maps[2].max() > 0 else (0,):  # Grad-CAM at the class conv = the in-graph CAM
        mine = cv2.resize(cams[0, c], (SIZE, SIZE))
        mine = (mine - mine.min()) / (mine.max() - mine.min())
        assert np.abs(mine - ref[c]).max() < 1e-4
        np.testing.assert_allclose(cams[0, c], normalize_cams(np.maximum(maps[c], 0)), atol=1e-6)  # ReLU(map)
    assert ref[1].max() == 0  # Grad-CAM of a class negative everywhere is flat ...
    assert cams[0, 1].max() > 0.99 and cams[0, 1].argmax() == maps[1].argmax()  # ... the in-graph CAM is not

    batch = torch.from_numpy(np.repeat(_input(phantoms)[None], 2, axis=0))
    for method in ("gradcam", "layercam"):  # on the trained model's decoder's last feature layer
        out = pm.cam_method(method).compute(loaded.model, batch, [0, 1], target_layer=SMOOTH_LAYER)
        assert out.shape == (2, SIZE, SIZE) and np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1

    # and through the chain: an explicit layer takes the plugin route
    checkpoint = Path(loaded.model.weights_path)
    result = _chain(pm, checkpoint, method="gradcam", layers=[SMOOTH_LAYER], aug_smooth=False
                    ).analyze(_an_image(phantoms)).results[0]
    assert result.method == "gradcam" and result.layers == (SMOOTH_LAYER,) and len(result.findings) == 3


def _input(phantoms: Path) -> np.ndarray:
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import preprocess

    return preprocess(load_image(_an_image(phantoms)), SIZE)[0]
