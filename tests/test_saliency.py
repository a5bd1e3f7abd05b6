"""``xcam saliency``: the sanity check (cascading randomization) flags a CAM method that ignores the
model and passes Grad-CAM on a trained model; ROAD ranks a real method above random maps; ``--methods
all`` gives one row per installed method (table, JSON, chart); a bad file and a failing plugin fail
their rows only.

The trained model is a MobileNetV3-small (the built-in ``mobilenetv3`` plugin, 64 px) trained here
for a few seconds to say whether an image holds a bright disc ("Mass"): its evidence is local, so a
faithful map points at the disc. Two test CAM-method plugins are registered on the plugin manager:
``fixed`` returns the same centred blob whatever the model and image; ``noise`` a smooth random map
(seeded by the image, so runs repeat).
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import numpy as np
import pytest

SIZE = 64
LABELS = ["Mass", "Nodule"]
PERCENTILES = (50, 70, 90)  # fewer, cheaper ROAD steps than the default 10..90 (the disc is ~3 % of the image)


def disc_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """xrv-scaled ``[n, 1, S, S]`` images of smooth noise, half with a bright disc; labels; disc boxes."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    x = np.zeros((n, 1, SIZE, SIZE), np.float32)
    y = np.zeros(n, np.float32)
    boxes: list = []
    for i in range(n):
        bg = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), 3)
        img = 0.35 + 0.15 * bg / (np.abs(bg).max() + 1e-6) + rng.normal(0, 0.02, (SIZE, SIZE))
        box = None
        if i % 2 == 0:
            r = rng.uniform(4, 7)
            cx, cy = rng.uniform(r + 2, SIZE - r - 2, 2)
            img = img + 0.4 * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
            y[i], box = 1.0, (cx - r, cy - r, 2 * r, 2 * r)
        boxes.append(box)
        x[i, 0] = (2 * np.clip(img, 0, 1) - 1) * 1024
    return x, y, boxes


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A mobilenetv3 checkpoint that detects the disc (held-out AUC checked > 0.95)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from xcam.nets.mobilenet import MobileNetV3

    x, y, _ = disc_images(400, seed=0)
    torch.manual_seed(0)
    model = MobileNetV3(labels=LABELS, arch="mobilenet_v3_small", input_size=SIZE, cam_layer="net.features.3")
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(np.stack([y, np.zeros_like(y)], 1))
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        idx = torch.randint(0, len(x), (24,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # BatchNorm statistics of the final weights (short runs leave them behind)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average
        model(xt[:200])
    model.eval()
    xv, yv, _ = disc_images(60, seed=1)
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(xv)))[:, 0].numpy()
    assert roc_auc_score(yv, p) > 0.95, "the test model did not learn the disc"
    path = tmp_path_factory.mktemp("saliency_ckpt") / "disc.pt"
    torch.save(model.checkpoint_object(), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Eight PNGs (four with a disc) and their boxes in NIH's BBox_List layout."""
    import cv2

    root = tmp_path_factory.mktemp("saliency_images")
    (root / "images").mkdir()
    x, _, boxes = disc_images(8, seed=2)
    rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    for i, box in enumerate(boxes):
        cv2.imwrite(str(root / "images" / f"img{i:02d}.png"), np.uint8(np.round((x[i, 0] / 1024 + 1) / 2 * 255)))
        if box:
            rows.append(f"img{i:02d}.png,Mass," + ",".join(f"{v:.1f}" for v in box))
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root


def _seed_of(x) -> int:
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes()).digest()[:4], "little")


