"""The one label table: NIH spellings, aliases and the key that compares label names.

NIH's box list spells ``Infiltrate`` where its image labels say ``Infiltration``, and
``Pleural Thickening`` where the labels say ``Pleural_Thickening``. Every command compares labels
through :func:`label_key` (case-, space-, ``_``- and ``-``-insensitive, aliases applied) and turns
a box-list or user spelling into the Data_Entry one with :func:`canonical_label`.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
"""The 14 labels of NIH ChestX-ray14 (Data_Entry_2017 spelling)."""

NO_FINDING = "No Finding"

ALIASES: dict[str, str] = {
    "infiltrate": "Infiltration",
    "pleuralthickening": "Pleural_Thickening",
}
"""``label_key`` of a spelling → the canonical (Data_Entry) name."""


def _squash(label: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(label)).lower()


def label_key(label: str) -> str:
    """The comparison key of a label: ``"Infiltrate"``, ``"infiltration"`` and ``"INFILTRATION"``
    give the same key, as do ``"Pleural Thickening"`` and ``"pleural_thickening"``."""
    key = _squash(label)
    alias = ALIASES.get(key)
    return _squash(alias) if alias else key


def same_label(a: str | None, b: str | None) -> bool:
    """Whether two label spellings name the same class (``None`` never matches)."""
    return a is not None and b is not None and label_key(a) == label_key(b)


def canonical_label(label: str) -> str:
    """A spelling → the Data_Entry name when it is an alias (``Infiltrate`` → ``Infiltration``),
    else the label as given (stripped)."""
    text = str(label).strip()
    return ALIASES.get(_squash(text), text)


def find_label(name: str, labels: Iterable[str]) -> str | None:
    """The entry of ``labels`` that names the same class as ``name``, or ``None``."""
    key = label_key(name)
    return next((label for label in labels if label and label_key(label) == key), None)


def split_findings(text: object) -> list[str]:
    """``"Mass|Nodule"`` → ``["Mass", "Nodule"]`` (canonical names); ``No Finding`` and blanks → ``[]``."""
    if not isinstance(text, str):
        return []
    return [canonical_label(t) for t in text.split("|") if t.strip() and t.strip() != NO_FINDING]


def safe_name(text: str) -> str:
    """A label usable in a file name: path separators and control characters replaced by ``-``."""
    return re.sub(r"[/\\\x00-\x1f]", "-", str(text)).strip() or "unnamed"


def labels_in(names: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The ``labels`` entries that match any of ``names`` (in ``labels`` order)."""
    keys = {label_key(n) for n in names}
    return [label for label in labels if label and label_key(label) in keys]
