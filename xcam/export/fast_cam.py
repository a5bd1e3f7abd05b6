"""The ONNX export wrapper with the exact all-class Grad-CAM in the graph (math in
:mod:`xcam.core.cam_math`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xcam.core.cam_math import raw_cams

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from xcam.core.model import XCamModel


class AllClassCamGraph:
    """Factory for the export wrapper (a module built lazily so importing this file needs no torch)."""

    @staticmethod
    def build(model: XCamModel, with_cams: bool = True) -> torch.nn.Module:
        """``x → (logits, probabilities[, cams])`` with calibration (sigmoid + op_norm) in-graph."""
        from torch import nn

        head = model.gap_linear_head() if with_cams else None
        maps = model.class_map_head() if with_cams and head is None else None  # PYLON: the class-map CAMs

        class _Graph(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                if head is not None:
                    self.features, self.linear = head

            def forward(self, x):  # type: ignore[no-untyped-def]
                if maps is not None:
                    logits, cams = maps[1](x)
                    return logits, self.model.calibrate(logits), cams
                if head is None:
                    logits = self.model(x)
                    return logits, self.model.calibrate(logits)
                a = self.features(x)
                logits = self.linear(a.mean(dim=(2, 3)))
                return logits, self.model.calibrate(logits), raw_cams(a, self.linear.weight)

        return _Graph().eval()


