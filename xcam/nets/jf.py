"""The JF Healthcare CheXpert baseline (DenseNet121, 512 px, 5 labels) as an :class:`XCamModel`.

torchxrayvision's wrapper builds the network from a config that says ``pretrained: true``,
which fetches ImageNet DenseNet weights it then overwrites; here the same network is built from
that config with ``pretrained`` off, so construction never touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn


def build_jf_network() -> nn.Module:
    """JF Healthcare's ``Classifier`` from xrv's package, without the ImageNet fetch."""
    import torchxrayvision.baseline_models.jfhealthcare as jf  # puts its folder on sys.path

    config_path = Path(jf.__file__).parent / "config" / "example.json"
    cfg = json.loads(config_path.read_text())
    cfg["pretrained"] = False

    class Struct:
        def __init__(self, **entries: object) -> None:
            self.__dict__.update(entries)

    return jf.classifier.Classifier(Struct(**cfg))


from xcam.core.model import XCamModel  # noqa: E402


class JFHealthcare(XCamModel):
    """Input: xrv-scaled 1-channel 512 px; the network sees it repeated to 3 channels and /512,
    as in torchxrayvision. CAM target ``model.backbone`` (1024×16×16 at 512 px)."""

    target_layer_path = "model.backbone"

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__(labels, 512, None)
        self.model = build_jf_network()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat(1, 3, 1, 1) / 512.0
        logits, _ = self.model(x)
        return torch.cat(logits, 1)

    def checkpoint_object(self) -> object:
        return self.model.state_dict()
