"""Faithfulness of saliency maps: ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods"), with pytorch-grad-cam's implementation of its perturbation.

For each (image, class, map) and each percentile ``p``: **MoRF** (most relevant first) replaces the
``100 − p`` % most relevant pixels by noisy linear imputation from their neighbours
(:class:`pytorch_grad_cam.metrics.road.NoisyLinearImputer`, through the library's
``RemoveMostRelevantFirst``), **LeRF** (least relevant first) the least relevant ones
(``RemoveLeastRelevantFirst``). The score is the model's probability of the class (sigmoid of its
raw logit, before any operating-point calibration) after minus before the perturbation, averaged over
the percentiles; ``combined = (LeRF − MoRF) / 2`` is pytorch-grad-cam's ``ROADCombined``. A faithful
map loses the class when its top pixels go (MoRF very negative) and keeps it when only its bottom
pixels go (LeRF near 0): higher ``combined`` is more faithful; a random map scores about 0.

Why not the library's ``ROADCombined.__call__``: it runs a PyTorch model once per percentile per
batch and needs ``torch`` targets. Here the library's perturbations are stacked — every percentile,
both orders, every pair of a batch — and scored in a few large forward passes of the chain's
classifier backend (``Classifier.logits``: ONNX Runtime when the run uses it). The imputation is a
sparse linear solve per perturbed copy (SciPy), the dominant cost at 224 px: :class:`FastLinearImputer`
solves the library's equations (the same matrix, right-hand side, SciPy solver and noise draws) but
builds them in one vectorized pass instead of the library's ``lil_matrix`` item assignments, which
took about as long as the solve itself. Quantus and torchmetrics
(which also offer such metrics) are not installed and would be heavy dependencies for one metric.
ROAD rather than deletion/insertion AUC: deleting pixels to a constant creates images unlike any the
model saw, and the score drop then measures that shift as much as the map (Rong et al. 2022), which
the imputation avoids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""pytorch-grad-cam's ``ROADCombined`` default."""

NOISE_FRACTION = 0.01
"""Imputation noise as a fraction of the image's value range (ROAD's 0.01 on unit-range images;
xcam's inputs are xrv-scaled to ±1024)."""


@dataclass
class RoadScore:
    """ROAD of one map: the probability before, and its change after each perturbation."""

    base: float
    morf: list[float]  # per percentile: p(after) − p(before), most relevant pixels removed
    lerf: list[float]  # least relevant pixels removed

    @property
    def morf_mean(self) -> float:
        return float(np.mean(self.morf))

    @property
    def lerf_mean(self) -> float:
        return float(np.mean(self.lerf))

    @property
    def combined(self) -> float:
        """``(LeRF − MoRF) / 2`` (pytorch-grad-cam's ``ROADCombined``): higher is more faithful."""
        return (self.lerf_mean - self.morf_mean) / 2

    def as_dict(self) -> dict[str, float | list[float]]:
        return {"base": self.base, "morf": self.morf_mean, "lerf": self.lerf_mean, "combined": self.combined,
                "morf_curve": list(self.morf), "lerf_curve": list(self.lerf)}


class FastLinearImputer:
    """pytorch-grad-cam's ``NoisyLinearImputer`` with the equation system built in one pass.

    Every pixel to impute (mask 0) equals the weighted mean of its 8 neighbours (weights 1/6 for the
    4 direct, 1/12 for the diagonal ones, the library's ``neighbors_weights``); known neighbours move
    to the right-hand side, neighbours outside the image drop out of the sum. The same sparse system
    as the library's ``setup_sparse_system``, solved by the same ``spsolve``, then the same Gaussian
    noise from torch's global generator: the output is the library's (tested)."""

    def __init__(self, noise: float = 0.01) -> None:
        self.noise = float(noise)

    @staticmethod
    def system(mask: np.ndarray, image: np.ndarray):
        """``(A, b, unknown)``: the sparse matrix (CSC) and right-hand side ``[n, C]`` of the ``n``
        pixels where ``mask`` (``[H, W]``, 1 keep / 0 impute) is 0, and their flat indices."""
        import scipy.sparse as sp
        from pytorch_grad_cam.metrics.road import neighbors_weights

        h, w = mask.shape
        flat_mask = mask.reshape(-1)
        known = flat_mask > 0.5
        unknown = np.flatnonzero(flat_mask == 0)
        variable = np.full(h * w, -1)
        variable[unknown] = np.arange(len(unknown))
        row0, col0 = np.divmod(unknown, w)
        values = image.reshape(image.shape[0], -1)
        b = np.zeros((len(unknown), image.shape[0]))
        diagonal = np.ones(len(unknown))
        rows, cols, weights = [], [], []
        for (d_row, d_col), weight in neighbors_weights:
            r, c = row0 + d_row, col0 + d_col
            inside = (r >= 0) & (c >= 0) & (r < h) & (c < w)
            diagonal[~inside] -= weight
            neighbour = np.where(inside, r * w + c, 0)
            given = inside & known[neighbour]
            b[given] -= weight * values[:, neighbour[given]].T
            free = inside & (flat_mask[neighbour] < 0.5)
            rows.append(np.flatnonzero(free))
            cols.append(variable[neighbour[free]])
            weights.append(np.full(int(free.sum()), weight))
        n = len(unknown)
        rows.append(np.arange(n))
        cols.append(np.arange(n))
        weights.append(-diagonal)
        a = sp.csc_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        return a, b, unknown

    def __call__(self, img, mask):
        """``img`` ``[C, H, W]`` with the pixels where ``mask`` ``[H, W]`` is 0 imputed (torch tensors)."""
        import torch
        from scipy.sparse.linalg import spsolve

        flat = img.reshape(img.shape[0], -1)
        a, b, unknown = self.system(mask.numpy(), img.numpy())
        if len(unknown) == 0:
            return img.clone()
        solved = torch.tensor(spsolve(a, b), dtype=torch.float)
        filled = flat.clone()
        filled[:, unknown] = solved.t() + self.noise * torch.randn_like(solved.t())
        return filled.reshape_as(img)


