"""Ground-truth boxes typed in (``Label,x,y,w,h``) or loaded from a file.

A loaded file may hold ``Label,x,y,w,h`` lines, or rows of NIH's ``BBox_List_2017.csv``
(``Image Index,Finding Label,x,y,w,h``): rows for other images are skipped. NIH spells
``Infiltrate`` in the box list and ``Infiltration`` in its labels; :func:`label_key` makes them one class.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from xcam.core.errors import UsageError
from xcam.core.metrics import check_box_in_image, parse_ground_truth
from xcam.core.labels import label_key  # NIH's Infiltrate = Infiltration, case/space-insensitive

@dataclass(frozen=True)
class GroundTruth:
    """One ground-truth box in original-image pixels."""

    label: str
    box: tuple[float, float, float, float]

    @property
    def text(self) -> str:
        return f"{self.label}," + ",".join(f"{v:g}" for v in self.box)


def parse_text(text: str, width: int | None = None, height: int | None = None) -> GroundTruth:
    """``"Label,x,y,w,h"`` → :class:`GroundTruth`; checked against the image size when given."""
    label, x, y, w, h = parse_ground_truth(text)
    if width is not None and height is not None:
        check_box_in_image((x, y, w, h), width, height, what=f"ground truth {label}")
    return GroundTruth(label, (x, y, w, h))


def parse_file(content: bytes | str, image_name: str) -> list[GroundTruth]:
    """All boxes in a loaded file that belong to ``image_name`` (or that name no image)."""
    text = content.decode("utf-8-sig", errors="replace") if isinstance(content, bytes) else content
    found: list[GroundTruth] = []
    errors: list[str] = []
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells or cells[0].startswith("#"):
            continue
        if len(cells) >= 6 and not _is_number(cells[1]):  # NIH: Image Index, Finding Label, x, y, w, h
            if cells[0] != image_name:
                continue
            cells = cells[1:6]
        try:
            found.append(parse_text(",".join(cells)))
        except UsageError as exc:
            if not _looks_like_header(cells):
                errors.append(str(exc))
    if not found and errors:
        raise UsageError(errors[0])
    return found


def pick(boxes: list[GroundTruth], pathology: str) -> GroundTruth | None:
    """The box for ``pathology`` (up to spelling), else the only box, else ``None``."""
    same = [g for g in boxes if label_key(g.label) == label_key(pathology)]
    if same:
        return same[0]
    return boxes[0] if len(boxes) == 1 else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_header(cells: list[str]) -> bool:
    return not any(_is_number(c) for c in cells)
