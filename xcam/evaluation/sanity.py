"""Sanity check of saliency maps: cascading model-parameter randomization (Adebayo et al. 2018,
"Sanity Checks for Saliency Maps").

The layers with parameters are put in forward-execution order (hooks on one forward pass), then
randomized from the output down, cumulatively, in ``steps`` near-equal groups: step 1 randomizes the
head, the last step every layer down to the stem. Randomizing a layer is PyTorch's own initialisation,
``module.reset_parameters()`` (as Quantus' ``ModelParameterRandomisation`` does; a BatchNorm layer gets
its running statistics reset too); a module without it gets its parameters redrawn from a normal
distribution of the same standard deviation. Draws come from a seeded generator: a run is repeatable.

At every step the method's maps are recomputed on the randomized copy by the chain's own CAM route
(:mod:`xcam.chain.cams`, the :class:`~xcam.chain.cams.CamPlan` of the trained model: in-graph or the
plugin, same layers, same test-time augmentation) and compared with the trained model's maps in the
chain's work grid: Spearman rank correlation (SciPy) and SSIM (scikit-image). A map that depends on
what the model learned changes; one that barely changes after *full* randomization explains the
image, not the model: :func:`flagged` marks it (mean Spearman above :data:`DEFAULT_THRESHOLD`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from xcam.chain.cams import CamPlan
    from xcam.chain.guard import Guard
    from xcam.chain.models import LoadedModel
    from xcam.core.manager import XcamPluginManager

DEFAULT_THRESHOLD = 0.5
"""A method is flagged when its maps' mean Spearman correlation with the trained model's maps is
above this after full randomization. Adebayo et al. report rank correlations of roughly 0.0–0.3 for
methods that pass after full randomization and near 1 for those that do not (e.g. Guided
Backpropagation); 0.5 sits between them, as the issue suggested."""

DEFAULT_STEPS = 4


@dataclass(frozen=True)
class Step:
    """One step of the cascade: ``modules`` are randomized at this step (the earlier steps' stay
    randomized); ``label`` names the deepest of them (the one nearest the input)."""

    index: int
    modules: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.modules[-1] if self.modules else ""


def layer_order(net: "torch.nn.Module", example: "torch.Tensor") -> list[str]:
    """Names of the modules that own parameters, in the order one forward pass of ``example`` calls
    them (modules never called are left out)."""
    import torch

    owners = {name: m for name, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: order.append(n) if n not in order else None)
               for name, m in owners.items()]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return order


def cascade(net: "torch.nn.Module", example: "torch.Tensor", steps: int = DEFAULT_STEPS) -> list[Step]:
    """The randomization steps, top (output) down: ``steps`` groups of consecutive layers."""
    order = list(reversed(layer_order(net, example)))
    if not order:
        raise ValueError("the model has no layer with parameters")
    groups = [g for g in np.array_split(np.arange(len(order)), min(max(1, int(steps)), len(order))) if len(g)]
    return [Step(i + 1, tuple(order[j] for j in g)) for i, g in enumerate(groups)]


def randomize(net: "torch.nn.Module", modules: Sequence[str], seed: int) -> None:
    """Re-initialise ``modules`` of ``net`` in place (see the module docs), from ``seed``."""
    import torch

    from xcam.chain.models import seeded

    with seeded(seed), torch.no_grad():
        for name in modules:
            module = net.get_submodule(name)
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                continue
            for p in module.parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if math.isfinite(std) and std > 0 else 0.01)


def randomized_copies(net: "torch.nn.Module", steps: Sequence[Step], seed: int = 0
                      ) -> Iterator[tuple[Step, "torch.nn.Module"]]:
    """One deep copy of ``net``, randomized step by step (cumulatively); ``net`` is untouched. The
    same copy is yielded at every step: use it before asking for the next."""
    work = copy.deepcopy(net).eval()
    for step in steps:
        randomize(work, step.modules, seed + step.index)
        yield step, work


def model_space_maps(model: "LoadedModel", batch: np.ndarray, pairs: Sequence[tuple[int, int]], plan: "CamPlan",
                     pm: "XcamPluginManager", guard: "Guard", ensembler: Any) -> list[np.ndarray]:
    """Maps of ``(image index, class index)`` pairs of ``batch`` by ``plan``'s route — the chain's
    in-graph CAMs when the plan is in-graph, else the method plugin (fused over the plan's layers by
    ``ensembler``) — exactly as :class:`xcam.chain.engine.Chain` computes them."""
    from xcam.chain.cams import in_graph_cams, plugin_cams

    if plan.in_graph:
        _, maps = in_graph_cams(model, batch, plan.aug_smooth, None, guard)
        return [np.asarray(maps[b, c], np.float32) for b, c in pairs]
    return plugin_cams(model, batch, pairs, plan, pm, ensembler.combine_cams, guard, ensembler.name)


def randomized_model(model: "LoadedModel", net: "torch.nn.Module", pm: "XcamPluginManager") -> "LoadedModel":
    """``model`` with its PyTorch network replaced by ``net`` (a randomized copy), on PyTorch."""
    from xcam.chain.models import LoadedModel, LoadOptions
    from xcam.core.inference import TorchClassifier

    device = str(next(net.parameters()).device)
    return LoadedModel(model.ref, TorchClassifier(net, device), pm, LoadOptions(device=device))  # type: ignore[arg-type]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (SciPy). Two constant maps: 1 when equal,
    else 0; one constant map: 0 (no ranking left to agree with)."""
    from scipy.stats import spearmanr

    x, y = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
    if flat_x or flat_y:
        return float(flat_x and flat_y and np.array_equal(x, y))
    return float(spearmanr(x, y).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two maps in [0, 1] (scikit-image; window 7, smaller for tiny maps)."""
    from skimage.metrics import structural_similarity

    side = min(np.shape(a))
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=1.0,
                                       win_size=win))


def flagged(final_spearman: float | None, threshold: float = DEFAULT_THRESHOLD) -> bool | None:
    """Whether maps that barely change after full randomization fail the check (``None``: not run)."""
    if final_spearman is None or math.isnan(final_spearman):
        return None
    return bool(final_spearman > threshold)
