"""``xcam score --boxes --coco FILE``: the ``boxes`` column of a results file as COCO.

Read from the results file itself once the job ends, so a resumed run's COCO file holds every
scored image, not only this session's. Per image and class the boxes of one detector are kept, as
an evaluation scores them: the ``ensemble`` entries when several models explained the class, else
the one model's. A box's ``score`` is its finding's class probability (:mod:`xcam.interop.coco`);
its coordinates are the column's (original pixels, 2 decimals). Image sizes come from the files'
headers (no decoding); an image that cannot be read any more is listed without a size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from xcam.core.errors import UsageError
from xcam.core.labels import label_key
from xcam.interop.coco import CocoCollector, image_size
from xcam.score.schema import BOXES, ENSEMBLE, PATH, STATUS, Row, is_ok


def detector_entries(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of one row that form one detector: per class the ``ensemble`` boxes when two or
    more models have boxes for it (or the ensemble has), else the one model's. (The column lists
    boxes, not findings: a model whose CAM of the class gave no box leaves no trace in it.)"""
    rows = list(entries)
    models: dict[str, set[str]] = {}
    for e in rows:
        models.setdefault(label_key(str(e.get("label", ""))), set()).add(str(e.get("model")))

    def chosen(key: str) -> str:
        found = models[key]
        return ENSEMBLE if ENSEMBLE in found or len(found) > 1 else next(iter(found))

    return [e for e in rows if str(e.get("model")) == chosen(label_key(str(e.get("label", ""))))]


def collect_rows(rows: Iterable[Row], where: str | Path = "results") -> CocoCollector:
    """A :class:`~xcam.interop.coco.CocoCollector` of the ok rows' boxes."""
    collector = CocoCollector()
    for row in rows:
        if not is_ok(row.get(STATUS)):
            continue
        path = str(row[PATH])
        text = row.get(BOXES)
        if BOXES not in row:
            raise UsageError(f"{where}: no 'boxes' column (score with --boxes to write COCO)")
        try:
            entries = json.loads(text) if text else []
        except (TypeError, ValueError):
            raise UsageError(f"{where}: the boxes of {path} are not JSON") from None
        size = image_size(path)
        collector.add_image(path, *(size or (None, None)))
        for e in detector_entries(entries):
            if e.get("probability") is None:
                continue
            collector.add_prediction(path, str(e["label"]), (e["x"], e["y"], e["width"], e["height"]),
                                     float(e["probability"]), float(e.get("score", 1.0)), str(e.get("model", "")))
    return collector


def write_coco(results_file: str | Path, coco_file: str | Path) -> tuple[Path, Path, int]:
    """Write ``coco_file`` (and its ``.dataset.json``) from a finished results file; returns the
    paths and the number of boxes."""
    from xcam.score.writers import read_rows

    collector = collect_rows(read_rows(results_file), results_file)
    results, dataset = collector.write(coco_file)
    return results, dataset, len(collector.predictions)
