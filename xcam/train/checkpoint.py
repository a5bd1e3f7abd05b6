"""Training checkpoints: plain dicts that load with ``torch.load(weights_only=True)``, written atomically.

A checkpoint holds what :class:`xcam.nets.mobilenet.MobileNetV3` needs to rebuild the model
(``model_state``, ``labels``, ``arch``, ``img_size``, ``preprocessing``, ``cam_layer``) and what
training needs to resume (``epoch``, ``metrics``, ``optimizer_state``, ``scheduler_state``,
``rng``, ``config``, ``best``). Everything is a tensor, dict, list, tuple, str, int, float, bool or
None: no numpy arrays, no classes, so no allowlist entry is ever needed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xcam.core.errors import WeightsError

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path.tmp``, fsync, then ``os.replace``: a reader (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` (nothing but plain data)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: cannot load checkpoint ({reason})") from None
    if not isinstance(obj, dict) or "model_state" not in obj:
        raise WeightsError(f"{path}: not an xcam training checkpoint (no 'model_state')")
    return obj


def trust(path: Path) -> None:
    """Record the file's sha256 as trusted, so the classifier plugin loads what we just wrote even
    where an earlier run's file of the same name had been trusted (trust on first use)."""
    from xcam.core.weights import WeightsStore

    WeightsStore.from_env().trust(path)
