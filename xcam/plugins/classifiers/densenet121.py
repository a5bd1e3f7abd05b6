"""torchxrayvision DenseNet121 (224 px, 18 outputs), all seven ``densenet121-res224-*`` variants."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xcam.core.types import BuildRequest, ClassifierRegistration, WeightVariant
from xcam.plugins.classifiers.xrv_catalog import DENSENET_VARIANTS, RELEASE, XRV_LABELS

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel


def build(request: BuildRequest) -> "XCamModel":
    from xcam.nets.xrv import XrvDenseNet, xrv_op_threshs

    variant = request.variant
    labels = variant.labels or XRV_LABELS
    model = XrvDenseNet(labels, xrv_op_threshs(variant.name))
    model.name, model.variant = "densenet121", variant.name
    if not request.random_init:
        path = request.store.resolve(variant)
        state, digest = request.store.load_state_dict(path, variant)
        model.load_backbone(state)
        model.weights_path, model.weights_sha256 = str(path), digest
    return model


REGISTRATION = ClassifierRegistration(
    name="densenet121",
    labels=XRV_LABELS,
    input_size=224,
    target_layer="head_relu",
    variants=tuple(
        WeightVariant(name=name, filename=filename, url=RELEASE + filename, labels=labels, training_data=data,
                      description=f"DenseNet121 at 224 px trained on {data}")
        for name, (filename, labels, data) in DENSENET_VARIANTS.items()
    ),
    builder=build,
    default_variant="densenet121-res224-all",
    description="torchxrayvision DenseNet121, 224 px, up to 18 pathologies",
    gap_linear_head=True,
)
