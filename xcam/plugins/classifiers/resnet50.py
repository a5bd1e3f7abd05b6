"""torchxrayvision ResNet50 (``resnet50-res512-all``, 512 px)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xcam.core.types import BuildRequest, ClassifierRegistration, WeightVariant
from xcam.plugins.classifiers.xrv_catalog import RELEASE, RESNET_VARIANTS, XRV_LABELS

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel


def build(request: BuildRequest) -> "XCamModel":
    from xcam.nets.xrv import XrvResNet50, xrv_op_threshs

    variant = request.variant
    model = XrvResNet50(variant.labels or XRV_LABELS, xrv_op_threshs(variant.name))
    model.name, model.variant = "resnet50", variant.name
    if not request.random_init:
        path = request.store.resolve(variant)
        state, digest = request.store.load_state_dict(path, variant)
        model.model.load_state_dict(state, strict=True)
        model.weights_path, model.weights_sha256 = str(path), digest
    return model


REGISTRATION = ClassifierRegistration(
    name="resnet50",
    labels=XRV_LABELS,
    input_size=512,
    target_layer="model.layer4",
    variants=tuple(
        WeightVariant(name=name, filename=filename, url=RELEASE + filename, labels=labels, training_data=data,
                      description=f"ResNet50 at 512 px trained on {data}")
        for name, (filename, labels, data) in RESNET_VARIANTS.items()
    ),
    builder=build,
    default_variant="resnet50-res512-all",
    description="torchxrayvision ResNet50, 512 px, 18 outputs (16 calibrated)",
    gap_linear_head=True,
)