def perturbed_copies(image: np.ndarray, cam: np.ndarray, percentiles: Sequence[int] = DEFAULT_PERCENTILES,
                     seed: int = 0, imputer: Callable[..., Any] | None = None) -> np.ndarray:
    """``[2·P, 1, S, S]``: the MoRF copies (one per percentile), then the LeRF copies, of ``image``
    ``[1, S, S]`` under the map ``cam`` ``[S, S]`` (same grid): pytorch-grad-cam's ROAD perturbations
    (its masks, its imputation as computed by :class:`FastLinearImputer`, or by the class ``imputer``,
    called with ``noise=``: the benchmark passes the library's ``NoisyLinearImputer``)."""
    import torch
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst

    from xcam.chain.models import seeded

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if x.ndim != 3 or tuple(np.shape(cam)) != tuple(x.shape[-2:]):
        raise ValueError(f"image {tuple(x.shape)} and map {tuple(np.shape(cam))} do not match")
    span = float(x.max() - x.min())
    impute = (imputer or FastLinearImputer)(noise=NOISE_FRACTION * (span if span > 0 else 1.0))
    mask = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))
    out = []
    with seeded(seed):  # the imputer's noise comes from torch's global generator
        for remove in (RemoveMostRelevantFirst, RemoveLeastRelevantFirst):
            for p in percentiles:
                out.append(remove(int(p), impute)(x, mask).numpy())
    return np.stack(out).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def road(logits: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], cams: Sequence[np.ndarray],
         classes: Sequence[int], percentiles: Sequence[int] = DEFAULT_PERCENTILES, *, seed: int = 0,
         forward_batch: int = 64) -> list[RoadScore]:
    """ROAD of each ``(images[i], cams[i], classes[i])``: every perturbed copy of every pair (and the
    unperturbed images) scored by ``logits`` (``[N, 1, S, S] → [N, C]`` raw logits) in chunks of
    ``forward_batch`` images per forward pass."""
    if not (len(images) == len(cams) == len(classes)):
        raise ValueError("images, cams and classes differ in length")
    if not images:
        return []
    p = len(percentiles)
    stacks = [np.asarray(img, np.float32)[None] for img in images]
    stacks += [perturbed_copies(img, cam, percentiles, seed + i) for i, (img, cam) in enumerate(zip(images, cams))]
    batch = np.concatenate(stacks)
    scores = np.concatenate([np.asarray(logits(batch[i : i + forward_batch]), dtype=np.float64)
                             for i in range(0, len(batch), max(1, int(forward_batch)))])
    n = len(images)
    out = []
    for i, c in enumerate(classes):
        base = float(_sigmoid(scores[i, c]))
        after = _sigmoid(scores[n + 2 * p * i : n + 2 * p * (i + 1), c])
        out.append(RoadScore(base, [float(v - base) for v in after[:p]], [float(v - base) for v in after[p:]]))
    return out


def to_model_space(work_map: np.ndarray, grid: object, size: int) -> np.ndarray:
    """A map of the chain's work grid (:class:`xcam.core.preprocess.WorkGrid`, padding cropped off)
    → the model's input grid ``[size, size]``: the padding put back (relevance 0), resized when the
    work grid has another side. The inverse of ``WorkGrid.from_model`` on the image itself."""
    import cv2

    side = int(grid.side)  # type: ignore[attr-defined]
    canvas = np.zeros((side, side), np.float32)
    canvas[grid.y0 : grid.y1, grid.x0 : grid.x1] = np.asarray(work_map, np.float32)  # type: ignore[attr-defined]
    if side != size:
        canvas = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)
    return canvas
