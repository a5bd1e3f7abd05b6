"""The output schema of ``xcam score``: one row per input image.

Columns, in order:

* ``path``   — the input as enumerated (the resume key);
* ``status`` — ``ok``, or ``error: <problem>`` on one line;
* ``{model}:{label}`` — each model's probability per valid label (empty/null on error rows);
* ``ensemble:{label}`` — the ensembler's probabilities, when several models run;
* ``boxes`` — with ``--boxes``: a JSON list of the chain's boxes in original-image pixels, best
  first per finding: ``model`` (a model's column prefix, or ``ensemble`` for the ensembler's
  combined CAM of a pathology two or more models explained), ``label``, ``probability`` (4
  decimals), ``x``, ``y``, ``width``, ``height`` (2 decimals), ``score`` (4 decimals);
* ``cams``  — with ``--with-cams`` and no ``--boxes``: a JSON list of CAM peaks, one per finding:
  ``model``, ``label``, ``probability``, ``peak_x``, ``peak_y`` (the centre of the CAM's hottest
  work-grid pixel in original pixels, truncated to integers; ``null`` for a flat CAM) and ``peak``
  (the normalized CAM's maximum: 1.0, or 0.0 when flat).

Probabilities are the model's float32 values widened to float64, identical in every format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

OK = "ok"
PATH = "path"
STATUS = "status"
BOXES = "boxes"
CAMS = "cams"
ENSEMBLE = "ensemble"

Row = dict[str, Any]


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace (newlines included) into single spaces and cap the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_status(problem: str) -> str:
    """The ``status`` value of a failed input."""
    return "error: " + one_line(problem)


def is_ok(status: Any) -> bool:
    return status == OK


@dataclass(frozen=True)
class ModelColumns:
    """The probability columns one model contributes: ``prefix`` and its valid labels, in order."""

    prefix: str
    labels: tuple[str, ...]

    def columns(self) -> list[str]:
        return [f"{self.prefix}:{label}" for label in self.labels]


@dataclass(frozen=True)
class Schema:
    """Column layout of one scoring job."""

    models: tuple[ModelColumns, ...]
    ensemble_labels: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # "boxes" and/or "cams" (JSON string columns)
    _columns: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        cols = [PATH, STATUS]
        for m in self.models:
            cols += m.columns()
        cols += [f"{ENSEMBLE}:{label}" for label in self.ensemble_labels]
        cols += list(self.extra)
        if len(set(cols)) != len(cols):
            raise ValueError(f"duplicate output columns in {cols}")
        object.__setattr__(self, "_columns", cols)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    @property
    def float_columns(self) -> list[str]:
        return [c for c in self._columns if c not in (PATH, STATUS) and c not in self.extra]

    def arrow_schema(self) -> Any:
        """The ``pyarrow`` schema: float64 probabilities, strings for the rest."""
        import pyarrow as pa

        floats = set(self.float_columns)
        return pa.schema([pa.field(c, pa.float64() if c in floats else pa.string()) for c in self._columns])

    def error_row(self, path: str, problem: str) -> Row:
        """A row for an input that could not be scored."""
        row: Row = {c: None for c in self._columns}
        row[PATH], row[STATUS] = path, error_status(problem)
        return row

    def ok_row(
        self,
        path: str,
        per_model: Sequence[Mapping[str, float]],
        ensemble: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Row:
        """A row for a scored input: ``per_model[i]`` maps labels of ``models[i]`` to probabilities."""
        row: Row = {PATH: path, STATUS: OK}
        for model, probs in zip(self.models, per_model):
            for label in model.labels:
                row[f"{model.prefix}:{label}"] = clean_float(probs.get(label))
        for label in self.ensemble_labels:
            row[f"{ENSEMBLE}:{label}"] = clean_float((ensemble or {}).get(label))
        for name in self.extra:
            value = (extra or {}).get(name)
            row[name] = value if value is None or isinstance(value, str) else dumps(value)
        return row


def clean_float(value: Any) -> float | None:
    """A finite float, or ``None`` (missing or NaN/inf)."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def dumps(value: Any) -> str:
    """Compact one-line JSON for the ``boxes``/``cams`` columns."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def union_labels(label_lists: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The union of labels, in order of first appearance (the ensemble's label order)."""
    seen: dict[str, None] = {}
    for labels in label_lists:
        for label in labels:
            if label:
                seen.setdefault(label, None)
    return tuple(seen)
