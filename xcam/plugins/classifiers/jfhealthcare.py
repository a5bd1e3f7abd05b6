"""JF Healthcare CheXpert baseline (DenseNet121, 512 px, 5 pathologies), via torchxrayvision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xcam.core.types import BuildRequest, ClassifierRegistration, WeightVariant
from xcam.plugins.classifiers.xrv_catalog import JF_FILENAME, JF_LABELS, RELEASE

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel


def build(request: BuildRequest) -> "XCamModel":
    from xcam.nets.jf import JFHealthcare

    model = JFHealthcare(JF_LABELS)
    model.name, model.variant = "jfhealthcare", request.variant.name
    if not request.random_init:
        path = request.store.resolve(request.variant)
        state, digest = request.store.load_state_dict(path, request.variant)
        model.model.load_state_dict(state, strict=True)
        model.weights_path, model.weights_sha256 = str(path), digest
    return model


REGISTRATION = ClassifierRegistration(
    name="jfhealthcare",
    labels=JF_LABELS,
    input_size=512,
    target_layer="model.backbone",
    variants=(
        WeightVariant(
            name="jfhealthcare-chexpert",
            filename=JF_FILENAME,
            url=RELEASE + JF_FILENAME,
            training_data="CheXpert (Stanford)",
            description="JF Healthcare DenseNet121 baseline (Ye et al. 2020), top of the CheXpert leaderboard",
        ),
    ),
    builder=build,
    description="JF Healthcare CheXpert baseline, 512 px, 5 pathologies",
)
