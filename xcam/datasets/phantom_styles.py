"""Named phantom styles: which lesion renderings, acquisition variation and distractors to draw.

A :class:`Style` is data only (drawing lives in :mod:`xcam.datasets.phantom_styled`). ``classic``
is the generator's original output, bit for bit; the others shift appearance and shape so that a
method chosen on some styles can be reported on a style never used for a choice:

- ``varied``: the classic renderings mixed with a first set of new ones (nodules 3-30 mm,
  spiculated masses, a lateral pneumothorax band, a tall meniscus, ...), wide acquisition
  variation, body habitus and occasional distractors;
- ``portable``: an AP bedside look: low contrast, fog, noise and blur, larger rotation, shallow
  inspiration, a magnified heart, more broad patients, ECG leads, lines, pacemakers and burned-in
  text; supine renderings (layering effusion, deep-sulcus pneumothorax);
- ``alt``: only renderings that ``varied`` never draws (calcified and ground-glass nodules,
  cavitary and irregular masses, large or deep-sulcus pneumothorax, ...), with edge-enhanced,
  heel-effect processing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from xcam.core.errors import UsageError

Range = tuple[float, float]

# Rendering names per class (the drawers are in xcam.datasets.phantom_lesions).
RENDERING_NAMES: dict[str, tuple[str, ...]] = {
    "Nodule": ("classic", "sized", "calcified", "ground-glass"),
    "Mass": ("classic", "spiculated", "cavitary", "irregular"),
    "Effusion": ("classic", "meniscus", "layering", "subpulmonic"),
    "Pneumothorax": ("classic", "band", "large", "deep-sulcus"),
    "Atelectasis": ("classic", "linear", "lobar"),
    "Infiltration": ("classic", "consolidation", "reticular", "nodular"),
    "Cardiomegaly": ("classic", "globular", "left-ventricular"),
}
DISTRACTOR_KINDS: tuple[str, ...] = ("ecg", "line", "pacemaker", "marker", "text")
HABITUS: tuple[str, ...] = ("thin", "average", "broad")


@dataclass(frozen=True)
class Style:
    """How a phantom set looks. Ranges are sampled uniformly per image; weights are relative."""

    name: str
    description: str
    view: str = "PA"  # View Position written to Data_Entry_2017.csv
    renderings: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> rendering -> weight
    angle_deg: float = 4.0  # rotation within +-angle_deg
    scale: Range = (0.9, 1.06)
    shift: float = 0.03  # centre offset within +-shift (fraction of the image)
    expo: Range = (2.1, 3.0)
    contrast: Range = (0.92, 1.08)
    bias: Range = (-0.07, 0.03)
    gamma: Range = (0.85, 1.3)
    noise: Range = (0.006, 0.02)
    blur: Range = (0.6, 1.5)
    breath: Range = (-0.02, 0.02)  # > 0: shallower inspiration (diaphragm higher)
    heart_mag: Range = (1.0, 1.0)  # AP magnification of the heart's width
    habitus: dict[str, float] = field(default_factory=lambda: {"average": 1.0})  # per patient
    heel: Range = (0.0, 0.0)  # exposure gradient across the image (fraction)
    sharpen: Range = (0.0, 0.0)  # unsharp-mask amount of the processing
    collimation: float = 0.0  # probability of bright collimation edges
    distractors: dict[str, float] = field(default_factory=dict)  # kind -> probability per image
    text: tuple[str, ...] = ()  # burned-in annotations to choose from ("text" distractor)

    def as_json(self) -> dict:
        """The style as plain JSON data (recorded beside a generated set; tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def _classic() -> Style:
    return Style("classic", "the original generator output (bit-identical to earlier versions)",
                 renderings={k: {"classic": 1.0} for k in RENDERING_NAMES})


STYLES: dict[str, Style] = {
    "classic": _classic(),
    "varied": Style(
        "varied", "classic and a first set of new renderings, wide acquisition variation, habitus, "
        "occasional distractors",
        renderings={
            "Nodule": {"classic": 1.0, "sized": 1.5}, "Mass": {"classic": 1.0, "spiculated": 1.0},
            "Effusion": {"classic": 1.0, "meniscus": 1.0}, "Pneumothorax": {"classic": 1.0, "band": 1.0},
            "Atelectasis": {"classic": 1.0, "linear": 1.0},
            "Infiltration": {"classic": 1.0, "consolidation": 1.0},
            "Cardiomegaly": {"classic": 1.0, "globular": 1.0},
        },
        angle_deg=10.0, scale=(0.82, 1.12), shift=0.05, expo=(1.7, 3.4), contrast=(0.75, 1.25),
        bias=(-0.12, 0.04), gamma=(0.7, 1.6), noise=(0.004, 0.032), blur=(0.5, 2.2), breath=(-0.03, 0.03),
        habitus={"thin": 1.0, "average": 2.0, "broad": 1.0}, heel=(0.0, 0.08), sharpen=(0.0, 0.5),
        collimation=0.15, distractors={"ecg": 0.15, "line": 0.15, "pacemaker": 0.05, "marker": 0.5, "text": 0.2},
        text=("PA", "ERECT", "INSP"),
    ),
    "portable": Style(
        "portable", "AP bedside look: low contrast, fog, noise, rotation, shallow inspiration, magnified "
        "heart, broad patients, ECG leads, lines, pacemakers, burned-in text; supine renderings",
        view="AP",
        renderings={
            "Nodule": {"classic": 1.0, "sized": 1.0}, "Mass": {"classic": 1.0, "irregular": 1.0},
            "Effusion": {"layering": 2.0, "classic": 1.0}, "Pneumothorax": {"deep-sulcus": 1.0, "band": 1.0},
            "Atelectasis": {"classic": 1.0, "lobar": 1.0},
            "Infiltration": {"consolidation": 1.0, "classic": 1.0},
            "Cardiomegaly": {"classic": 1.0, "globular": 1.0},
        },
        angle_deg=12.0, scale=(0.92, 1.2), shift=0.06, expo=(1.5, 2.4), contrast=(0.6, 0.9),
        bias=(0.0, 0.12), gamma=(1.0, 1.6), noise=(0.015, 0.04), blur=(1.2, 2.4), breath=(0.02, 0.06),
        heart_mag=(1.04, 1.12), habitus={"thin": 1.0, "average": 2.0, "broad": 3.0}, heel=(0.03, 0.12),
        sharpen=(0.0, 0.3), collimation=0.5,
        distractors={"ecg": 0.85, "line": 0.6, "pacemaker": 0.2, "marker": 0.9, "text": 1.0},
        text=("PORTABLE", "AP SUPINE", "AP SEMI-ERECT", "BEDSIDE"),
    ),
    "alt": Style(
        "alt", "only renderings that varied never draws, edge-enhanced processing with a heel effect",
        renderings={
            "Nodule": {"calcified": 1.0, "ground-glass": 1.5}, "Mass": {"cavitary": 1.0, "irregular": 1.0},
            "Effusion": {"subpulmonic": 1.0, "layering": 1.0}, "Pneumothorax": {"large": 1.0, "deep-sulcus": 1.0},
            "Atelectasis": {"lobar": 1.0}, "Infiltration": {"reticular": 1.0, "nodular": 1.0},
            "Cardiomegaly": {"left-ventricular": 1.0},
        },
        angle_deg=7.0, scale=(0.86, 1.1), shift=0.04, expo=(1.9, 3.2), contrast=(0.85, 1.2),
        bias=(-0.08, 0.04), gamma=(0.8, 1.4), noise=(0.006, 0.025), blur=(0.6, 1.8), breath=(-0.02, 0.03),
        habitus={"thin": 1.0, "average": 1.0, "broad": 1.0}, heel=(0.04, 0.1), sharpen=(0.6, 1.2),
        collimation=0.3, distractors={"ecg": 0.3, "line": 0.25, "pacemaker": 0.1, "marker": 0.8, "text": 0.4},
        text=("UPRIGHT", "PA", "STANDING"),
    ),
}


def style_names() -> tuple[str, ...]:
    """The names of the built-in styles."""
    return tuple(STYLES)


def get_style(style: str | Style) -> Style:
    """A built-in style by name (a :class:`Style` passes through after a check)."""
    if isinstance(style, Style):
        check_style(style)
        return style
    if style not in STYLES:
        raise UsageError(f"unknown phantom style {style!r} (known: {', '.join(STYLES)})")
    return STYLES[style]


def check_style(style: Style) -> None:
    """Reject renderings, distractors or habitus the generator does not know, and empty choices."""
    for label, choices in style.renderings.items():
        known = RENDERING_NAMES.get(label)
        if known is None:
            raise UsageError(f"style {style.name!r}: unknown class {label!r} (known: {', '.join(RENDERING_NAMES)})")
        bad = set(choices) - set(known)
        if bad or not choices or min(choices.values()) < 0 or sum(choices.values()) <= 0:
            raise UsageError(f"style {style.name!r}: bad renderings for {label}: {choices} (known: {', '.join(known)})")
    unknown = sorted(set(style.distractors) - set(DISTRACTOR_KINDS))
    if unknown:
        raise UsageError(f"style {style.name!r}: unknown distractor(s) {unknown} (known: {', '.join(DISTRACTOR_KINDS)})")
    if set(style.habitus) - set(HABITUS) or sum(style.habitus.values()) <= 0:
        raise UsageError(f"style {style.name!r}: bad habitus weights {style.habitus} (known: {', '.join(HABITUS)})")
    if style.view not in ("PA", "AP"):
        raise UsageError(f"style {style.name!r}: view must be PA or AP (got {style.view!r})")
