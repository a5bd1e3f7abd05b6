"""NIH ChestX-ray14's file formats, read once for every command: the box list
(``BBox_List_2017.csv``), the label table (``Data_Entry_2017.csv``) and the image index
(file name → path under a folder such as NIH's ``images_0xx/images``).

Box lists have the header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (x, y, w, h floats in
original pixels). Labels go through :func:`xcam.core.labels.canonical_label`, so the box list's
``Infiltrate`` and the label table's ``Infiltration`` meet.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from xcam.core.errors import UsageError
from xcam.core.labels import canonical_label, split_findings

Box = tuple[float, float, float, float]


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
    def box(self) -> Box:
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


def read_box_table(path: str | Path) -> dict[str, list[tuple[str, Box]]]:
    """A box list grouped by image: ``{file name: [(label, (x, y, w, h)), ...]}``."""
    out: dict[str, list[tuple[str, Box]]] = {}
    for gt in read_boxes(path):
        out.setdefault(gt.image, []).append((gt.label, gt.box))
    return out


def read_image_labels(path: str | Path) -> dict[str, set[str]]:
    """``{image name: {labels}}`` from a Data_Entry csv (``No Finding`` → empty set)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: label csv not found")
    try:
        df = pd.read_csv(path, index_col=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a bad file
        raise UsageError(f"{path}: cannot read the label csv ({type(exc).__name__})") from None
    if "Image Index" not in df.columns or "Finding Labels" not in df.columns:
        raise UsageError(f"{path}: columns 'Image Index' and 'Finding Labels' expected (NIH Data_Entry_2017.csv)")
    return {str(n): set(split_findings(t)) for n, t in zip(df["Image Index"], df["Finding Labels"])}


def image_index(folder: str | Path, names: Sequence[str]) -> dict[str, Path]:
    """``name → path`` for the ``names`` found under ``folder``: direct children first, else a
    recursive search (NIH ships ``images_0xx/images``)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root}: image folder not found")
    found = {n: root / n for n in names if (root / n).is_file()}
    if len(found) < len(names):
        wanted = set(names) - set(found)
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f in wanted and f not in found:
                    found[f] = Path(dirpath) / f
    return found
