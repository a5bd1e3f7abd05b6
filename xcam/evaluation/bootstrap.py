"""95 % bootstrap confidence intervals for every localization number of ``xcam evaluate``.

**What is resampled.** Every cell of the table is a ratio of sums over ground-truth boxes
(pointing hits / boxes, boxes with IoBB > T / boxes, IoU / boxes, false boxes / (image, class)
pairs), and boxes are not independent: the boxes of one image share one CAM, and the follow-up
images of one patient share anatomy and often the lesion. So the unit resampled is the
**patient** when every image name follows NIH's ``PPPPPPPP_FFF.png`` (patient id, follow-up
number — the phantoms are named the same way), and the **image** otherwise. A resample draws
as many units as there are, with replacement, and recomputes every class row from the boxes of
the drawn units; the class mean of a resample is the mean of that resample's class rows.
Intervals are percentile intervals (2.5th and 97.5th percentiles of the resamples).

**Why a vectorized numpy bootstrap and not ``scipy.stats.bootstrap``.** Because each statistic
is ``Σ numerator / Σ denominator`` over units, a resample is one vector of unit counts, and every
cell of every class, of the mean and of both baselines for all resamples is one matrix product
``counts (R × units) @ per-unit sums (units × cells)``. ``scipy.stats.bootstrap`` resamples the
data once per statistic (hundreds of cells here, each materialized as resamples × units) and
cannot share one set of draws between two result files, which the paired ``--compare`` needs
(:mod:`xcam.evaluation.compare`). The percentile method is used rather than BCa: BCa needs a
jackknife per unit and is undefined for degenerate cells (all hits, no hit), which are common in
small classes; percentile gives ``[1, 1]`` there, as it should. The results agree with
``scipy.stats.bootstrap``'s percentile intervals on a plain proportion (tests/test_bootstrap.py).

**Classes of one unit** (all boxes on one patient or image) get no interval: resampling one unit
shows no variation, and ``[v, v]`` would look certain. **Classes missing from a resample**: a
class whose units were all left out of a resample has no value there; its interval uses the
resamples where it is present, and the class-mean interval the resamples where every class is
present (their number is reported as ``complete``).

The per-box input of all this is a :class:`RecordTable`, stored in ``results.json`` under
``per_record`` so that two result files can be compared later without the images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from xcam.core import metrics as M
from xcam.core.errors import XcamError
from xcam.evaluation.protocol import BASELINES, BoxRecord, unit_false_positives

Box = tuple[float, float, float, float]
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
CAM_COLUMNS = ("iobb", "iou", "hit", "unit") + tuple(f"fp@{t}" for t in M.IOBB_THRESHOLDS)
BASELINE_COLUMNS = tuple(f"{b}.{k}" for b in BASELINES for k in ("iobb", "iou", "hit"))
NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.[A-Za-z0-9]+$")
_MAX_CELLS_PER_CHUNK = 4_000_000  # resamples × units held at once


@dataclass
class RecordTable:
    """One row per ground-truth box: its image, class, box, whether it was evaluated and the
    numbers every cell of the table is summed from (:data:`CAM_COLUMNS`, :data:`BASELINE_COLUMNS`).

    ``unit`` is 1 on the first box of each evaluated (image, class) pair and ``fp@T`` holds that
    pair's false boxes at T(IoBB) (AFP's numerator and denominator); both are 0 on the others.
    """

    images: list[str]
    labels: list[str]
    gts: list[Box]
    evaluated: np.ndarray  # bool, one per box
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def to_json(self) -> dict[str, Any]:
        return {"image": list(self.images), "label": list(self.labels), "gt": [list(g) for g in self.gts],
                "evaluated": [bool(e) for e in self.evaluated],
                "values": {k: [float(x) for x in v] for k, v in self.values.items()}}

    @classmethod
    def from_json(cls, data: Any, source: str) -> "RecordTable":
        """The table stored in a results.json (``source`` names the file in errors)."""
        try:
            images, labels = [str(x) for x in data["image"]], [str(x) for x in data["label"]]
            gts = [tuple(float(v) for v in g) for g in data["gt"]]
            evaluated = np.asarray(data["evaluated"], dtype=bool)
            values = {k: np.asarray([np.nan if x is None else x for x in data["values"][k]], dtype=np.float64)
                      for k in CAM_COLUMNS + BASELINE_COLUMNS}
        except (KeyError, TypeError, ValueError) as exc:
            raise XcamError(f"{source}: malformed per-record table ({type(exc).__name__}: {exc})") from None
        n = len(images)
        if any(len(x) != n for x in (labels, gts, evaluated, *values.values())) or any(len(g) != 4 for g in gts):
            raise XcamError(f"{source}: malformed per-record table (columns of different lengths)")
        return cls(images, labels, gts, evaluated, values)  # type: ignore[arg-type]


def record_table(records: Sequence[BoxRecord]) -> RecordTable:
    """The :class:`RecordTable` of an evaluation's box records."""
    n = len(records)
    values = {k: np.zeros(n) for k in CAM_COLUMNS + BASELINE_COLUMNS}
    units: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        if r.evaluated:
            values["iobb"][i], values["iou"][i], values["hit"][i] = r.iobb, r.iou, float(r.hit)
            units.setdefault((r.image, r.label), []).append(i)
        for b in BASELINES:
            if b in r.baselines:
                s = r.baseline_scores(b)
                values[f"{b}.iobb"][i], values[f"{b}.iou"][i], values[f"{b}.hit"][i] = s["iobb"], s["iou"], s["hit"]
            else:
                values[f"{b}.iobb"][i] = values[f"{b}.iou"][i] = values[f"{b}.hit"][i] = np.nan
    for idx in units.values():
        first = idx[0]
        values["unit"][first] = 1.0
        for t in M.IOBB_THRESHOLDS:
            values[f"fp@{t}"][first] = unit_false_positives([records[i] for i in idx], t)
    return RecordTable([r.image for r in records], [r.label for r in records], [tuple(r.gt) for r in records],
                       np.array([r.evaluated for r in records], dtype=bool), values)


