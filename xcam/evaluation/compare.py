"""``xcam evaluate --compare A/results.json B/results.json``: is B's localization better than A's?

Both files must come from the same boxes (images, classes and ground-truth boxes). Their per-box
tables (``per_record`` in results.json, :class:`xcam.evaluation.bootstrap.RecordTable`) are put in
one order, and the **same** resamples of units (patients or images, as for the intervals) are
applied to both: for every resample the difference B − A of each class row and of the class mean
is computed, and its 2.5th–97.5th percentiles are the 95 % interval of the paired difference.
Pairing removes the variation that both share (which images are easy), so it detects smaller
differences than comparing two unpaired intervals. A metric is called better for one side only
when its interval excludes 0 (AFP: lower is better).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xcam.core.errors import UsageError, XcamError
from xcam.evaluation.bootstrap import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    RecordTable,
    cell_paths,
    cells,
    clusters,
    percentile_interval,
    resample_counts,
    unit_sums,
)

LOWER_IS_BETTER = {"afp"}
HEADLINE = (("pointing",), ("iobb", "0.25"), ("iou", "0.1"), ("miou",), ("afp", "0.25"))


def metric_name(path: Sequence[str]) -> str:
    """``("iobb", "0.25")`` → ``T(IoBB>0.25)``; ``("afp", "0.25")`` → ``AFP@IoBB0.25``."""
    head = path[0]
    if head == "iobb":
        return f"T(IoBB>{path[1]})"
    if head == "iou":
        return f"T(IoU>{path[1]})"
    if head == "afp":
        return f"AFP@IoBB{path[1]}"
    return {"miou": "mIoU"}.get(head, head)


def load_table(path: str | Path) -> tuple[RecordTable, list[str]]:
    """The per-record table of a results.json and its class order (from the summary)."""
    from xcam.core.jsonio import read_json

    data = read_json(path)
    if not isinstance(data, dict) or "per_record" not in data:
        raise XcamError(f"{path}: no per-record table ('per_record'): not a results.json of xcam evaluate, or "
                        "written by an older version; run xcam evaluate again")
    table = RecordTable.from_json(data["per_record"], str(path))
    order = list((data.get("summary") or {}).get("classes") or [])
    return table, order


def _key(table: RecordTable, i: int) -> tuple[str, str, tuple[float, ...]]:
    return table.images[i], table.labels[i], tuple(round(v, 3) for v in table.gts[i])


def _names(items: Sequence[str], k: int = 3) -> str:
    items = sorted(items)
    return ", ".join(items[:k]) + (f", … ({len(items)} in all)" if len(items) > k else "")


def align(a: RecordTable, b: RecordTable, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices that put both tables in one order of (image, class, box); a one-line
    :class:`UsageError` naming the images when the two were not evaluated on the same boxes."""
    images_a, images_b = set(a.images), set(b.images)
    if images_a != images_b:
        only_a, only_b = images_a - images_b, images_b - images_a
        parts = [f"{len(only_a)} image(s) only in A ({_names(list(only_a))})" if only_a else "",
                 f"{len(only_b)} image(s) only in B ({_names(list(only_b))})" if only_b else ""]
        raise UsageError(f"{name_a} and {name_b} were evaluated on different images: "
                         + "; ".join(p for p in parts if p))
    keys_a = [_key(a, i) for i in range(len(a))]
    keys_b = [_key(b, i) for i in range(len(b))]
    if Counter(keys_a) != Counter(keys_b):
        by_image: dict[str, list[Counter]] = {}
        for side, keys in enumerate((keys_a, keys_b)):
            for k in keys:
                by_image.setdefault(k[0], [Counter(), Counter()])[side][k[1:]] += 1
        differ = sorted(name for name, (ca, cb) in by_image.items() if ca != cb)
        first = differ[0]
        ca, cb = by_image[first]
        show = lambda c: "; ".join(f"{label} {list(box)}" for label, box in sorted(c.elements()))  # noqa: E731
        raise UsageError(f"{name_a} and {name_b} have different ground truth on {len(differ)} image(s) "
                         f"({_names(differ)}): {first} has [{show(ca)}] in A and [{show(cb)}] in B")
    order_a = sorted(range(len(a)), key=lambda i: keys_a[i])
    order_b = sorted(range(len(b)), key=lambda i: keys_b[i])
    return np.asarray(order_a, dtype=np.int64), np.asarray(order_b, dtype=np.int64)


