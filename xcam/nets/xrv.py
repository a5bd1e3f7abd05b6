"""torchxrayvision DenseNet121 and ResNet50 as :class:`XCamModel` (raw logits out).

Resizing stays outside the network (xrv resizes in-graph, which ONNX export cannot take); the
forward pass is otherwise xrv's: features → ReLU → global average pool → linear.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchvision
import torchxrayvision as xrv
from torch import nn

from xcam.core.model import XCamModel


def xrv_op_threshs(variant: str) -> list[float] | None:
    entry = xrv.models.model_urls.get(variant, {})
    return list(entry["op_threshs"]) if "op_threshs" in entry else None


class XrvDenseNet(XCamModel):
    """DenseNet121 from torchxrayvision. CAM target ``head_relu``: ReLU(norm5), 1024×7×7 at 224 px,
    the map that is average-pooled into the linear classifier."""

    target_layer_path = "head_relu"

    def __init__(self, labels: Sequence[str], op_threshs: Sequence[float] | None) -> None:
        super().__init__(labels, 224, op_threshs)
        self.backbone = xrv.models.DenseNet(weights=None, num_classes=len(labels))
        self.head_relu = nn.ReLU(inplace=False)

    def load_backbone(self, state: dict) -> None:
        state = {k: v for k, v in state.items() if k != "op_threshs"}
        self.backbone.load_state_dict(state, strict=True)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_relu(self.backbone.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(self.feature_map(x), 1), 1)
        return self.backbone.classifier(pooled)

    def checkpoint_object(self) -> object:
        return self.backbone  # xrv publishes DenseNet weights as whole pickled modules

    def gap_linear_head(self) -> tuple[nn.Module, nn.Linear]:
        return _FeatureMap(self), self.backbone.classifier


class XrvResNet50(XCamModel):
    """ResNet50 from torchxrayvision (512 px). CAM target ``model.layer4`` (2048×16×16 at 512 px),
    whose output (already ReLU'd) is average-pooled into ``model.fc``."""

    target_layer_path = "model.layer4"

    def __init__(self, labels: Sequence[str], op_threshs: Sequence[float] | None) -> None:
        super().__init__(labels, 512, op_threshs)
        self.model = torchvision.models.resnet50(num_classes=len(labels), weights=None)
        self.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.fc(torch.flatten(self.model.avgpool(self.feature_map(x)), 1))

    def checkpoint_object(self) -> object:
        return self.model.state_dict()  # xrv publishes the torchvision ResNet's state dict

    def gap_linear_head(self) -> tuple[nn.Module, nn.Linear]:
        return _FeatureMap(self), self.model.fc


class _FeatureMap(nn.Module):
    """``x → model.feature_map(x)`` as a module (for export of the fast CAM graph)."""

    def __init__(self, model: XCamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.feature_map(x)
