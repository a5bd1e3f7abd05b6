"""Training curves: ``performance.png`` from the rows of ``performance.csv``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(key, "nan")))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def plot_performance(rows: Sequence[Mapping[str, Any]], path: Path, labels: Sequence[str] = ()) -> None:
    """Loss, macro AUC, per-class validation AUC and learning rate against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    epochs = _values(rows, "epoch")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    axes[0].plot(epochs, _values(rows, "train_loss"), "o-", label="train")
    axes[0].plot(epochs, _values(rows, "val_loss"), "o-", label="validation")
    axes[0].set_title("BCE loss")
    axes[1].plot(epochs, _values(rows, "train_auc"), "o-", label="train (training mode)")
    axes[1].plot(epochs, _values(rows, "val_auc"), "o-", label="validation (eval mode)")
    axes[1].set_title("macro AUC")
    axes[1].set_ylim(0.4, 1.01)
    for label in labels:
        axes[2].plot(epochs, _values(rows, f"val_auc_{label}"), ".-", label=label)
    axes[2].set_title("validation AUC per class")
    axes[2].set_ylim(0.4, 1.01)
    axes[3].plot(epochs, _values(rows, "lr"), "o-")
    axes[3].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
