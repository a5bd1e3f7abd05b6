"""The runtime model interface every classifier plugin builds: :class:`XCamModel`.

``forward`` returns raw logits (what CAMs need: xrv's op_norm calibration saturates and zeroes
gradients); :meth:`XCamModel.calibrate` turns logits into the probabilities users see.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def op_norm(probabilities: torch.Tensor, op_threshs: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's operating-point normalisation: the threshold maps to 0.5.

    Outputs whose threshold is NaN (not trained) stay at 0.5, as in xrv.
    """
    threshs = op_threshs.to(probabilities.dtype).expand_as(probabilities)
    valid = ~torch.isnan(threshs)
    safe = torch.where(valid, threshs, torch.full_like(threshs, 0.5))
    below = probabilities / (safe * 2)
    above = 1.0 - (1.0 - probabilities) / ((1 - safe) * 2)
    out = torch.where(probabilities < safe, below, above)
    return torch.where(valid, out, torch.full_like(out, 0.5))


class XCamModel(nn.Module):
    """Base class of built classifiers.

    Subclasses set ``labels`` (``""`` marks an output the weights were not trained on),
    ``input_size``, and implement :meth:`forward` (raw logits). ``op_threshs`` (a buffer or
    ``None``) switches calibration from plain sigmoid to xrv's op_norm.
    """

    name: str = "model"
    variant: str = ""
    preprocessing: str = "xrv"
    target_layer_path: str = ""
    localization_layers: tuple[str, ...] = ()
    """Layers whose fused CAM localized best as measured (``cam_layers = "auto"``); empty: the target layer."""
    weights_path: str | None = None
    weights_sha256: str | None = None

    def __init__(self, labels: Sequence[str], input_size: int, op_threshs: Sequence[float] | None = None) -> None:
        super().__init__()
        self.labels: list[str] = list(labels)
        self.input_size = int(input_size)
        if op_threshs is not None:
            self.register_buffer("op_threshs", torch.tensor(list(op_threshs), dtype=torch.float32))
        else:
            self.op_threshs = None

    @property
    def valid_indices(self) -> list[int]:
        """Indices of outputs with a real label (and, with op_norm, a real threshold)."""
        if self.op_threshs is None:
            return [i for i, label in enumerate(self.labels) if label]
        nan = torch.isnan(self.op_threshs).tolist()
        return [i for i, label in enumerate(self.labels) if label and not nan[i]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities users see: sigmoid, then op_norm when the weights carry thresholds."""
        probs = torch.sigmoid(logits)
        if self.op_threshs is not None:
            probs = op_norm(probs, self.op_threshs)
        return probs

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self(x))

    def target_layer(self) -> nn.Module:
        """The module whose activations CAM methods use (``target_layer_path``)."""
        return self.get_submodule(self.target_layer_path)

    def checkpoint_object(self) -> object:
        """What a weight file of this model holds in its published format (tests write random
        weights this way under the real file names)."""
        return self.state_dict()

    def gap_linear_head(self) -> tuple[nn.Module, nn.Linear] | None:
        """For GAP → linear heads: ``(features, linear)`` where ``features(x)`` is the last feature
        map that is pooled (after any activation) and ``linear`` the head. ``None`` otherwise."""
        return None

    def class_map_head(self) -> "tuple[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] | None":
        """For heads whose logits pool one score map per class (PYLON): ``(layer, fn)``, ``fn(x)`` →
        ``(logits, cams [B, C, h, w])``: every class's CAM from ``layer``'s output maps, ≥ 0 and not
        normalized (ReLU(map), which is Grad-CAM at that layer up to a constant). ``None`` otherwise."""
        return None
