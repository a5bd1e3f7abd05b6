""":class:`WeightVariant`: one set of weights for a classifier.

Its own module so that :mod:`xcam.core.types` (registrations, whose ``build`` uses the weights
store) and :mod:`xcam.core.weights` (the store, which resolves variants) both import it without
importing each other. ``from xcam.core.types import WeightVariant`` keeps working (re-export).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightVariant:
    """One set of weights for a classifier: what travels with the file.

    ``labels``/``op_threshs`` override the classifier's defaults when this variant predicts a
    different label set; an empty label ``""`` marks an output the weights were not trained on.
    ``filename`` is the name the file has on disk (torchxrayvision's cache uses the URL basename).
    """

    name: str
    filename: str
    url: str | None = None
    description: str = ""
    training_data: str = ""
    labels: tuple[str, ...] | None = None
    op_threshs: tuple[float, ...] | None = None
    sha256: str | None = None
