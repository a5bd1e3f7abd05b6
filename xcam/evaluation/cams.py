"""CAMs for evaluation: one float map in [0, 1] per (image, class), in the ORIGINAL image grid.

A CAM comes from a cam-method plugin (``compute(model, batch, class_indices)`` at the model's
input resolution), optionally at several target layers fused into one map, then mapped back to
the original pixels through :class:`xcam.core.preprocess.Geometry`. Several models (an ensemble)
are combined there, in the original grid, by an ensembler plugin — so an ensemble is evaluated
exactly like a single model.

When the ``cam_methods`` built-in has not (yet) registered ``gradcam``/``layercam``, the small
exact implementations below stand in for them (hooks on the target layer, gradients of the raw
logits): :func:`resolve_cam_method`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from xcam.core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.imageio import XrayImage
    from xcam.core.inference import TorchClassifier
    from xcam.core.manager import XcamPluginManager


def _normalize_batch(cams: np.ndarray) -> np.ndarray:
    lo = cams.min(axis=(1, 2), keepdims=True)
    hi = cams.max(axis=(1, 2), keepdims=True)
    return np.where(hi - lo > 1e-12, (cams - lo) / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)


def _hooked_cam(model: Any, batch: Any, class_indices: Sequence[int], kind: str) -> np.ndarray:
    """Grad-CAM (channel weights = mean gradient) or LayerCAM (ReLU(gradient) · activation per pixel)."""
    import torch
    import torch.nn.functional as F

    store: dict[str, Any] = {}
    handle = model.target_layer().register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            logits = model(batch)
            picked = logits[torch.arange(len(batch)), torch.as_tensor(list(class_indices))]
            (grad,) = torch.autograd.grad(picked.sum(), store["a"])
    finally:
        handle.remove()
    acts = store["a"].detach()
    if kind == "gradcam":
        cam = (grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    elif kind == "layercam":
        cam = (grad.clamp(min=0) * acts).sum(1)
    else:  # pragma: no cover
        raise UsageError(f"unknown stand-in CAM {kind!r}")
    cam = F.interpolate(cam.clamp(min=0)[:, None], size=tuple(batch.shape[-2:]), mode="bilinear", align_corners=False)
    return _normalize_batch(cam[:, 0].numpy())


STANDIN_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "gradcam": lambda model, batch, idx, **_: _hooked_cam(model, batch, idx, "gradcam"),
    "layercam": lambda model, batch, idx, **_: _hooked_cam(model, batch, idx, "layercam"),
}


def resolve_cam_method(pm: "XcamPluginManager", name: str) -> Callable[..., np.ndarray]:
    """The plugin's ``compute`` for ``name``; xcam's stand-ins when no plugin provides it."""
    table = pm.cam_methods()
    lowered = {k.lower(): v for k, v in table.items()}
    if name.lower() in lowered:
        return lowered[name.lower()].compute
    if name.lower() in STANDIN_METHODS:
        return STANDIN_METHODS[name.lower()]
    known = sorted(set(table) | set(STANDIN_METHODS))
    raise UsageError(f"unknown cam method {name!r}; available: {', '.join(known)}")


AUTO_LAYERS: dict[str, tuple[str, ...]] = {
    # LayerCAM fused over a 28×28 and a 14×14 block localized best on held-out phantoms
    # (docs/evaluation.md "What localizes best"); other models use their own target layer.
    "mobilenet_v3_small": ("net.features.3", "net.features.5"),
}


@dataclass
class CamSettings:
    """How CAMs are made: method, its options, target layers (fused), and how models combine.

    ``layers``: ``None`` — each model's own target layer; ``"auto"`` — :data:`AUTO_LAYERS` for the
    model's ``arch`` when listed, else its own layer; a list — those layers for every model.
    """

    method: Callable[..., np.ndarray]
    combine: Callable[..., np.ndarray]  # ensembler.combine_cams (models, and layers of one model)
    layers: Sequence[str] | str | None = None
    options: dict[str, Any] | None = None

    def layers_for(self, model: Any) -> list[str]:
        if self.layers is None:
            return [model.target_layer_path]
        if isinstance(self.layers, str):
            if self.layers != "auto":
                return [self.layers]
            return list(AUTO_LAYERS.get(getattr(model, "arch", ""), (model.target_layer_path,)))
        return list(self.layers)


def _resize(cam: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if cam.shape == (size, size):
        return cam
    return cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def model_cams(clf: "TorchClassifier", image: "XrayImage", labels: Sequence[str], settings: CamSettings
               ) -> dict[str, np.ndarray]:
    """CAMs of one model for the ``labels`` it predicts, each in the original grid of ``image``."""
    import torch

    from xcam.core.preprocess import preprocess

    model = clf.model
    index = {clf.labels[i]: i for i in clf.valid_indices}
    wanted = [c for c in labels if c in index]
    if not wanted:
        return {}
    array, geometry = preprocess(image, clf.input_size, clf.preprocessing)
    batch = torch.from_numpy(np.repeat(array[None], len(wanted), axis=0)).to(clf.device)
    idx = [index[c] for c in wanted]
    original_layer = model.target_layer_path
    per_layer: list[np.ndarray] = []
    try:
        for layer in settings.layers_for(model):
            model.target_layer_path = layer
            cams = settings.method(model, batch, idx, **(settings.options or {}))
            per_layer.append(np.stack([_resize(np.asarray(c, dtype=np.float32), clf.input_size) for c in cams]))
    finally:
        model.target_layer_path = original_layer
    out: dict[str, np.ndarray] = {}
    for j, label in enumerate(wanted):
        maps = [layer_cams[j] for layer_cams in per_layer]
        fused = maps[0] if len(maps) == 1 else settings.combine(maps)
        out[label] = geometry.map_to_original(np.asarray(fused, dtype=np.float32))
    return out


def ensemble_cams(models: Sequence["TorchClassifier"], image: "XrayImage", labels: Sequence[str],
                  settings: CamSettings, weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """One CAM per label over every model that predicts it, combined in the original grid."""
    per_model = [model_cams(m, image, labels, settings) for m in models]
    out: dict[str, np.ndarray] = {}
    for label in labels:
        cams = [(i, cams[label]) for i, cams in enumerate(per_model) if label in cams]
        if not cams:
            continue
        if len(cams) == 1:
            out[label] = cams[0][1]
        else:
            w = [weights[i] for i, _ in cams] if weights is not None else None
            out[label] = np.asarray(settings.combine([c for _, c in cams], w), dtype=np.float32)
    return out


def ensemble_probabilities(models: Sequence["TorchClassifier"], image: "XrayImage",
                           combine: Callable[..., dict[str, float]], weights: Sequence[float] | None = None
                           ) -> dict[str, float]:
    """Calibrated probabilities by label name, combined over models by the ensembler."""
    from xcam.core.preprocess import preprocess

    per_model = []
    for clf in models:
        array, _ = preprocess(image, clf.input_size, clf.preprocessing)
        probs = clf.predict(array[None])[0]
        per_model.append({clf.labels[i]: float(probs[i]) for i in clf.valid_indices})
    return per_model[0] if len(per_model) == 1 else combine(per_model, weights)