def verdict(lower: float | None, upper: float | None, lower_is_better: bool = False) -> str:
    """``B better`` / ``A better`` when the interval of B − A excludes 0, else ``no difference detectable``."""
    if lower is None or upper is None or not (np.isfinite(lower) and np.isfinite(upper)):
        return "no difference detectable"
    if lower > 0 or upper < 0:
        b_higher = lower > 0
        return "B better" if b_higher != lower_is_better else "A better"
    return "no difference detectable"


def _cell(diff: float, lo: float, hi: float) -> dict[str, float | None]:
    f = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    return {"diff": f(diff), "lower": f(lo), "upper": f(hi)}


def paired_difference(a: RecordTable, b: RecordTable, name_a: str = "A", name_b: str = "B",
                      order: Sequence[str] = (), resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
    """B − A per class and for the class mean, each with its paired bootstrap interval and (for
    the mean) a verdict per metric. Boxes count where both evaluated their class."""
    if resamples <= 0:
        raise UsageError("--compare needs bootstrap resamples (--bootstrap N with N > 0)")
    ia, ib = align(a, b, name_a, name_b)
    both = a.evaluated[ia] & b.evaluated[ib]
    ia, ib = ia[both], ib[both]
    labels = [a.labels[i] for i in ia]
    present = set(labels)
    classes = [c for c in order if c in present] + sorted(present - set(order))
    one_side = sorted((set(np.asarray(a.labels)[a.evaluated]) ^ set(np.asarray(b.labels)[b.evaluated])))
    if not classes:
        raise UsageError(f"{name_a} and {name_b}: no class was evaluated in both")
    num_a, den = cells(_take(a, ia))
    num_b, den_b = cells(_take(b, ib))
    if not np.array_equal(den, den_b):  # the (image, class) units follow from the ground truth
        raise UsageError(f"{name_a} and {name_b}: their per-record tables count (image, class) pairs differently")
    unit, unit_name = clusters([a.images[i] for i in ia])
    cls = np.array([classes.index(c) for c in labels], dtype=np.int64)
    n_units, n_classes = int(unit.max()) + 1, len(classes)
    if n_units < 2:
        raise UsageError(f"{name_a} and {name_b}: all boxes lie on one {unit_name}, so no interval can be "
                         "resampled")
    sa, sb = (unit_sums(n, unit, cls, n_units, n_classes) for n in (num_a, num_b))
    sd = unit_sums(den, unit, cls, n_units, n_classes)
    shape = (n_classes, den.shape[1])
    point = ((sb.sum(0) - sa.sum(0)) / sd.sum(0)).reshape(shape)
    boot = np.empty((resamples, *shape))
    done = 0
    for w in resample_counts(n_units, resamples, seed):
        with np.errstate(invalid="ignore", divide="ignore"):
            boot[done:done + len(w)] = ((w @ sb - w @ sa) / (w @ sd)).reshape(len(w), *shape)
        done += len(w)
    boot[~np.isfinite(boot)] = np.nan
    lo, hi = percentile_interval(boot, confidence)
    alone = [j for j in range(n_classes) if len(np.unique(unit[cls == j])) < 2]
    lo[alone], hi[alone] = np.nan, np.nan  # one unit: no interval (as in xcam.evaluation.bootstrap)
    mlo, mhi = percentile_interval(boot.mean(axis=1), confidence)
    mean_point = point.mean(axis=0)
    out: dict[str, Any] = {"a": name_a, "b": name_b, "classes": {c: {} for c in classes}, "mean": {},
                           "verdicts": {}, "boxes": int(len(ia)), "not_compared": one_side,
                           "bootstrap": {"resamples": int(resamples), "seed": int(seed), "confidence": confidence,
                                         "method": "paired percentile", "unit": unit_name, "units": n_units}}
    for k, path in enumerate(cell_paths("cam")):
        name = metric_name(path)
        for j, c in enumerate(classes):
            out["classes"][c][name] = _cell(point[j, k], lo[j, k], hi[j, k])
        out["mean"][name] = cell = _cell(mean_point[k], mlo[k], mhi[k])
        out["verdicts"][name] = verdict(cell["lower"], cell["upper"], path[0] in LOWER_IS_BETTER)
    return out


def _take(table: RecordTable, idx: np.ndarray) -> RecordTable:
    return RecordTable([table.images[i] for i in idx], [table.labels[i] for i in idx], [table.gts[i] for i in idx],
                       table.evaluated[idx], {k: v[idx] for k, v in table.values.items()})


def compare_files(path_a: str | Path, path_b: str | Path, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """:func:`paired_difference` of two results.json files."""
    a, order = load_table(path_a)
    b, _ = load_table(path_b)
    return paired_difference(a, b, str(path_a), str(path_b), order, resamples, seed)


def _fmt(cell: Mapping[str, Any]) -> str:
    if cell.get("diff") is None:
        return "–"
    if cell.get("lower") is None:
        return f"{cell['diff']:+.3f}"
    return f"{cell['diff']:+.3f} [{cell['lower']:+.3f}, {cell['upper']:+.3f}]"


def table_markdown(result: Mapping[str, Any], metrics: Sequence[str] | None = None) -> str:
    """Per class and class mean: B − A [95 % interval] for ``metrics`` (default: all)."""
    metrics = list(metrics or result["mean"])
    lines = ["| class | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    rows = list(result["classes"].items()) + [("**mean**", result["mean"])]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(row[m]) for m in metrics) + " |")
    return "\n".join(lines)


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per metric: the class-mean difference, its interval and the verdict."""
    return [f"{m}: B − A = {_fmt(result['mean'][m])} → {v}" for m, v in result["verdicts"].items()]


def markdown(result: Mapping[str, Any], headline_only: bool = False) -> str:
    bs = result["bootstrap"]
    metrics = [metric_name(p) for p in HEADLINE] if headline_only else None
    parts = ["# Paired comparison: B − A", "",
             f"A: `{result['a']}`  ", f"B: `{result['b']}`", "",
             f"{result['boxes']} boxes; {bs['resamples']} paired bootstrap resamples of {bs['units']} "
             f"{bs['unit']}s (seed {bs['seed']}); cells: B − A [{bs['confidence']:.0%} interval]. "
             "AFP: lower is better.", "",
             table_markdown(result, metrics), "", "## Verdicts (class mean)", ""]
    parts += [f"- {line}" for line in verdict_lines(result)]
    if result.get("not_compared"):
        parts += ["", f"Not compared (evaluated in only one of the two): {', '.join(result['not_compared'])}"]
    return "\n".join(parts) + "\n"


def run_name(path: str | Path) -> str:
    """A short name for a compared results file: its folder's name (``eval/mlp/results.json`` → ``mlp``),
    or its stem when it lies in the current folder or is not called results.json."""
    path = Path(path)
    name = path.parent.name if path.stem == "results" and path.parent.name not in ("", ".") else path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "results"


def default_output(path_a: str | Path, path_b: str | Path, root: str | Path = "eval") -> Path:
    """Where a comparison goes when no folder is given: ``root/compare_<A>_vs_<B>``, so comparisons of
    different pairs do not overwrite each other."""
    return Path(root) / f"compare_{run_name(path_a)}_vs_{run_name(path_b)}"


def write_comparison(result: Mapping[str, Any], output: str | Path) -> dict[str, Path]:
    """``compare.json`` and ``compare.md`` (every metric) in ``output``."""
    from xcam.core.jsonio import write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": write_json(out / "compare.json", dict(result), indent=1), "markdown": out / "compare.md"}
    files["markdown"].write_text(markdown(result))
    return files