# -- the cells: numerator and denominator per box ------------------------------------------------------
def cell_paths(source: str = "cam") -> list[tuple[str, ...]]:
    """Where each cell lives in a summary row: ``("iobb", "0.25")``, ``("pointing",)``, … (AFP for the CAM only)."""
    paths = [("iobb", str(t)) for t in M.IOBB_THRESHOLDS] + [("iou", str(t)) for t in M.IOU_THRESHOLDS]
    paths += [("pointing",), ("miou",)]
    if source == "cam":
        paths += [("afp", str(t)) for t in M.IOBB_THRESHOLDS]
    return paths


def cells(table: RecordTable, source: str = "cam") -> tuple[np.ndarray, np.ndarray]:
    """``(numerators, denominators)``, each ``boxes × cells`` in the order of :func:`cell_paths`."""
    prefix = "" if source == "cam" else f"{source}."
    iobb, iou, hit = (table.values[prefix + k] for k in ("iobb", "iou", "hit"))
    ones = np.ones(len(table))
    num = [iobb > t for t in M.IOBB_THRESHOLDS] + [iou > t for t in M.IOU_THRESHOLDS]
    num += [np.nan_to_num(hit, nan=0.0), np.nan_to_num(iou, nan=0.0)]
    den = [ones] * len(num)
    if source == "cam":
        num += [table.values[f"fp@{t}"] for t in M.IOBB_THRESHOLDS]
        den += [table.values["unit"]] * len(M.IOBB_THRESHOLDS)
    return np.stack(num, axis=1).astype(np.float64), np.stack(den, axis=1)


# -- resampling -------------------------------------------------------------------------------------
def clusters(images: Sequence[str]) -> tuple[np.ndarray, str]:
    """Unit index per box and the unit's name: ``patient`` when every image is named as NIH's
    (``PPPPPPPP_FFF.png``), else ``image``."""
    matches = [NIH_NAME.match(n) for n in images]
    if images and all(matches):
        keys, unit = [m.group(1) for m in matches if m], "patient"
    else:
        keys, unit = list(images), "image"
    _, index = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return index.astype(np.int64), unit