def method_plugins():
    """``fixed`` (ignores model and image), ``noise`` (a smooth random map per image), ``explodes`` (raises)."""
    import cv2

    from xcam.core.hookspecs import hookimpl
    from xcam.core.types import CamMethodRegistration

    def fixed(model, batch, class_indices, **options):
        s = batch.shape[-1]
        yy, xx = np.mgrid[0:s, 0:s]
        blob = np.exp(-(((xx - s / 3) ** 2 + (yy - s / 2) ** 2) / (2 * (s / 6) ** 2)))
        return np.repeat(blob[None].astype(np.float32), len(class_indices), axis=0)

    def noise(model, batch, class_indices, **options):
        s = batch.shape[-1]
        out = []
        for x in batch:
            field = np.random.default_rng(_seed_of(x)).normal(size=(s, s)).astype(np.float32)
            field = cv2.GaussianBlur(field, (0, 0), s / 16)
            out.append((field - field.min()) / (np.ptp(field) + 1e-9))
        return np.asarray(out, np.float32)

    def explodes(model, batch, class_indices, **options):
        raise RuntimeError("this method always fails")

    @hookimpl
    def xcam_cam_methods():
        yield CamMethodRegistration(name="fixed", compute=fixed, description="the same map for every input")
        yield CamMethodRegistration(name="noise", compute=noise, description="smooth random maps")
        yield CamMethodRegistration(name="explodes", compute=explodes, description="raises")

    return types.SimpleNamespace(xcam_cam_methods=xcam_cam_methods)


@pytest.fixture()
def pm_plus():
    from xcam.core.config import XcamConfig
    from xcam.core.manager import get_plugin_manager

    pm = get_plugin_manager(XcamConfig(), entrypoints=False)
    pm.load_object(method_plugins(), name="saliency-test-methods", distribution="xcam-saliency-test")
    return pm


def _config(folder: Path, trained: Path, methods, **kw):
    from xcam.chain.settings import Overrides
    from xcam.core.imageio import iter_image_files
    from xcam.evaluation.saliency import SaliencyConfig

    base = dict(inputs=[str(p) for p in iter_image_files(folder / "images")], models=f"mobilenetv3:{trained}",
                methods=list(methods), profile="fast", overrides=Overrides(), percentiles=PERCENTILES,
                sanity_steps=3, sanity_images=4, progress=False, batch_size=4)
    base.update(kw)
    return SaliencyConfig(**base)


def _rows(result) -> dict[str, dict]:
    return {r["method"]: r for r in result.summary()["rows"]}


# -- the pieces ------------------------------------------------------------------------------------
def test_spearman_and_ssim_of_equal_changed_and_flat_maps():
    from xcam.evaluation.sanity import spearman, ssim

    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert spearman(a, a) == pytest.approx(1.0) and ssim(a, a) == pytest.approx(1.0)
    assert spearman(a, 1 - a) == pytest.approx(-1.0)
    assert abs(spearman(a, rng.random((32, 32)))) < 0.1
    assert spearman(np.zeros((8, 8)), np.zeros((8, 8))) == 1.0 and spearman(a, np.zeros((32, 32))) == 0.0


