"""MobileNetV3 (large or small) with a 1-channel stem and a multi-label head.

Trained by ``xcam train``; its checkpoints are plain dicts (``model_state``, ``labels``, ``arch``,
``img_size``, ``preprocessing``, ``cam_layer``, ...), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from xcam.core.labels import NIH_LABELS
from xcam.core.model import XCamModel
from xcam.nets import pylon

ARCHS = ("mobilenet_v3_large", "mobilenet_v3_small")
HEADS = ("mlp", "lse", "pylon")


class LSEPool(nn.Module):
    """Log-sum-exp pooling of class score maps ``[B, C, H, W] → [B, C]`` (Wang et al. 2017).

    ``r`` moves it between the average (r → 0) and the maximum (r → ∞): a small lesion's score is
    not diluted by the rest of the image as it is by average pooling."""

    def __init__(self, r: float = 5.0) -> None:
        super().__init__()
        self.r = float(r)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(2)
        return (torch.logsumexp(self.r * flat, dim=2) - math.log(flat.shape[2])) / self.r


def build_mobilenet(arch: str, num_classes: int, pretrained: bool = False, bn_momentum: float = 0.1,
                    head: str = "mlp", dilated: bool = False) -> nn.Module:
    """torchvision MobileNetV3 with a 1-channel stem.

    ``head="mlp"`` keeps torchvision's head (average pool → 1024-unit MLP) with a new last layer;
    ``head="lse"`` replaces it by a 1×1 convolution giving one score map per class (pooled by
    :class:`LSEPool` in :class:`MobileNetV3`); ``head="pylon"`` by a feature-pyramid decoder
    (:mod:`xcam.nets.pylon`) giving class score maps at stride 8. ``dilated`` makes the last stage dilated instead of
    strided (torchvision's option), so the final feature map is 14×14 rather than 7×7 at 224 px.
    BatchNorm momentum is raised from torchvision's 0.01 to 0.1: with 0.01 the running statistics
    lag far behind the weights in short CPU runs and evaluation-mode outputs collapse to chance.
    With ``pretrained`` the ImageNet stem is averaged over RGB into one channel.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    factory = getattr(torchvision.models, arch)
    weights = "DEFAULT" if pretrained else None
    net = factory(weights=weights, dilated=dilated)
    stem = net.features[0][0]
    new_stem = nn.Conv2d(1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
    if pretrained:
        with torch.no_grad():
            new_stem.weight.copy_(stem.weight.mean(dim=1, keepdim=True))
    net.features[0][0] = new_stem
    if head == "lse":
        net.avgpool = nn.Identity()
        net.classifier = nn.Conv2d(net.features[-1].out_channels, num_classes, kernel_size=1)
    elif head == "pylon":
        net.avgpool = nn.Identity()
        net.classifier = pylon.build_decoder(arch, net.features, num_classes)
    else:
        last = net.classifier[-1]
        net.classifier[-1] = nn.Linear(last.in_features, num_classes)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = bn_momentum
    return net


LOCALIZATION_LAYERS: dict[str, tuple[str, ...]] = {
    # LayerCAM fused over a 28×28 and a 14×14 block localized best on held-out phantoms, for the mlp
    # head and for the lse head (better than its own 7×7 score map: docs/evaluation.md "What localizes
    # best" and "Round 2"); chosen by the chain's cam_layers = "auto".
    "mobilenet_v3_small": ("net.features.3", "net.features.5"),
}


class MobileNetV3(XCamModel):
    """MobileNetV3 classifier. Default CAM target: the last feature block.

    With ``head="lse"`` the logits are LSE-pooled class score maps, so Grad-CAM on the last feature
    block is exactly the (rectified) score map of the class. With ``head="pylon"`` the logits pool
    the decoder's stride-8 class maps (``pylon_pool``: ``lse``, the default, or ``max``); those maps are the
    model's in-graph CAM (:meth:`class_map_head`) and its localization layer."""

    def __init__(
        self,
        labels: Sequence[str] = NIH_LABELS,
        arch: str = "mobilenet_v3_large",
        input_size: int = 224,
        preprocessing: str = "xrv",
        cam_layer: str | None = None,
        pretrained: bool = False,
        head: str = "mlp",
        dilated: bool = False,
        lse_r: float = 5.0,
        pylon_pool: str = "lse",
    ) -> None:
        super().__init__(labels, input_size, None)
        self.arch = arch
        self.preprocessing = preprocessing
        self.head, self.dilated = head, bool(dilated)
        self.net = build_mobilenet(arch, len(labels), pretrained=pretrained, head=head, dilated=dilated)
        self.pool: nn.Module | None = LSEPool(lse_r) if head == "lse" else None
        if head == "pylon":
            self.pool = pylon.MapPool(pylon_pool, lse_r)
        default_layer = pylon.CLASS_MAP_LAYER if head == "pylon" else f"net.features.{len(self.net.features) - 1}"
        self.target_layer_path = cam_layer or default_layer
        self.localization_layers = {"mlp": LOCALIZATION_LAYERS.get(arch, ()), "lse": LOCALIZATION_LAYERS.get(arch, ()),
                                    "pylon": (pylon.CLASS_MAP_LAYER,)}[head]

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x / 1024.0 if self.preprocessing.startswith("xrv") else x  # [-1024, 1024] → [-1, 1]: a trainable range

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The pylon head's raw class score maps ``[B, C, h, w]`` (stride 8 of the input)."""
        taps = pylon.pyramid_taps(self.net.features, self._input(x), pylon.PYRAMID_TAPS[self.arch])
        return self.net.classifier(taps)

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and raw class maps from one pass (pylon head)."""
        maps = self.class_maps(x)
        return self.pool(maps), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "pylon":
            return self.logits_and_maps(x)[0]
        x = self._input(x)
        if self.pool is not None:
            return self.pool(self.net.classifier(self.net.features(x)))
        return self.net(x)

    def logits_and_cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and every class's CAM (:func:`xcam.nets.pylon.class_cams`, not normalized), one pass."""
        logits, maps = self.logits_and_maps(x)
        return logits, pylon.class_cams(maps)

    def class_map_head(self) -> tuple[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] | None:
        """Pylon head: ``(class-map layer, x → (logits, cams))``: the rectified class maps, which are
        Grad-CAM at that layer (a map negative everywhere: its relative evidence)."""
        return (pylon.CLASS_MAP_LAYER, self.logits_and_cams) if self.head == "pylon" else None

    def checkpoint_object(self) -> object:
        return {
            "model_state": self.state_dict(),
            "labels": list(self.labels),
            "arch": self.arch,
            "img_size": self.input_size,
            "preprocessing": self.preprocessing,
            "cam_layer": self.target_layer_path,
            "head": self.head,
            "dilated": self.dilated,
            "lse_r": self.pool.r if self.pool is not None else None,
            "pylon_pool": self.pool.kind if isinstance(self.pool, pylon.MapPool) else None,
        }
