"""Ground truth in NIH's formats: ``BBox_List_2017.csv`` boxes and ``Data_Entry_2017.csv`` labels.

Box lists have the header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (x, y, w, h floats in
original pixels). NIH spells ``Infiltrate`` there and ``Infiltration`` in Data_Entry: labels go
through :func:`xcam.train.data.canonical_label`, so both spellings meet.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from xcam.core.errors import UsageError
from xcam.train.data import canonical_label, split_findings


@dataclass(frozen=True)
class GroundTruthBox:
    """One row of a box list; ``label`` in Data_Entry spelling, ``raw_label`` as written."""

    image: str
    label: str
    x: float
    y: float
    width: float
    height: float
    raw_label: str = ""

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.width, self.height)


def read_boxes(path: str | Path) -> list[GroundTruthBox]:
    """Every row of a box list, in file order; a malformed file or row raises one line naming both."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: box list not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: cannot read the box list ({exc})") from None
    if not rows or not rows[0] or rows[0][0].strip().lower() != "image index":
        raise UsageError(f"{path}: not an NIH box list (expected header 'Image Index,Finding Label,Bbox [x,y,w,h],,,')")
    out: list[GroundTruthBox] = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 6:
            raise UsageError(f"{path}: line {n}: expected 6 columns (image, label, x, y, w, h), got {len(row)}")
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError:
            raise UsageError(f"{path}: line {n}: box values {row[2:6]} are not numbers") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise UsageError(f"{path}: line {n}: invalid box {row[2:6]} (need finite numbers, w and h > 0)")
        raw = row[1].strip()
        out.append(GroundTruthBox(Path(row[0].strip()).name, canonical_label(raw), x, y, w, h, raw))
    return out


def read_image_labels(path: str | Path) -> dict[str, set[str]]:
    """``{image name: {labels}}`` from a Data_Entry csv (``No Finding`` → empty set)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: label csv not found")
    df = pd.read_csv(path, index_col=False)
    if "Image Index" not in df.columns or "Finding Labels" not in df.columns:
        raise UsageError(f"{path}: columns 'Image Index' and 'Finding Labels' expected (NIH Data_Entry_2017.csv)")
    return {str(n): set(split_findings(t)) for n, t in zip(df["Image Index"], df["Finding Labels"])}
