"""Report files of ``xcam saliency``: ``saliency.json`` (everything, per-step sanity included),
``saliency.md`` (one table, a row per method and model) and ``saliency.png`` (the chart)."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

COLUMNS = ("method", "model", "route", "images ok / failed", "pointing", "T(IoBB>0.25)", "ROAD MoRF ↓",
           "ROAD LeRF ↑", "ROAD (LeRF−MoRF)/2 ↑", "sanity Spearman ↓", "sanity SSIM ↓", "sanity", "ms/image")


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _verdict(sanity: Mapping[str, Any] | None) -> str:
    if not sanity or sanity.get("flagged") is None:
        return "–"
    return "**FLAGGED**" if sanity["flagged"] else "passed"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of :data:`COLUMNS` (``–`` where a number was not measured)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        loc, faith, sanity = r.get("localization") or {}, r.get("faithfulness") or {}, r.get("sanity") or {}
        cells = [r["method"], r["model"], r.get("route") or "–", f"{r['images_ok']} / {r['images_failed']}",
                 _f(loc.get("pointing")), _f(loc.get("iobb_0.25")), _f(faith.get("morf")), _f(faith.get("lerf")),
                 _f(faith.get("combined")), _f(sanity.get("spearman")), _f(sanity.get("ssim")), _verdict(sanity),
                 _f(r.get("ms_per_image"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(summary: Mapping[str, Any]) -> str:
    """``saliency.md``: the table, how to read it, the failures."""
    cfg = summary["config"]
    parts = [
        "# Saliency evaluation (xcam saliency)", "",
        f"{summary['images']} images, models: {', '.join(m['name'] for m in summary['models'])}; "
        f"profile `{summary['settings']['profile']}`; CPU: {summary.get('cpu', cpu_model())}.", "",
        table(summary["rows"]), "",
        "* **pointing**, **T(IoBB>0.25)**: class means over the ground-truth boxes (Wang et al. 2017), when a box "
        "list was given.",
        f"* **ROAD** (Rong et al. 2022, pytorch-grad-cam's imputer) at percentiles {list(cfg['percentiles'])}: the "
        "class probability's change when the most (MoRF) or least (LeRF) relevant pixels are imputed; "
        "(LeRF−MoRF)/2 higher is more faithful, a random map scores about 0.",
        f"* **sanity** (Adebayo et al. 2018): mean Spearman / SSIM between the trained and the fully randomized "
        f"model's maps ({cfg['sanity_steps']} cascading steps, top layers first); **FLAGGED** when Spearman > "
        f"{cfg['sanity_threshold']}: the map barely depends on the model.",
        "* **ms/image**: the chain's classification + CAM + mask/box time per image with this method "
        "(decoding excluded; the machine may be shared).",
    ]
    failures = [f"- {r['method']} / {r['model']}: {e}" for r in summary["rows"] for e in r["errors"]]
    failures += [f"- {r['method']} / {r['model']}: {r['stopped']}" for r in summary["rows"] if r.get("stopped")]
    failures += [f"- {path}: {reason}" for path, reason in summary["unreadable"].items()]
    if failures:
        parts += ["", "## Failures", "", *failures]
    return "\n".join(parts) + "\n"


def chart(summary: Mapping[str, Any], path: Path) -> Path:
    """``saliency.png``: ROAD, the sanity cascade, localization and ms/image per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    names = [r["method"] if len(summary["models"]) == 1 else f"{r['method']}\n{r['model']}" for r in rows]
    y = list(range(len(rows)))
    fig, axes = plt.subplots(2, 2, figsize=(12, max(6.0, 1.2 + 0.45 * len(rows) * 2)))
    ax = axes[0][0]
    ax.barh(y, [(r.get("faithfulness") or {}).get("combined") or 0.0 for r in rows], color="#4477aa")
    ax.set_yticks(y, names)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_title("faithfulness: ROAD (LeRF−MoRF)/2 (higher is better)")
    ax = axes[0][1]
    threshold = summary["config"]["sanity_threshold"]
    for r, name in zip(rows, names):
        steps = (r.get("sanity") or {}).get("steps") or []
        if steps:
            ax.plot([0] + [s["step"] for s in steps], [1.0] + [s["spearman"] if s["spearman"] is not None
                                                               else float("nan") for s in steps],
                    marker="o", label=name.replace("\n", " "))
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"flag threshold {threshold}")
    ax.set_xlabel("cascading randomization step (0: trained; last: every layer)")
    ax.set_ylabel("Spearman vs trained maps")
    ax.set_title("sanity: maps of randomized models (lower is better)")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    loc = [(r.get("localization") or {}) for r in rows]
    if any(loc):
        ax.barh([v - 0.2 for v in y], [d.get("pointing") or 0.0 for d in loc], height=0.4, label="pointing")
        ax.barh([v + 0.2 for v in y], [d.get("iobb_0.25") or 0.0 for d in loc], height=0.4, label="T(IoBB>0.25)")
        ax.legend(fontsize=7)
        ax.set_xlim(0, 1)
    else:
        ax.text(0.5, 0.5, "no ground-truth boxes given", ha="center", va="center", transform=ax.transAxes)
    ax.set_yticks(y, names)
    ax.set_title("localization (class means)")
    ax = axes[1][1]
    ms = [r.get("ms_per_image") or 0.0 for r in rows]
    ax.barh(y, ms, color="#999933")
    ax.set_yticks(y, names)
    if max(ms, default=0) > 0 and max(ms) / max(min(v for v in ms if v > 0), 1e-9) > 50:
        ax.set_xscale("log")
    ax.set_title(f"ms/image (CPU: {summary.get('cpu', cpu_model())[:40]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(summary: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """The three files under ``out``."""
    from xcam.core.jsonio import write_json

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary.setdefault("cpu", cpu_model())
    files = {"json": write_json(folder / "saliency.json", summary)}
    files["markdown"] = folder / "saliency.md"
    files["markdown"].write_text(markdown(summary))
    files["chart"] = chart(summary, folder / "saliency.png")
    return files
