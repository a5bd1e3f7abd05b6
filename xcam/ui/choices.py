"""Which models and weights the page offers and selects when it opens (no Streamlit, no torch).

Each model's weight menu lists its registered variants (marked present or missing), the
checkpoints given with ``xcam ui --weights`` and, for ``mobilenetv3``, the checkpoint ``xcam demo``
trained (:func:`xcam.core.demo_assets.find_demo`). The first present choice is selected, so real
weight files win over the demo model. When none of the default models has a weight file, the page
opens with ``mobilenetv3`` and the demo model instead, so a machine that never downloaded weights
works after one ``xcam demo --fast``; with neither, :data:`NO_WEIGHTS_HINT` says how to make one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from xcam.core.demo_assets import DEMO_COMMAND
from xcam.ui.settings import DEFAULT_CHECKPOINT_MODEL, UiSettings

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.demo_assets import DemoAssets
    from xcam.core.types import ClassifierRegistration

DEMO_MODEL = DEFAULT_CHECKPOINT_MODEL
"""The classifier ``xcam demo`` trains (its checkpoint is offered as this model's weights)."""
DEMO_LABEL = "demo model (trained by xcam demo)"
NO_WEIGHTS_HINT = (f"No weights for the selected models on this machine and no demo model yet: run "
                   f"`{DEMO_COMMAND}` (about a minute on 2 CPU cores, offline) to train one with example "
                   f"images, then reload this page.")


@dataclass(frozen=True)
class VariantChoice:
    """One weight choice offered for a model: a registered variant or a checkpoint path."""

    value: str  # passed to ``load_classifier`` as the variant
    label: str  # shown in the selectbox
    present: bool
    demo: bool = False  # the checkpoint ``xcam demo`` trained


def variant_choices(registration: "ClassifierRegistration", s: UiSettings, preferred: str | None = None,
                    demo: "DemoAssets | None" = None) -> list[VariantChoice]:
    """The model's registered variants (``preferred``, else the default, first; marked present or
    missing), the checkpoints given for it on the command line and, for :data:`DEMO_MODEL`, the
    demo's checkpoint (none of those with ``--random-weights``)."""
    from xcam.core.errors import XcamError
    from xcam.core.weights import WeightsStore

    files = WeightsStore.from_env(s.weights_dir)
    choices: list[VariantChoice] = []
    try:
        default = registration.variant(preferred).name
    except XcamError:
        default = registration.default.name
    ordered = sorted(registration.variants, key=lambda v: v.name != default)
    for v in ordered:
        present = files.find(v) is not None
        mark = "random weights" if s.random_weights else ("✓ file present" if present else "file missing")
        choices.append(VariantChoice(v.name, f"{v.name} ({mark})", present or s.random_weights))
    if s.random_weights:
        return choices
    given = s.checkpoints_for(registration.name)
    for path in given:
        choices.append(VariantChoice(path, f"checkpoint {path}", True))
    if demo is not None and registration.name.lower() == DEMO_MODEL and str(demo.checkpoint) not in given:
        choices.append(VariantChoice(str(demo.checkpoint), DEMO_LABEL, True, demo=True))
    return choices


def default_index(choices: Sequence[VariantChoice]) -> int:
    """The choice selected when the menu appears: the first present one (real files come before
    checkpoints and the demo model), else the first."""
    return next((i for i, c in enumerate(choices) if c.present), 0)


def default_models(names: Sequence[str], requested: Sequence[str], configured: str | None,
                   has_weights: Callable[[str], bool], demo: "DemoAssets | None" = None,
                   random_weights: bool = False) -> list[str]:
    """The models selected when the page opens: ``--model`` (the installed ones), else plugins.toml's
    classifier (else the first installed); when none of those has weights but the demo model
    exists, :data:`DEMO_MODEL` (whose menu then selects the demo checkpoint)."""
    known = [m for m in requested if m in names]
    if known:
        return known
    default = [configured] if configured in names else list(names[:1])
    if (demo is not None and not random_weights and DEMO_MODEL in names
            and not any(has_weights(m) for m in default)):
        return [DEMO_MODEL]
    return default


def needs_demo_hint(offered: Sequence[Sequence[VariantChoice]], demo: "DemoAssets | None",
                    random_weights: bool = False) -> bool:
    """Show :data:`NO_WEIGHTS_HINT`: models are selected, none of them has any weights here, and
    there is no demo model (``offered``: every selected model's weight choices)."""
    if random_weights or demo is not None or not offered:
        return False
    return not any(c.present for choices in offered for c in choices)
