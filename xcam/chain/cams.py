"""CAMs of one model for (image, class) pairs of a batch, in model space, normalized to [0, 1].

Two routes, chosen from what the backend declares (:class:`xcam.core.inference.Classifier`):

* **in-graph** — the backend computes the method for every class in its forward pass
  (``method in classifier.in_graph_cams``) and the settings ask for its layer: the maps come with
  the probabilities, at no extra inference. ``aug_smooth`` runs the same pass on the augmented
  batch (horizontal flip × brightness 0.9/1/1.1, as pytorch-grad-cam's ``aug_smooth``) and
  averages the de-augmented maps: 6 forward passes for every class at once.
* **plugin** — the CAM-method plugin on the PyTorch model (built on first need when the backend
  has none), from raw logits, one call per image with all its classes (one shared forward pass),
  once per target layer; several layers are fused by the ensembler's ``combine_cams``.

Layers: ``"model"`` is the classifier's target layer; ``"auto"`` the layers its network declares
as localizing best (``localization_layers``), else its target layer. When those declared layers are
exactly the backend's in-graph CAM layer (a class-map head such as PYLON, whose class maps are its
localization), ``"auto"`` takes the in-graph maps whatever ``cam_method`` says; a plugin method runs
on such a model with ``cam_layers = "model"`` or explicit layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.guard import Guard
    from xcam.chain.models import LoadedModel
    from xcam.chain.settings import CamSettings
    from xcam.core.manager import XcamPluginManager

AUG_FACTORS: tuple[float, ...] = (0.9, 1.0, 1.1)
"""Brightness factors of test-time augmentation (pytorch-grad-cam's ``aug_smooth``), each with and
without a horizontal flip."""


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per map (last two axes): NaN/inf → 0, then min-max to [0, 1]; a constant map → zeros."""
    a = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo = a.min(axis=(-2, -1), keepdims=True)
    span = a.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 1e-12, (a - lo) / np.where(span > 1e-12, span, 1.0), 0.0).astype(np.float32)


@dataclass(frozen=True)
class CamPlan:
    """How one model's CAMs are made for a run."""

    method: str
    layers: tuple[str, ...]
    in_graph: bool
    aug_smooth: bool
    eigen_smooth: bool
    options: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} (in-graph)" if self.in_graph else self.method


def _declared_layers(model: "LoadedModel") -> tuple[tuple[str, ...], str]:
    """(the network's localization layers, its target layer), without building a PyTorch model
    when the backend's metadata already says."""
    clf = model.classifier
    own = clf.autograd_model
    target = own.target_layer_path if own is not None else clf.cam_layer or model.autograd_model().target_layer_path
    return tuple(clf.localization_layers), target


def plan(model: "LoadedModel", cam: "CamSettings", pm: "XcamPluginManager") -> CamPlan:
    """The route for ``model`` under ``cam`` (see the module docs)."""
    from xcam.chain.settings import plugin_options

    declared, target = _declared_layers(model)
    if cam.layers == "model":
        layers: tuple[str, ...] = (target,)
    elif cam.layers == "auto":
        layers = declared or (target,)
    else:
        layers = tuple(cam.layers)
    method = pm.cam_method(cam.method).name
    clf = model.classifier
    if cam.layers == "auto" and declared and declared == (clf.cam_layer,) and clf.in_graph_cams:
        method = pm.cam_method(min(clf.in_graph_cams)).name  # the network's class maps are its localization
    in_graph = method in clf.in_graph_cams and layers == (clf.cam_layer,) and not cam.eigen_smooth
    options = plugin_options(pm, method, cam.options)
    return CamPlan(method, layers, in_graph, cam.aug_smooth, cam.eigen_smooth, options)


def in_graph_cams(model: "LoadedModel", batch: np.ndarray, aug_smooth: bool,
                  first: tuple[np.ndarray, np.ndarray | None] | None = None, guard: "Guard | None" = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[B, C]`` and every class's CAM ``[B, C, h, w]`` from the backend's forward
    pass; ``first`` is the plain pass when already run. With ``aug_smooth`` the mean of the six
    de-augmented, normalized maps. The classifier's output is checked by ``guard``."""
    clf = model.classifier

    def forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if guard is None:
            out = clf.predict_with_cams(x)
        else:
            out = guard.call("classifier", clf.name, clf.predict_with_cams, x)
        probs, maps = out
        if maps is None or np.ndim(maps) != 4 or len(maps) != len(x):
            problem = f"declared in-graph CAMs but returned {None if maps is None else np.shape(maps)}"
            if guard is None:
                raise RuntimeError(f"{clf.name}: {problem}")
            raise guard.failure("classifier", clf.name, f"broke the contract: {problem}")
        if guard is not None:
            guard.cams(clf.name, np.asarray(maps).reshape(-1, *np.shape(maps)[-2:]), len(x) * np.shape(maps)[1])
        return probs, maps

    probs, maps = first if first is not None and first[1] is not None else forward(batch)
    if not aug_smooth:
        return probs, maps
    total = np.zeros_like(maps, dtype=np.float64)
    for flip in (False, True):
        for factor in AUG_FACTORS:
            if factor == 1.0 and not flip:
                total += maps
                continue
            x = batch[..., ::-1] if flip else batch
            _, m = forward(np.ascontiguousarray(x * np.float32(factor), dtype=np.float32))
            total += m[..., ::-1] if flip else m
    return probs, normalize(total / (2 * len(AUG_FACTORS)))


def plugin_cams(model: "LoadedModel", batch: np.ndarray, pairs: Sequence[tuple[int, int]], plan_: CamPlan,
                pm: "XcamPluginManager", fuse: Callable[..., np.ndarray], guard: "Guard | None" = None,
                fuse_name: str = "ensembler") -> list[np.ndarray]:
    """Maps ``[S, S]`` for each ``(image index, class index)`` pair, from the CAM-method plugin
    (its output checked by ``guard``: shape, finite, [0, 1])."""
    import torch

    from xcam.chain.guard import Guard

    guard = guard or Guard(pm)
    reg = pm.cam_method(plan_.method)
    net = model.autograd_model()
    device = next(net.parameters()).device
    by_image: dict[int, list[int]] = {}
    for b, c in pairs:
        by_image.setdefault(b, []).append(c)
    out: dict[tuple[int, int], np.ndarray] = {}
    for b, classes in by_image.items():
        x = torch.from_numpy(np.repeat(np.ascontiguousarray(batch[b : b + 1], dtype=np.float32), len(classes),
                                       axis=0)).to(device)
        per_layer = []
        for layer in plan_.layers:
            maps = guard.call("cam method", reg.name, reg.compute, net, x, classes, aug_smooth=plan_.aug_smooth,
                              eigen_smooth=plan_.eigen_smooth, target_layer=layer, **plan_.options)
            per_layer.append(normalize(guard.cams(reg.name, maps, len(classes))))
        for j, c in enumerate(classes):
            layer_maps = [m[j] for m in per_layer]
            if len(layer_maps) == 1:
                out[(b, c)] = layer_maps[0]
                continue
            fused = guard.call("ensembler", fuse_name, fuse, layer_maps, None)
            out[(b, c)] = guard.combined(fuse_name, fused, layer_maps[0].shape)
    return [out[p] for p in pairs]
