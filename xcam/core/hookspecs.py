"""The hooks a plugin implements. Each returns an iterable of typed registrations.

A plugin is any module (or object) with functions decorated by :data:`hookimpl`, registered
through the ``xcam`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.xcam]
    my_plugin = "my_package.plugin"
"""

from __future__ import annotations

from typing import Iterable

import pluggy

from xcam.core.types import (
    BboxStrategyRegistration,
    CamMethodRegistration,
    ClassifierRegistration,
    EnsemblerRegistration,
    MaskExtractorRegistration,
)

PROJECT_NAME = "xcam"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class XcamSpecs:
    """The hook specifications of xcam."""

    @hookspec
    def xcam_classifiers(self) -> Iterable[ClassifierRegistration]:
        """Register classifiers.

        Example (a complete plugin module)::

            import xcam
            from xcam.core.hookspecs import hookimpl
            from xcam.core.types import ClassifierRegistration, WeightVariant

            LABELS = ("Nodule", "Mass")

            def build(request):
                import torch
                from xcam.core.model import SimpleCNNModel  # any XCamModel subclass
                model = SimpleCNNModel(labels=LABELS, input_size=64)
                if not request.random_init:
                    path = request.store.resolve(request.variant)
                    model.load_state_dict(request.store.load_state_dict(path))
                return model

            @hookimpl
            def xcam_classifiers():
                yield ClassifierRegistration(
                    name="tiny",
                    labels=LABELS,
                    input_size=64,
                    target_layer="features.2",
                    variants=(WeightVariant(name="tiny-v1", filename="tiny-v1.pt"),),
                    builder=build,
                )
        """

    @hookspec
    def xcam_cam_methods(self) -> Iterable[CamMethodRegistration]:
        """Register class-activation-map methods.

        Example::

            import numpy as np
            from xcam.core.hookspecs import hookimpl
            from xcam.core.types import CamMethodRegistration

            def input_times_gradient(model, batch, class_indices, **options):
                import torch
                x = batch.clone().requires_grad_(True)
                logits = model(x)
                picked = logits[torch.arange(len(x)), torch.as_tensor(class_indices)]
                (grad,) = torch.autograd.grad(picked.sum(), x)
                cam = (grad * x).sum(1).clamp(min=0).detach().numpy()
                cam -= cam.min(axis=(1, 2), keepdims=True)
                return (cam / np.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-8)).astype("float32")

            @hookimpl
            def xcam_cam_methods():
                yield CamMethodRegistration(name="input-x-grad", compute=input_times_gradient)
        """

    @hookspec
    def xcam_mask_extractors(self) -> Iterable[MaskExtractorRegistration]:
        """Register mask extractors (float CAM in [0, 1] → boolean mask).

        Example::

            from xcam.core.hookspecs import hookimpl
            from xcam.core.types import MaskExtractorRegistration

            @hookimpl
            def xcam_mask_extractors():
                yield MaskExtractorRegistration(
                    name="half-max",
                    extract=lambda cam, **options: cam >= 0.5 * cam.max(),
                )
        """

    @hookspec
    def xcam_bbox_strategies(self) -> Iterable[BboxStrategyRegistration]:
        """Register bounding-box strategies (boolean mask → scored boxes).

        Example::

            import numpy as np
            from xcam.core.hookspecs import hookimpl
            from xcam.core.types import BboxStrategyRegistration, ScoredBox

            def whole_mask(mask, cam=None, **options):
                ys, xs = np.nonzero(mask)
                if len(xs) == 0:
                    return []
                return [ScoredBox(xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)]

            @hookimpl
            def xcam_bbox_strategies():
                yield BboxStrategyRegistration(name="whole", boxes=whole_mask)
        """

    @hookspec
    def xcam_ensemblers(self) -> Iterable[EnsemblerRegistration]:
        """Register ensemblers (several models' probabilities and CAMs → one).

        Example::

            import numpy as np
            from xcam.core.hookspecs import hookimpl
            from xcam.core.types import EnsemblerRegistration

            def geometric_mean(per_model, weights=None):
                labels = sorted({label for probs in per_model for label in probs})
                return {
                    label: float(np.exp(np.mean([np.log(max(p[label], 1e-8)) for p in per_model if label in p])))
                    for label in labels
                }

            @hookimpl
            def xcam_ensemblers():
                yield EnsemblerRegistration(
                    name="geometric",
                    combine_probabilities=geometric_mean,
                    combine_cams=lambda cams, weights=None: np.exp(np.mean(np.log(np.stack(cams) + 1e-8), 0)),
                )
        """
