"""One evaluation run: the chain over the images of a box list + Wang et al. 2017's protocol.

Each image goes through :class:`xcam.chain.engine.Chain` with the classes of its ground-truth
boxes as the only classes explained (the settings profile decides CAMs, masks and boxes, exactly
as for ``analyze`` and ``score``); every ground-truth box becomes a :class:`BoxRecord` from the
finding of its class (the consolidated one when several models explain it). The records keep their
work-grid CAM (float16) so the report's montage and the demo's cases are drawn without computing
any CAM again. Every localization number gets a 95 % bootstrap interval (:mod:`xcam.evaluation.bootstrap`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from xcam.core.errors import UsageError
from xcam.core.labels import label_key
from xcam.core.nih import GroundTruthBox, image_index, read_boxes, read_image_labels
from xcam.evaluation import baselines as B
from xcam.evaluation.bootstrap import RecordTable, add_intervals, record_table
from xcam.evaluation.preflight import box_problem, fit_box
from xcam.evaluation.protocol import BoxRecord, summarize

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.engine import Chain
    from xcam.chain.results import Consolidation, Finding, ImageResult
    from xcam.chain.settings import ChainSettings


@dataclass
class EvalConfig:
    """Settings of ``xcam evaluate`` (CAM, mask and box choices come from ``profile`` and
    ``overrides``: an :class:`xcam.chain.settings.Overrides`)."""

    imgpath: str
    bbox_csv: str
    csvpath: str | None = None
    models: list[str] = field(default_factory=lambda: ["mobilenetv3"])  # each "name" or "name:variant"
    model_weights: list[float] | None = None  # ensemble weight per model
    profile: str | None = None
    overrides: Any = None
    output: str | None = "eval"
    random_init: bool = False
    device: str = "cpu"
    backend: str = "torch"
    weights_dir: str | None = None
    accept_changed: bool = False
    montage: int = 4
    progress: bool = True
    batch_size: int = 4
    workers: int = 2
    fail_fast: bool = False  # the first exception a plugin raises stops the run
    max_plugin_failures: int | None = None  # stop when one plugin fails on this many images in a row (None: 20; 0: never)
    bootstrap: int = 1000  # resamples for the 95 % intervals (0: none); see xcam.evaluation.bootstrap
    bootstrap_seed: int = 0


@dataclass
class EvalResult:
    summary: dict[str, Any]
    records: list[BoxRecord]
    config: EvalConfig
    settings: "ChainSettings"
    files: dict[str, Path] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict, repr=False)  # image name → file
    table: RecordTable | None = field(default=None, repr=False)  # per-box numbers the intervals resample


def build_eval_chain(pm: Any, config: EvalConfig) -> "Chain":
    """The chain of the run: settings from the profile and overrides, models loaded once."""
    from xcam.chain.engine import build_chain, with_model_weights
    from xcam.chain.models import LoadOptions
    from xcam.chain.settings import ClassChoice, resolve_settings
    from xcam.core.weights import WeightsStore

    settings = resolve_settings(pm, config.profile, config.overrides)
    store = WeightsStore.from_env(config.weights_dir, accept_changed=config.accept_changed)
    limits: dict[str, Any] = {"fail_fast": config.fail_fast}
    if config.max_plugin_failures is not None:
        limits["max_plugin_failures"] = config.max_plugin_failures or None
    chain = build_chain(pm, list(config.models), settings, ClassChoice.none(ground_truth=True), store=store,
                        keep_images=True, load=LoadOptions(backend=config.backend, device=config.device,
                                                           random_init=config.random_init), **limits)
    chain.settings = with_model_weights(settings, config.model_weights, len(chain.models))
    return chain


def find_images(imgpath: str | Path, names: Sequence[str]) -> dict[str, Path]:
    return image_index(imgpath, list(names))


def record_of(gt: GroundTruthBox, result: "ImageResult", localized: dict[str, "Finding | Consolidation"]
              ) -> BoxRecord:
    """The record of one ground-truth box from its image's chain result."""
    from xcam.core.metrics import point_hit

    record = BoxRecord(gt.image, gt.label, gt.box, result.width, result.height)
    item = localized.get(label_key(gt.label))
    if item is None:
        record.evaluated = False
        return record
    record.preds = [(b.x, b.y, b.width, b.height, float(b.score)) for b in item.boxes]
    record.probability = item.probability
    record.point = item.peak
    record.hit = point_hit(item.peak, gt.box)
    record.cam = item.cam.astype(np.float16)
    record.grid = result.grid
    return record


def add_centre_baselines(records: Sequence[BoxRecord]) -> None:
    """The centre box of each record: mean ground-truth size (fraction of the image) of its class."""
    by_class: dict[str, list[BoxRecord]] = defaultdict(list)
    for r in records:
        by_class[r.label].append(r)
    for rs in by_class.values():
        fw, fh = B.mean_size([r.gt for r in rs], [r.width for r in rs], [r.height for r in rs])
        for r in rs:
            r.baselines["centre"] = B.centre_box(r.width, r.height, fw * r.width, fh * r.height)


