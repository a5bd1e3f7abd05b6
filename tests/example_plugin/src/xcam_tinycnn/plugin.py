"""The plugin module named by the ``xcam`` entry point: registers the ``tinycnn`` classifier."""

from __future__ import annotations

from typing import Iterable

from xcam.core.hookspecs import hookimpl
from xcam.core.types import BuildRequest, ClassifierRegistration, WeightVariant

LABELS = ("Nodule", "Mass", "Effusion")


def build(request: BuildRequest):
    """Build the network; load weights unless random initialisation was asked for."""
    from xcam_tinycnn.network import TinyCNN  # torch is imported only now

    model = TinyCNN(LABELS, input_size=128)
    model.name, model.variant = "tinycnn", request.variant.name
    if not request.random_init:
        path = request.store.resolve(request.variant)
        state, digest = request.store.load_state_dict(path, request.variant)
        model.load_state_dict(state)
        model.weights_path, model.weights_sha256 = str(path), digest
    return model


@hookimpl
def xcam_classifiers() -> Iterable[ClassifierRegistration]:
    yield ClassifierRegistration(
        name="tinycnn",
        labels=LABELS,
        input_size=128,
        target_layer="features.2",
        variants=(
            WeightVariant(
                name="tinycnn-demo",
                filename="tinycnn-demo.pt",
                url=None,
                training_data="synthetic phantoms",
                description="Tiny CNN example weights",
            ),
        ),
        builder=build,
        description="Example third-party classifier (xcam plugin tutorial)",
        gap_linear_head=False,
    )