def test_cascade_randomizes_from_the_head_down_and_leaves_the_model_alone(trained: Path):
    import torch

    from xcam.evaluation.sanity import cascade, randomized_copies
    from xcam.nets.mobilenet import MobileNetV3

    state = torch.load(trained, weights_only=True)
    net = MobileNetV3(labels=LABELS, arch="mobilenet_v3_small", input_size=SIZE, cam_layer="net.features.3")
    net.load_state_dict(state["model_state"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    steps = cascade(net, torch.zeros(1, 1, SIZE, SIZE), 3)
    assert len(steps) == 3 and steps[0].modules[0] == "net.classifier.3" and steps[-1].label == "net.features.0.0"
    changed = []
    for step, copy in randomized_copies(net, steps, seed=0):
        now = copy.state_dict()
        changed.append({k.rsplit(".", 1)[0] for k in now if not torch.equal(now[k], before[k])})
    assert changed[0] < changed[1] < changed[2]  # cumulative
    assert "net.features.0.0" in changed[2] and "net.features.0.0" not in changed[0]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the trained model is untouched


def test_road_perturbs_the_most_relevant_pixels_first():
    from xcam.evaluation.faithfulness import perturbed_copies

    rng = np.random.default_rng(1)
    image = rng.normal(0, 300, (1, 32, 32)).astype(np.float32)
    cam = np.zeros((32, 32), np.float32)
    cam[:8] = np.linspace(0.5, 1.0, 8 * 32).reshape(8, 32)  # the top quarter is the relevant part
    cam[8:] = rng.random((24, 32)) * 0.4
    copies = perturbed_copies(image, cam, (75,))
    morf, lerf = copies[0, 0], copies[1, 0]
    assert not np.allclose(morf[:8], image[0, :8]) and np.allclose(morf[8:], image[0, 8:])  # top 25 % imputed
    assert np.allclose(lerf[:8], image[0, :8]) and not np.allclose(lerf[8:], image[0, 8:])


def test_fast_imputer_gives_the_librarys_imputation():
    import torch
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights

    from xcam.evaluation.faithfulness import FastLinearImputer

    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.normal(0, 300, (1, 40, 36)).astype(np.float32))
    yy, xx = np.mgrid[:40, :36]
    cam = torch.from_numpy((np.exp(-((yy - 12) ** 2 + (xx - 25) ** 2) / 60.0) + 0.1 * rng.random((40, 36)))
                           .astype(np.float32))  # a blob touching no border, plus noise
    mask = (rng.random((40, 36)) > 0.4).astype(np.float32)
    mask[0], mask[:, -1] = 0, 0  # unknown pixels on the border: out-of-image neighbours drop out
    a0, b0 = NoisyLinearImputer.setup_sparse_system(mask, image.numpy(), neighbors_weights)
    a, b, unknown = FastLinearImputer.system(mask, image.numpy())
    assert (a != a0.tocsc()).nnz == 0 and np.array_equal(b, b0) and len(unknown) == int((mask == 0).sum())
    for remove in (RemoveMostRelevantFirst, RemoveLeastRelevantFirst):
        for p in (10, 50, 90):
            torch.manual_seed(7)
            expected = remove(p, NoisyLinearImputer(noise=3.0))(image, cam)
            torch.manual_seed(7)
            got = remove(p, FastLinearImputer(noise=3.0))(image, cam)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-3), (remove.__name__, p)
            assert not torch.equal(got, image)  # something was imputed


# -- the check the issue asks for ----------------------------------------------------------------------
def test_sanity_flags_a_method_that_ignores_the_model_and_passes_gradcam(pm_plus, folder: Path, trained: Path):
    from xcam.evaluation.saliency import run_saliency

    result = run_saliency(_config(folder, trained, ["fixed", "gradcam"], faithfulness=False), pm_plus)
    rows = _rows(result)
    fixed, gradcam = rows["fixed"]["sanity"], rows["gradcam"]["sanity"]
    assert [s["spearman"] for s in fixed["steps"]] == pytest.approx([1.0, 1.0, 1.0])
    assert fixed["flagged"] is True and fixed["n"] == 4  # the first four images, top class each
    assert gradcam["flagged"] is False and gradcam["spearman"] < 0.5
    assert gradcam["steps"][-1]["randomized_down_to"] == "net.features.0.0"
    assert rows["gradcam"]["images_ok"] == 8 and not rows["gradcam"]["errors"]


def test_faithfulness_of_a_real_method_beats_random_maps(pm_plus, folder: Path, trained: Path):
    """LayerCAM (the default profile's method for mobilenetv3) against smooth random maps. (Grad-CAM
    on this early layer misses the disc on some images of this tiny model: not asserted.)"""
    from xcam.evaluation.saliency import run_saliency

    result = run_saliency(_config(folder, trained, ["layercam", "noise"], sanity=False, targets=("Mass",)), pm_plus)
    rows = {m: r["faithfulness"] for m, r in _rows(result).items()}
    assert all(r["n"] == 8 for r in rows.values())
    real, noise = rows["layercam"], rows["noise"]
    assert real["combined"] > noise["combined"] + 0.1, rows
    assert real["morf"] < noise["morf"] - 0.1, rows  # removing its top pixels takes the class away
    assert real["lerf"] > noise["lerf"], rows  # removing its bottom pixels leaves the class


