"""MobileNetV3 (large or small) with a 1-channel stem and a multi-label head.

Trained by ``xcam train``; its checkpoints are plain dicts (``model_state``, ``labels``, ``arch``,
``img_size``, ``preprocessing``, ``cam_layer``, ...), loaded with ``weights_only=True``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import nn

from xcam.core.model import XCamModel

ARCHS = ("mobilenet_v3_large", "mobilenet_v3_small")
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)


def build_mobilenet(arch: str, num_classes: int, pretrained: bool = False, bn_momentum: float = 0.1) -> nn.Module:
    """torchvision MobileNetV3 with a 1-channel stem.

    BatchNorm momentum is raised from torchvision's 0.01 to 0.1: with 0.01 the running statistics
    lag far behind the weights in short CPU runs and evaluation-mode outputs collapse to chance.
    With ``pretrained`` the ImageNet stem is averaged over RGB into one channel.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    factory = getattr(torchvision.models, arch)
    weights = "DEFAULT" if pretrained else None
    net = factory(weights=weights)
    stem = net.features[0][0]
    new_stem = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
    if pretrained:
        with torch.no_grad():
            new_stem.weight.copy_(stem.weight.mean(dim=1, keepdim=True))
    net.features[0][0] = new_stem
    last = net.classifier[-1]
    net.classifier[-1] = nn.Linear(last.in_features, num_classes)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = bn_momentum
    return net


class MobileNetV3(XCamModel):
    """MobileNetV3 classifier. Default CAM target ``net.features.16`` (last conv block, large)."""

    def __init__(
        self,
        labels: Sequence[str] = NIH_LABELS,
        arch: str = "mobilenet_v3_large",
        input_size: int = 224,
        preprocessing: str = "xrv",
        cam_layer: str | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__(labels, input_size, None)
        self.arch = arch
        self.preprocessing = preprocessing
        self.net = build_mobilenet(arch, len(labels), pretrained=pretrained)
        self.target_layer_path = cam_layer or f"net.features.{len(self.net.features) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocessing == "xrv":
            x = x / 1024.0  # [-1024, 1024] → [-1, 1]: keeps activations in a trainable range
        return self.net(x)

    def checkpoint_object(self) -> object:
        return {
            "model_state": self.state_dict(),
            "labels": list(self.labels),
            "arch": self.arch,
            "img_size": self.input_size,
            "preprocessing": self.preprocessing,
            "cam_layer": self.target_layer_path,
        }
