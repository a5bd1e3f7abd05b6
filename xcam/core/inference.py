"""One interface for running a classifier, whatever the backend (PyTorch or ONNX Runtime).

Commands that run models call :func:`load_classifier` and use :class:`Classifier` methods on
numpy batches ``[B, 1, S, S]`` (already preprocessed with :func:`xcam.core.preprocess.preprocess`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.manager import XcamPluginManager
    from xcam.core.model import XCamModel
    from xcam.core.weights import WeightsStore


class Classifier(Protocol):
    """What every backend offers."""

    name: str
    variant: str
    labels: list[str]
    valid_indices: list[int]
    input_size: int
    preprocessing: str
    backend: str  # e.g. "torch:cpu", "onnx:CPUExecutionProvider"

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class TorchClassifier:
    """PyTorch backend: also the one CAM methods use (``.model`` is the :class:`XCamModel`)."""

    def __init__(self, model: "XCamModel", device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.name, self.variant = model.name, model.variant
        self.labels = list(model.labels)
        self.valid_indices = model.valid_indices
        self.input_size = model.input_size
        self.preprocessing = model.preprocessing
        self.backend = f"torch:{device}"

    def _run(self, batch: np.ndarray, calibrated: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            out = self.model(x)
            if calibrated:
                out = self.model.calibrate(out)
            return out.float().cpu().numpy()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, calibrated=False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, calibrated=True)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.calibrate(torch.from_numpy(logits)).numpy()


def load_classifier(
    pm: "XcamPluginManager",
    name: str | None = None,
    variant: str | None = None,
    *,
    backend: str = "torch",
    device: str = "cpu",
    store: "WeightsStore | None" = None,
    random_init: bool = False,
) -> Classifier:
    """Build a classifier by plugin name and variant on the chosen backend.

    ``backend``: ``torch`` here; ``onnx``/``auto`` are handled by :mod:`xcam.export.runtime`
    when it is installed in this package.
    """
    registration = pm.classifier(name)
    options = pm.config.plugin_options(registration.name)
    if variant is None:
        variant = options.get("weights")
    if backend in ("onnx", "auto", "onnx-int8"):
        from xcam.export.runtime import load_onnx_classifier  # noqa: PLC0415

        return load_onnx_classifier(
            registration, variant, backend=backend, device=device, store=store, random_init=random_init,
            options=options,
        )
    model = registration.build(variant, store=store, device=device, options=options, random_init=random_init)
    return TorchClassifier(model, device)