# -- the command -----------------------------------------------------------------------------------
def test_methods_all_gives_one_row_per_installed_method(pm_plus, folder: Path, trained: Path, tmp_path: Path,
                                                       xcam_cli):
    out = tmp_path / "sal"
    code, stdout, err = xcam_cli("saliency", "--input", str(folder / "images"), "--models", f"mobilenetv3:{trained}",
                                 "--profile", "fast", "--methods", "all", "--bbox-csv", str(folder / "boxes.csv"),
                                 "--road-percentiles", "70,90", "--sanity-steps", "2", "--sanity-images", "2",
                                 "--max-images", "4", "--output", str(out), "--quiet", pm=pm_plus)
    assert code == 1, err  # 'explodes' failed its rows; the run went on
    installed = sorted(pm_plus.cam_methods())
    saved = json.loads((out / "saliency.json").read_text())
    assert sorted(r["method"] for r in saved["rows"]) == installed and len(installed) >= 11
    table = (out / "saliency.md").read_text()
    for name in installed:
        assert f"| {name} | mobilenetv3 |" in table and f"| {name} | mobilenetv3 |" in stdout
    rows = {r["method"]: r for r in saved["rows"]}
    assert rows["explodes"]["images_ok"] == 0 and rows["explodes"]["images_failed"] == 4
    assert "cam method 'explodes' (xcam-saliency-test): RuntimeError: this method always fails" in \
        rows["explodes"]["errors"][0]
    for name in set(installed) - {"explodes"}:
        r = rows[name]
        assert r["images_ok"] == 4 and r["localization"]["n_boxes"] == 2, name
        assert r["faithfulness"]["n"] == 4 and r["sanity"]["n"] == 2 and r["ms_per_image"] > 0, name
    assert rows["fixed"]["sanity"]["flagged"] is True and "**FLAGGED**" in table
    assert (out / "saliency.png").read_bytes()[:4] == b"\x89PNG"
    assert "error: explodes / mobilenetv3:" in err


def test_a_bad_file_is_recorded_and_the_run_goes_on(folder: Path, trained: Path, tmp_path: Path, xcam_cli, pm_plus):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(folder / "images", images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "sal"
    code, stdout, err = xcam_cli("saliency", "--input", str(images), "--models", f"mobilenetv3:{trained}",
                                 "--profile", "fast", "--methods", "gradcam", "--road-percentiles", "90",
                                 "--no-sanity", "--output", str(out), "--quiet", pm=pm_plus)
    assert code == 1
    assert any(line.startswith("error: ") and "broken.png" in line for line in err.splitlines())
    saved = json.loads((out / "saliency.json").read_text())
    assert list(saved["unreadable"]) == [str(images / "broken.png")]
    (row,) = saved["rows"]
    assert row["images_ok"] == 8 and row["faithfulness"]["n"] == 8 and row["sanity"] is None
    assert "broken.png" in (out / "saliency.md").read_text()


def test_unknown_method_is_one_line(folder: Path, trained: Path, xcam_cli, pm_plus, tmp_path: Path):
    code, _, err = xcam_cli("saliency", "--input", str(folder / "images"), "--models", f"mobilenetv3:{trained}",
                            "--methods", "gradcam,nosuch", "--output", str(tmp_path / "x"), pm=pm_plus)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nosuch" in err and "gradcam" in err


def test_a_method_failing_on_every_image_stops_itself_not_the_run(pm_plus, folder: Path, trained: Path):
    from xcam.evaluation.saliency import run_saliency

    result = run_saliency(_config(folder, trained, ["explodes", "layercam"], faithfulness=False, sanity=False,
                                  max_plugin_failures=2), pm_plus)
    rows = _rows(result)
    assert rows["explodes"]["stopped"].startswith("stopping: cam method 'explodes' (xcam-saliency-test) failed on 2")
    assert rows["explodes"]["images_ok"] == 0 and rows["explodes"]["images_failed"] == 8
    assert rows["layercam"]["images_ok"] == 8 and rows["layercam"]["stopped"] is None
    assert result.failed == 9