def resample_counts(n_units: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of the ``resamples × n_units`` matrix of how often each unit was drawn (each row
    sums to ``n_units``); the same arguments always give the same matrix."""
    rng = np.random.default_rng(seed)
    step = max(1, min(resamples, _MAX_CELLS_PER_CHUNK // max(n_units, 1)))
    for start in range(0, resamples, step):
        r = min(step, resamples - start)
        drawn = rng.integers(0, n_units, size=(r, n_units))
        offsets = (np.arange(r) * n_units)[:, None]
        yield np.bincount((drawn + offsets).ravel(), minlength=r * n_units).reshape(r, n_units).astype(np.float64)


def unit_sums(values: np.ndarray, unit: np.ndarray, cls: np.ndarray, n_units: int, n_classes: int) -> np.ndarray:
    """``units × (classes · cells)``: the sum of ``values`` (boxes × cells) per unit and class."""
    out = np.zeros((n_units, n_classes, values.shape[1]))
    np.add.at(out, (unit, cls), values)
    return out.reshape(n_units, -1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def resampled_ratios(num: np.ndarray, den: np.ndarray, unit: np.ndarray, cls: np.ndarray, n_classes: int,
                     resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(point, boot)``: the statistic of each class and cell on the data (``classes × cells``)
    and on every resample (``resamples × classes × cells``, NaN where a class was not drawn)."""
    n_units = int(unit.max()) + 1 if len(unit) else 0
    s_num = unit_sums(num, unit, cls, n_units, n_classes)
    s_den = unit_sums(den, unit, cls, n_units, n_classes)
    shape = (n_classes, num.shape[1])
    point = _ratio(s_num.sum(0), s_den.sum(0)).reshape(shape)
    boot = np.empty((resamples, *shape))
    done = 0
    for w in resample_counts(n_units, resamples, seed):
        boot[done:done + len(w)] = _ratio(w @ s_num, w @ s_den).reshape(len(w), *shape)
        done += len(w)
    return point, boot


def percentile_interval(boot: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds over axis 0 (resamples), ignoring NaN (NaN when all are)."""
    alpha = (1 - confidence) / 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices → NaN
        lo, hi = np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return lo, hi


# -- intervals into a summary -----------------------------------------------------------------------
def set_path(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Mapping[str, Any] | None, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _bound(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def add_intervals(summary: dict[str, Any], table: RecordTable, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Add ``ci`` (``{"pointing": {"lower": …, "upper": …}, "iobb": {"0.25": {…}}, …}``) to every
    class row, the mean row and the baselines' rows of ``summary``, and ``summary["bootstrap"]``
    (resamples, seed, unit, …). Returns ``summary``."""
    classes = list(summary.get("classes", {}))
    keep = table.evaluated & np.isin(np.asarray(table.labels, dtype=object).astype(str), classes)
    if resamples <= 0 or not classes or not keep.any():
        return summary
    idx = np.flatnonzero(keep)
    sub = RecordTable([table.images[i] for i in idx], [table.labels[i] for i in idx],
                      [table.gts[i] for i in idx], table.evaluated[idx], {k: v[idx] for k, v in table.values.items()})
    unit, unit_name = clusters(sub.images)
    if unit.max() < 1:  # one patient or image: nothing to resample
        return summary
    cls = np.array([classes.index(label) for label in sub.labels], dtype=np.int64)
    sources = ["cam", *BASELINES]
    parts = [cells(sub, s) for s in sources]
    num = np.concatenate([p[0] for p in parts], axis=1)
    den = np.concatenate([p[1] for p in parts], axis=1)
    _, boot = resampled_ratios(num, den, unit, cls, len(classes), resamples, seed)
    mean_boot = boot.mean(axis=1)  # NaN when some class was not drawn
    lo, hi = percentile_interval(boot, confidence)
    mlo, mhi = percentile_interval(mean_boot, confidence)
    alone = [j for j in range(len(classes)) if len(np.unique(unit[cls == j])) < 2]
    lo[alone], hi[alone] = np.nan, np.nan  # one unit: resampling shows no variation, so no interval
    start = 0
    for source in sources:
        paths = cell_paths(source)
        rows = ({c: summary["classes"][c] for c in classes}, summary["mean"]) if source == "cam" else (
            summary["baselines"][source]["classes"], summary["baselines"][source]["mean"])
        for k, path in enumerate(paths, start=start):
            for j, c in enumerate(classes):
                set_path(rows[0][c].setdefault("ci", {}), path, {"lower": _bound(lo[j, k]), "upper": _bound(hi[j, k])})
            if rows[1]:
                set_path(rows[1].setdefault("ci", {}), path, {"lower": _bound(mlo[k]), "upper": _bound(mhi[k])})
        start += len(paths)
    summary["bootstrap"] = {"resamples": int(resamples), "seed": int(seed), "confidence": confidence,
                            "method": "percentile", "unit": unit_name, "units": int(unit.max()) + 1,
                            "complete": int(np.isfinite(mean_boot[:, 0]).sum())}
    return summary


def interval(row: Mapping[str, Any] | None, path: Sequence[str]) -> tuple[float, float] | None:
    """The ``(lower, upper)`` stored for ``path`` in a summary row, or None."""
    ci = get_path(row.get("ci") if row else None, path)
    if not ci or ci.get("lower") is None or ci.get("upper") is None:
        return None
    return float(ci["lower"]), float(ci["upper"])