def class_aucs(chain: "Chain", config: EvalConfig) -> dict[str, float]:
    """Per-class ROC AUC (scikit-learn) over every labelled image found in the image folder, from
    the chain's probabilities (the ensembler's when several models run)."""
    from sklearn.metrics import roc_auc_score

    from xcam.chain.settings import ClassChoice
    from xcam.core.progress import progress_bar

    assert config.csvpath is not None
    labels_of = read_image_labels(config.csvpath)
    paths = find_images(config.imgpath, list(labels_of))
    classify = chain.with_choice(ClassChoice.none())
    classify.keep_images = False
    scores: dict[str, list[float]] = defaultdict(list)
    truth: dict[str, list[int]] = defaultdict(list)
    names = sorted(paths)
    by_path = {str(paths[n]): n for n in names}
    with progress_bar(total=len(names), desc="classify", enabled=config.progress, unit="image") as bar:
        for result in classify.stream([paths[n] for n in names], batch_size=16, workers=config.workers):
            bar.update(1)
            if result.error is not None:
                continue
            probs = result.combined_predictions or result.results[0].predictions
            name = by_path[result.path]
            for label, p in probs.items():
                scores[label].append(float(p))
                truth[label].append(int(label in labels_of[name]))
    out: dict[str, float] = {}
    for label in sorted(scores):
        y = truth[label]
        if 0 < sum(y) < len(y):
            out[label] = float(roc_auc_score(y, scores[label]))
    return out


def evaluate(config: EvalConfig, pm: Any = None, chain: "Chain | None" = None) -> EvalResult:
    """Run the protocol and (with ``config.output``) write the report files."""
    from xcam.chain.engine import ground_truth_lookup
    from xcam.core.manager import get_plugin_manager
    from xcam.core.progress import progress_bar

    pm = pm or get_plugin_manager()
    boxes = read_boxes(config.bbox_csv)
    if not boxes:
        raise UsageError(f"{config.bbox_csv}: no boxes to evaluate")
    chain = chain or build_eval_chain(pm, config)
    by_image: dict[str, list[GroundTruthBox]] = defaultdict(list)
    for gt in boxes:
        by_image[gt.image].append(gt)
    paths = find_images(config.imgpath, list(by_image))
    if not paths:
        raise UsageError(f"{config.imgpath}: none of the {len(by_image)} images of {Path(config.bbox_csv).name} was found")
    table = {name: [(g.label, g.box) for g in gts] for name, gts in by_image.items()}
    names = sorted(paths)
    records: list[BoxRecord] = []
    unreadable: dict[str, str] = {}  # image name -> the one-line reason
    excluded: list[str] = []  # ground-truth boxes outside their image: one line each, not scored
    with progress_bar(total=len(names), desc="localize", enabled=config.progress, unit="image") as bar:
        for result in chain.stream([paths[n] for n in names], batch_size=config.batch_size, workers=config.workers,
                                   ground_truth=ground_truth_lookup(table)):
            bar.update(1)
            name = Path(result.path).name
            if result.error is not None:
                unreadable[name] = f"{result.path}: {result.error}"
                continue
            localized = result.localized()
            lung = B.lung_field_box(result.image.pixels) if result.image is not None else None
            for gt in by_image[name]:
                fitted = fit_box(gt.box, result.width, result.height)
                if fitted is None:
                    excluded.append(box_problem(config.bbox_csv, name, gt.label, gt.box, result.width, result.height))
                    continue
                if fitted != tuple(float(v) for v in gt.box):  # overhangs by a rounding error: clipped
                    gt = replace(gt, x=fitted[0], y=fitted[1], width=fitted[2], height=fitted[3])
                record = record_of(gt, result, localized)
                if lung is not None:
                    record.baselines["lung_field"] = lung
                records.append(record)
            result.image = None  # the pixels are not needed any more
    if not records:
        why = f" ({excluded[0]})" if excluded else " (images unreadable)"
        raise UsageError(f"no box could be evaluated{why}")
    add_centre_baselines(records)
    aucs = class_aucs(chain, config) if config.csvpath else None
    order = [label for m in chain.models for label in m.valid_labels]
    summary = summarize(records, aucs, order)
    table = record_table(records)
    add_intervals(summary, table, config.bootstrap, config.bootstrap_seed)
    summary["images"] = {"with_boxes": len(by_image), "found": len(paths), "missing": len(by_image) - len(paths),
                         "unreadable": unreadable}
    summary["boxes"] = {"in_csv": len(boxes), "evaluated": len(records), "excluded": excluded}
    plans = {m.ref.key: chain.plan(m) for m in chain.models}
    summary["models"] = [{"name": m.ref.key, "weights": m.classifier.variant, "backend": m.classifier.backend,
                          "cam_method": plans[m.ref.key].label, "cam_layer": "+".join(plans[m.ref.key].layers),
                          "aug_smooth": plans[m.ref.key].aug_smooth, "input_size": m.classifier.input_size}
                         for m in chain.models]
    summary["settings"] = chain.settings.as_dict()
    result = EvalResult(summary, records, config, chain.settings, paths=paths, table=table)
    if config.output:
        from xcam.evaluation.report import write_report

        result.files = write_report(result, config_dict(config))
    return result


def config_dict(config: EvalConfig) -> dict[str, Any]:
    d = asdict(config)
    d["overrides"] = {k: v for k, v in (d.get("overrides") or {}).items() if v is not None} if d.get("overrides") else {}
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in d.items()}
