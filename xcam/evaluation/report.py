"""Report files of an evaluation: ``results.json`` (with the per-box table that ``--compare``
resamples, under ``per_record``), ``results.md`` (values with their bootstrap intervals), ``per_box.csv``,
``accuracy_vs_threshold.png`` and ``montage.png`` (best and worst boxes, CAM overlaid; boxes in
the one colour convention of :mod:`xcam.core.render`, with a legend)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from xcam.core import metrics as M

CAM_T_IOBB, CAM_T_IOU = "0.25", "0.1"


def excluded_note(summary: dict[str, Any]) -> str:
    """``; boxes outside their image (not scored): N of M`` when the box list had such boxes."""
    boxes = summary.get("boxes") or {}
    n = len(boxes.get("excluded", []))
    return f"; boxes outside their image (not scored): {n} of {boxes.get('in_csv')}" if n else ""

def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def with_interval(row: Mapping[str, Any], *path: str) -> str:
    """A cell: the value and, when the row has one, its bootstrap interval — ``0.529 [0.441, 0.612]``."""
    from xcam.evaluation.bootstrap import get_path, interval

    value = _f(get_path(row, path))
    bounds = interval(row, path)
    return f"{value} [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds and value != "–" else value


def full_table(summary: Mapping[str, Any]) -> str:
    """Wang et al.'s table: T(IoBB), T(IoU), AFP, pointing, mIoU, AUC per class and the mean."""
    tb = [str(t) for t in M.IOBB_THRESHOLDS]
    tu = [str(t) for t in M.IOU_THRESHOLDS]
    head = (["class", "boxes"] + [f"IoBB>{t}" for t in tb] + [f"IoU>{t}" for t in tu]
            + ["AFP@IoBB0.25", "pointing", "mIoU", "AUC"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(summary["classes"].items()) + [("**mean**", summary["mean"])]
    for name, r in rows:
        if not r:
            continue
        ci = with_interval
        cells = [name, str(r["n_boxes"])] + [ci(r, "iobb", t) for t in tb] + [ci(r, "iou", t) for t in tu]
        cells += [ci(r, "afp", "0.25"), ci(r, "pointing"), ci(r, "miou"), _f(r.get("auc"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_table(summary: Mapping[str, Any]) -> str:
    """CAM beside both baselines on the headline numbers (CAM / lung field / centre box)."""
    head = ["class", "pointing (CAM / lung / centre)", f"T(IoBB>{CAM_T_IOBB})", f"T(IoU>{CAM_T_IOU})", "mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bl = summary["baselines"]
    names = list(summary["classes"]) + ["mean"]
    for name in names:
        cam = summary["mean"] if name == "mean" else summary["classes"][name]
        lung = bl["lung_field"]["mean"] if name == "mean" else bl["lung_field"]["classes"][name]
        centre = bl["centre"]["mean"] if name == "mean" else bl["centre"]["classes"][name]
        if not cam:
            continue

        def trio(*path: str) -> str:
            return " / ".join(with_interval(x, *path) for x in (cam, lung, centre))

        label = f"**{name}**" if name == "mean" else name
        lines.append("| " + " | ".join([
            label, trio("pointing"), trio("iobb", CAM_T_IOBB), trio("iou", CAM_T_IOU), trio("miou"),
        ]) + " |")
    return "\n".join(lines)


def bootstrap_note(b: Mapping[str, Any]) -> str:
    """How the intervals in brackets were computed (xcam.evaluation.bootstrap)."""
    dropped = b["resamples"] - b.get("complete", b["resamples"])
    note = (f"In brackets: {b['confidence']:.0%} bootstrap interval ({b['method']}, {b['resamples']} resamples of "
            f"the {b['units']} {b['unit']}s, seed {b['seed']}; the class mean's from the class means of the resamples")
    if dropped:
        note += f", over the {b['complete']} resamples that drew every class"
    return note + ")."


def markdown(summary: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    models = "; ".join(
        f"{m['name']} ({m['weights']}): CAM `{m['cam_method']}` on {m['cam_layer']}"
        + (" with test-time augmentation" if m.get("aug_smooth") else "")
        for m in summary.get("models", []))
    s = summary.get("settings") or {}
    parts = [
        "# Localization evaluation (Wang et al. 2017 protocol)", "",
        f"Profile `{s.get('profile', 'default')}`. Models: {models}. Mask `{s.get('mask')}` "
        f"{s.get('mask_options') or ''}; boxes `{s.get('strategy')}`; ensembler `{s.get('ensembler')}`; "
        f"masks and boxes computed at work size `{s.get('work_size')}`.",
        f"Box list: `{config['bbox_csv']}`; images found: {summary['images']['found']} of "
        f"{summary['images']['with_boxes']}, unreadable: {len(summary['images'].get('unreadable', {}))}"
        f"{excluded_note(summary)}.", "",
        "## CAM beside the baselines", "",
        "Each cell: CAM / whole-lung-field box / centre box of the class's mean size.", "",
        *([bootstrap_note(summary["bootstrap"]), ""] if summary.get("bootstrap") else []),
        baseline_table(summary), "",
        "## Full table", "", full_table(summary), "",
    ]
    if summary.get("skipped"):
        parts += [f"Not evaluated (no model predicts the class): {summary['skipped']}", ""]
    return "\n".join(parts)


def plot_accuracy(summary: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xcam.evaluation.bootstrap import interval

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, ts in ((axes[0], "iobb", M.IOBB_THRESHOLDS), (axes[1], "iou", M.IOU_THRESHOLDS)):
        for name, r in summary["classes"].items():
            ax.plot(ts, [r[key][str(t)] for t in ts], "o-", lw=1, ms=3, label=name)
        if summary["mean"]:
            ax.plot(ts, [summary["mean"][key][str(t)] for t in ts], "k-", lw=2.5, label="mean (CAM)")
            bounds = [interval(summary["mean"], (key, str(t))) for t in ts]
            if all(bounds):
                ax.fill_between(ts, [b[0] for b in bounds], [b[1] for b in bounds], color="k", alpha=0.12,
                                lw=0, label="95 % interval of the mean")
        for bname, style in (("lung_field", "k:"), ("centre", "k--")):
            mean = summary["baselines"][bname]["mean"]
            if mean:
                ax.plot(ts, [mean[key][str(t)] for t in ts], style, lw=1.5, label=f"mean ({bname} baseline)")
        ax.set_xlabel(f"T({'IoBB' if key == 'iobb' else 'IoU'})")
        ax.set_ylabel("localization accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def case_legend() -> list[tuple[tuple[int, int, int], str]]:
    from xcam.core.render import PREDICTION, TRUTH

    return [(PREDICTION, "xcam box"), (TRUTH, "ground truth")]


def case_image(record: Any, image: Any, alpha: float = 0.4, legend: bool = True) -> Any:
    """A record's CAM overlaid on its image with the truth and the predicted box (and a legend)."""
    from xcam.core.render import PREDICTION, TRUTH, add_legend, draw_boxes, overlay

    cam = record.grid.to_original(record.cam.astype("float32"))
    items = [(record.gt, TRUTH, record.label)]
    if record.preds:
        items.append((record.preds[0][:4], PREDICTION, f"IoU {record.iou:.2f}"))
    art = draw_boxes(overlay(image.to_uint8(), cam, alpha), items)
    return add_legend(art, case_legend()) if legend else art


def _tile(record: Any, image: Any, size: int = 256) -> Any:
    import cv2

    from xcam.core.render import add_legend

    art = case_image(record, image, 0.35, legend=False)
    art = cv2.resize(art, (size, round(size * image.height / image.width)), interpolation=cv2.INTER_AREA)
    text = f"{record.label[:14]} IoU {record.iou:.2f}"
    cv2.putText(art, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return add_legend(art, case_legend())  # drawn at the tile's size, so it stays small


def montage(records: Sequence[Any], paths: Mapping[str, Path], out: Path, k: int = 4) -> Path | None:
    """Best ``k`` and worst ``k`` boxes by IoU (then IoBB), one row each, from the records' own CAMs."""
    import numpy as np

    from xcam.core.imageio import load_image
    from xcam.core.render import write_png

    done = [r for r in records if r.evaluated and r.cam is not None and r.image in paths]
    if not done or k <= 0:
        return None
    ranked = sorted(done, key=lambda r: (r.iou, r.iobb, r.hit))
    worst, best = ranked[:k], ranked[::-1][:k]
    rows = []
    for group in (best, worst):
        tiles = [_tile(r, load_image(paths[r.image])) for r in group]
        h = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        tiles += [np.zeros_like(tiles[0])] * (k - len(tiles))
        rows.append(np.hstack(tiles))
    return write_png(out, np.vstack(rows))


def write_report(result: Any, config: Mapping[str, Any]) -> dict[str, Path]:
    """Write the report files of an evaluation result (``config``: its settings as JSON)."""
    from xcam.core.jsonio import write_json

    out = Path(result.config.output)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "results.md", "per_box": out / "per_box.csv",
             "plot": out / "accuracy_vs_threshold.png"}
    from xcam.evaluation.bootstrap import record_table

    table = getattr(result, "table", None) or record_table(result.records)
    payload = {"config": config, "summary": result.summary, "records": [r.as_dict() for r in result.records],
               "per_record": table.to_json()}  # what `xcam evaluate --compare` resamples
    write_json(files["json"], payload, indent=1)
    files["markdown"].write_text(markdown(result.summary, config))
    with open(files["per_box"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "x", "y", "w", "h", "evaluated", "pred_x", "pred_y", "pred_w", "pred_h",
                    "n_preds", "iobb", "iou", "pointing_hit", "lung_iobb", "lung_iou", "centre_iobb", "centre_iou"])
        for r in result.records:
            top = r.preds[0][:4] if r.preds else ("", "", "", "")
            lung, centre = r.baseline_scores("lung_field"), r.baseline_scores("centre")
            w.writerow([r.image, r.label, *r.gt, r.evaluated, *top, len(r.preds), f"{r.iobb:.4f}", f"{r.iou:.4f}",
                        int(r.hit), f"{lung['iobb']:.4f}", f"{lung['iou']:.4f}", f"{centre['iobb']:.4f}",
                        f"{centre['iou']:.4f}"])
    plot_accuracy(result.summary, files["plot"])
    m = montage(result.records, result.paths, out / "montage.png", result.config.montage)
    if m is not None:
        files["montage"] = m
    return files
