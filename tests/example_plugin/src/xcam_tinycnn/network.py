"""The network: three conv blocks, global average pooling, a linear head (PyTorch)."""

from __future__ import annotations

import torch
from torch import nn

from xcam.core.model import XCamModel


class TinyCNN(XCamModel):
    """A small CNN on xrv-scaled 1-channel input; the CAM target is the last conv block."""

    target_layer_path = "features.2"

    def __init__(self, labels: tuple[str, ...], input_size: int = 128) -> None:
        super().__init__(labels, input_size)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, 16), block(16, 32), block(32, 64))
        self.head = nn.Linear(64, len(labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x / 1024.0)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
