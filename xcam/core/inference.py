"""One interface for running a classifier, whatever the backend: :class:`Classifier`.

A backend declares what it offers instead of being probed for it:

* ``autograd_model`` — the PyTorch :class:`~xcam.core.model.XCamModel` that CAM-method plugins
  run on (``None`` for a backend without autograd, such as ONNX Runtime);
* ``in_graph_cams`` — the CAM methods it computes for *every* class inside its forward pass, at
  ``cam_layer`` (``{"gradcam"}`` for GAP → linear heads: see :mod:`xcam.core.cam_math`), served
  by :meth:`Classifier.predict_with_cams` at no extra inference.

Backends are built by :func:`xcam.export.backends.load_classifier`; this module holds the
PyTorch one, :class:`TorchClassifier`. Batches are numpy ``[B, 1, S, S]``, already preprocessed
with :func:`xcam.core.preprocess.preprocess`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from xcam.core.model import XCamModel


class Classifier(Protocol):
    """What every backend offers."""

    name: str
    variant: str
    labels: list[str]
    valid_indices: list[int]
    input_size: int
    preprocessing: str
    backend: str  # e.g. "torch:cpu", "onnx:CPUExecutionProvider"
    autograd_model: "XCamModel | None"
    in_graph_cams: frozenset[str]
    cam_layer: str  # the layer in-graph CAMs come from ("" without them)
    localization_layers: tuple[str, ...]  # layers whose fused CAM localized best (empty: the target layer)

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def predict_with_cams(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities ``[B, C]`` and, with in-graph CAMs, every class's map
        ``[B, C, h, w]`` min-max normalized to [0, 1] (``None`` without them)."""
        ...


class TorchClassifier:
    """PyTorch backend: its model is the one CAM plugins use; GAP → linear heads also give the
    exact all-class Grad-CAM from the forward pass."""

    def __init__(self, model: "XCamModel", device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.name, self.variant = model.name, model.variant
        self.labels = list(model.labels)
        self.valid_indices = model.valid_indices
        self.input_size = model.input_size
        self.preprocessing = model.preprocessing
        self.backend = f"torch:{device}"
        self._head = model.gap_linear_head()
        self._maps = model.class_map_head() if self._head is None else None  # PYLON: the class maps
        in_graph = self._head is not None or self._maps is not None
        self.in_graph_cams: frozenset[str] = frozenset({"gradcam"}) if in_graph else frozenset()
        self.cam_layer = self._maps[0] if self._maps is not None else model.target_layer_path if in_graph else ""
        self.localization_layers = tuple(model.localization_layers)

    @property
    def autograd_model(self) -> "XCamModel":
        return self.model

    def _input(self, batch: np.ndarray) -> "torch.Tensor":
        import torch

        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def _run(self, batch: np.ndarray, calibrated: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(self._input(batch))
            if calibrated:
                out = self.model.calibrate(out)
            return out.float().cpu().numpy()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, calibrated=False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, calibrated=True)

    def predict_with_cams(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass: probabilities and (GAP → linear heads) normalized all-class Grad-CAMs."""
        import torch

        from xcam.core.cam_math import normalize_cams, raw_cams

        if self._maps is not None:  # class-map heads (PYLON): the model's own CAMs of its class maps
            with torch.inference_mode():
                logits, maps = self._maps[1](self._input(batch))
                probs = self.model.calibrate(logits.float()).cpu().numpy()
                return probs, normalize_cams(maps.float().cpu().numpy())
        if self._head is None:
            return self.predict(batch), None
        features, linear = self._head
        with torch.inference_mode():
            a = features(self._input(batch)).float()
            logits = linear(a.mean(dim=(2, 3)))
            probs = self.model.calibrate(logits).float().cpu().numpy()
            cams = raw_cams(a, linear.weight.float()).cpu().numpy()
        return probs, normalize_cams(cams)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.calibrate(torch.from_numpy(logits)).numpy()
