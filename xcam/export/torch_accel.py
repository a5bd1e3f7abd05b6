"""Opt-in speed-ups for the PyTorch backend on CUDA: autocast (fp16/bf16), channels_last and
``torch.compile`` (``mode="reduce-overhead"`` uses CUDA graphs).

None of these is on by default: they could not be measured on the project's CPU-only machines.
``benchmarks/gpu_check.sh`` measures them (``--backends torch,torch-amp,torch-compile``) and
``tests/test_gpu.py`` checks that autocast keeps probabilities and CAMs within tolerance of FP32.
Logits are always returned and calibrated in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xcam.core.inference import TorchClassifier

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from xcam.core.model import XCamModel

AMP_DTYPES = ("fp16", "bf16")


class AcceleratedTorchClassifier(TorchClassifier):
    """A :class:`TorchClassifier` with autocast, channels_last and optional ``torch.compile``.

    ``backend`` names what is on, e.g. ``torch:cuda+fp16+channels_last``.
    """

    def __init__(self, model: XCamModel, device: str = "cuda", amp: str | None = "fp16",
                 channels_last: bool = True, compile_mode: str | None = None) -> None:
        import torch

        super().__init__(model, device)
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp dtype {amp!r}; valid: {', '.join(AMP_DTYPES)}")
        self.amp = amp
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model, mode=compile_mode) if compile_mode else self.model
        parts = [f"torch:{device}"] + ([amp] if amp else []) + (["channels_last"] if channels_last else [])
        parts += [f"compile-{compile_mode}"] if compile_mode else []
        self.backend = "+".join(parts)

    def _input(self, batch: np.ndarray) -> "torch.Tensor":
        """``batch`` on the device, in channels_last when that is on."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self) -> "torch.autocast":
        """Autocast to the ``amp`` dtype on this device (disabled when ``amp`` is None)."""
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.amp or "")
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def _run(self, batch: np.ndarray, calibrated: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = self._input(batch)
            with self._autocast():
                out = self._forward(x)
            out = out.float()
            if calibrated:
                out = self.model.calibrate(out)
            return out.cpu().numpy()

    def predict_with_cams(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and normalized all-class Grad-CAM ``[B, C, h, w]`` from one autocast pass
        (the einsum and calibration in float32)."""
        import torch

        from xcam.core.cam_math import normalize_cams, raw_cams

        if self._head is None:  # class-map heads (no autocast there) or no in-graph CAMs
            return super().predict_with_cams(batch)
        features, linear = self._head
        with torch.inference_mode():
            x = self._input(batch)
            with self._autocast():
                a = features(x)
            a = a.float()
            logits = linear(a.mean(dim=(2, 3)))
            probs = self.model.calibrate(logits).cpu().numpy()
            cams = raw_cams(a, linear.weight.float())
        return probs, normalize_cams(cams.cpu().numpy())

    def all_class_cams(self, batch: np.ndarray) -> np.ndarray | None:
        """Normalized all-class Grad-CAM ``[B, C, h, w]`` (``None`` without a GAP → linear head)."""
        return self.predict_with_cams(batch)[1]
