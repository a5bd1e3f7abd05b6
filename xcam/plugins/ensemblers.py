"""Built-in ensemblers: several models' probabilities and CAMs → one.

Probabilities combine **by label name** over the union of the models' labels (models disagree on
label sets and order). A label only some models predict is combined over those models; the empty
label ``""`` (an output the weights were not trained on) and missing/NaN values are ignored.
Labels come out in order of first appearance.

* ``mean``     — ``p(l) = (1/|M_l|) Σ_{m∈M_l} p_m(l)``; CAMs: elementwise mean.
* ``max``      — ``p(l) = max_{m∈M_l} p_m(l)``; CAMs: elementwise max.
* ``weighted`` — ``p(l) = Σ_{m∈M_l} w_m p_m(l) / Σ_{m∈M_l} w_m`` (weights renormalized over the
  models that have the label; no weights: equal); CAMs: ``Σ w_m c_m / Σ w_m``.

* ``product``  — probabilities as ``mean``; CAMs: elementwise geometric mean ``(Π c_m)^(1/n)``, high
  only where every map is (an AND: a coarse, semantic map times a fine one keeps the fine detail
  inside the coarse evidence).

``M_l`` is the set of models predicting ``l``. CAMs must already share one grid and be normalized;
the combined map is min–max normalized to [0, 1] (a constant result gives zeros).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from xcam.core.hookspecs import hookimpl
from xcam.core.types import EnsemblerRegistration

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    """Validated weights (equal when ``None``); must be ``n`` finite non-negative numbers, not all 0."""
    from xcam.core.errors import UsageError

    if weights is None:
        return [1.0] * n
    w = [float(v) for v in weights]
    if len(w) != n:
        raise UsageError(f"{len(w)} weights given for {n} models")
    if any(not math.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
        raise UsageError(f"weights must be non-negative numbers with a positive sum, got {w}")
    return w


def _by_label(per_model: Sequence[Mapping[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """``{label: [(model index, probability), ...]}`` over the union of labels."""
    table: dict[str, list[tuple[int, float]]] = {}
    for i, probs in enumerate(per_model):
        for label, p in probs.items():
            if not label or p is None or not math.isfinite(float(p)):
                continue
            table.setdefault(label, []).append((i, float(p)))
    return table


def _combine(per_model: Sequence[Mapping[str, float]], weights: Sequence[float] | None, rule: str) -> dict[str, float]:
    w = _weights(len(per_model), weights)
    out: dict[str, float] = {}
    for label, entries in _by_label(per_model).items():
        if rule == "max":
            out[label] = max(p for _, p in entries)
            continue
        total = sum(w[i] for i, _ in entries)
        if total <= 0:  # only zero-weight models have this label: fall back to their plain mean
            out[label] = sum(p for _, p in entries) / len(entries)
        else:
            out[label] = sum(w[i] * p for i, p in entries) / total
    return out


def mean_probabilities(per_model: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Mean per label over the models that predict it (``weights`` ignored)."""
    return _combine(per_model, None, "mean")


def max_probabilities(per_model: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Max per label over the models that predict it."""
    return _combine(per_model, None, "max")


def weighted_probabilities(per_model: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None) -> dict[str, float]:
    """Weighted mean per label, weights renormalized over the models that predict it."""
    return _combine(per_model, weights, "weighted")


def _stack(cams: Sequence[Any]) -> "np.ndarray":
    import numpy as np

    from xcam.core.errors import UsageError

    if len(cams) == 0:
        raise UsageError("no CAMs to combine")
    arrays = [np.nan_to_num(np.asarray(c, dtype=np.float64), nan=0.0) for c in cams]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UsageError(f"CAMs must share one grid, got shapes {sorted(shapes)}")
    return np.stack(arrays)


def _normalized(a: "np.ndarray") -> "np.ndarray":
    import numpy as np

    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 1e-12:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def mean_cams(cams: Sequence[Any], weights: Sequence[float] | None = None) -> "np.ndarray":
    """Elementwise mean, normalized to [0, 1]."""
    return _normalized(_stack(cams).mean(axis=0))


def max_cams(cams: Sequence[Any], weights: Sequence[float] | None = None) -> "np.ndarray":
    """Elementwise max, normalized to [0, 1]."""
    return _normalized(_stack(cams).max(axis=0))


def weighted_cams(cams: Sequence[Any], weights: Sequence[float] | None = None) -> "np.ndarray":
    """``Σ w_m c_m / Σ w_m``, normalized to [0, 1]."""
    import numpy as np

    stack = _stack(cams)
    w = np.asarray(_weights(len(stack), weights), dtype=np.float64)
    return _normalized(np.tensordot(w / w.sum(), stack, axes=1))


def product_cams(cams: Sequence[Any], weights: Sequence[float] | None = None) -> "np.ndarray":
    """Elementwise geometric mean (each map clipped to [0, 1] first), normalized to [0, 1]."""
    import numpy as np

    stack = np.clip(_stack(cams), 0.0, 1.0)
    return _normalized(np.exp(np.log(stack + 1e-6).mean(axis=0)))


def _registration(name: str, probs: Callable[..., dict[str, float]], cams: Callable[..., Any], text: str) -> EnsemblerRegistration:
    return EnsemblerRegistration(name=name, combine_probabilities=probs, combine_cams=cams, description=text)


@hookimpl
def xcam_ensemblers() -> Iterable[EnsemblerRegistration]:
    yield _registration("mean", mean_probabilities, mean_cams, "mean per label; mean CAM")
    yield _registration("max", max_probabilities, max_cams, "max per label; elementwise max CAM")
    yield _registration(
        "weighted", weighted_probabilities, weighted_cams, "weighted mean per label (weights per model); weighted CAM"
    )
    yield _registration("product", mean_probabilities, product_cams, "mean per label; geometric-mean CAM (maps agree)")
