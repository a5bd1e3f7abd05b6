"""Typed, frozen registrations that plugins yield from their hooks.

Modelled on conda's plugin system: each hook returns an iterable of one dataclass type, the host
checks names for conflicts, and nothing here imports torch (``build`` callables import it when
they are called). :class:`WeightVariant` lives in :mod:`xcam.core.variants` and is re-exported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from xcam.core.variants import WeightVariant

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from xcam.core.model import XCamModel
    from xcam.core.weights import WeightsStore


@dataclass(frozen=True)
class BuildRequest:
    """What a classifier's builder receives."""

    variant: WeightVariant
    store: "WeightsStore"
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    random_init: bool = False  # build the architecture with random weights (tests, benchmarks)


@dataclass(frozen=True)
class ClassifierRegistration:
    """A classifier plugin.

    ``target_layer`` is a dotted attribute path inside the built :class:`XCamModel` whose output
    feeds the CAM methods. ``preprocessing`` names an entry of :mod:`xcam.core.preprocess`.
    ``gap_linear_head`` is true when the head is global-average-pool → linear, which allows the
    exact one-pass all-class Grad-CAM (see ``xcam.export``).
    """

    name: str
    labels: tuple[str, ...]
    input_size: int
    target_layer: str
    variants: tuple[WeightVariant, ...]
    builder: Callable[[BuildRequest], "XCamModel"]
    default_variant: str | None = None
    preprocessing: str = "xrv"
    description: str = ""
    gap_linear_head: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*", self.name):
            # output files are named {model}_{pathology}; `xcam bbox` splits them at the first "_"
            raise ValueError(f"classifier name {self.name!r}: use letters, digits, '-' and '.' only (no '_' or spaces)")
        if not self.variants:
            raise ValueError(f"classifier {self.name!r} declares no weight variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"classifier {self.name!r} declares a weight variant twice")
        if self.default_variant is not None and self.default_variant not in names:
            raise ValueError(f"classifier {self.name!r}: default variant {self.default_variant!r} not declared")

    @property
    def default(self) -> WeightVariant:
        return self.variant(self.default_variant)

    def variant(self, name: str | None) -> WeightVariant:
        """The variant called ``name`` (``None``: the default); accepts a unique suffix such as ``nih``."""
        from xcam.core.errors import PluginError

        if name is None:
            name = self.default_variant or self.variants[0].name
        if name.endswith((".pt", ".pth", ".ckpt")) or "/" in name:
            from pathlib import Path

            path = Path(name).expanduser().resolve()
            if not path.is_file():
                raise PluginError(f"{name}: weights file not found")
            return WeightVariant(name=str(path), filename=str(path), description="local checkpoint")
        for v in self.variants:
            if v.name == name:
                return v
        matches = [v for v in self.variants if v.name.endswith("-" + name)]
        if len(matches) == 1:
            return matches[0]
        valid = ", ".join(v.name for v in self.variants)
        from pathlib import Path

        hint = (f" ({name} is a file: name a checkpoint with a path, e.g. ./{name}, or a .pt/.pth/.ckpt suffix)"
                if Path(name).is_file() else "")
        raise PluginError(f"classifier {self.name!r} has no weights {name!r}; valid: {valid}{hint}")

    def variant_labels(self, variant: WeightVariant) -> tuple[str, ...]:
        return variant.labels if variant.labels is not None else self.labels

    def build(
        self,
        variant: str | None = None,
        *,
        store: "WeightsStore | None" = None,
        device: str = "cpu",
        options: Mapping[str, Any] | None = None,
        random_init: bool = False,
    ) -> "XCamModel":
        """Build the model with the named weights (imports torch now, not before)."""
        from xcam.core.weights import WeightsStore

        request = BuildRequest(
            variant=self.variant(variant),
            store=store or WeightsStore.from_env(),
            device=device,
            options=dict(options or {}),
            random_init=random_init,
        )
        model = self.builder(request)
        return model.to(device).eval()


@dataclass(frozen=True)
class CamMethodRegistration:
    """A class-activation-map method.

    ``compute(model, batch, class_indices, **options)`` gets a float tensor batch ``[B, C, H, W]``
    in model input space and one class index per image, and returns a float32 numpy array
    ``[B, h, w]`` in [0, 1] at the model's input resolution. Options: ``target_layer`` (a dotted
    module path inside the model; default its declared target layer — the chain passes it to fuse
    the CAMs of several layers), ``aug_smooth``,
    ``eigen_smooth`` (methods may ignore what they cannot use).
    """

    name: str
    compute: Callable[..., "np.ndarray"]
    description: str = ""
    needs_gradients: bool = True


@dataclass(frozen=True)
class MaskExtractorRegistration:
    """Turns a float CAM in [0, 1] into a boolean mask: ``extract(cam, **options) -> bool array``."""

    name: str
    extract: Callable[..., "np.ndarray"]
    description: str = ""


@dataclass(frozen=True)
class ScoredBox:
    """A box in pixel coordinates of some image grid: ``x, y`` top-left, ``width, height``."""

    x: float
    y: float
    width: float
    height: float
    score: float = 1.0

    @property
    def x2(self) -> float:
        return self.x + self.width

    @property
    def y2(self) -> float:
        return self.y + self.height


@dataclass(frozen=True)
class BboxStrategyRegistration:
    """Turns a mask (and optionally the CAM for scores) into boxes: ``boxes(mask, cam=None, **options)``."""

    name: str
    boxes: Callable[..., Sequence[ScoredBox]]
    description: str = ""


@dataclass(frozen=True)
class EnsemblerRegistration:
    """Combines several models' outputs.

    ``combine_probabilities(per_model: Sequence[Mapping[label, prob]], weights) -> dict[label, prob]``
    works by label name over the union of labels; ``combine_cams(cams: Sequence[array], weights)``
    gets normalized CAMs already in one grid and returns one map in [0, 1].
    """

    name: str
    combine_probabilities: Callable[..., dict[str, float]]
    combine_cams: Callable[..., "np.ndarray"]
    description: str = ""


__all__ = ["WeightVariant", "BuildRequest", "ClassifierRegistration", "CamMethodRegistration",
           "MaskExtractorRegistration", "ScoredBox", "BboxStrategyRegistration", "EnsemblerRegistration",
           "REGISTRATION_TYPES"]

REGISTRATION_TYPES: dict[str, type] = {
    "xcam_classifiers": ClassifierRegistration,
    "xcam_cam_methods": CamMethodRegistration,
    "xcam_mask_extractors": MaskExtractorRegistration,
    "xcam_bbox_strategies": BboxStrategyRegistration,
    "xcam_ensemblers": EnsemblerRegistration,
}
