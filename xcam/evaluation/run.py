"""One evaluation run: box list + images + model(s) → per-box records → tables and files.

Defaults (``DEFAULT_*``, from :mod:`xcam.evaluation.defaults`) are the choices that localized
best on phantoms, see docs/evaluation.md "What localizes best".
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xcam.core.errors import UsageError
from xcam.evaluation import baselines as B
from xcam.evaluation.groundtruth import GroundTruthBox, read_boxes, read_image_labels
from xcam.evaluation.protocol import BoxRecord, summarize

from xcam.evaluation.defaults import (  # noqa: F401 (re-exported)
    DEFAULT_AUG_SMOOTH,
    DEFAULT_ENSEMBLER,
    DEFAULT_LAYERS,
    DEFAULT_MASK,
    DEFAULT_METHOD,
    DEFAULT_STRATEGY,
)


@dataclass
class EvalConfig:
    """Settings of ``xcam evaluate``."""

    imgpath: str
    bbox_csv: str
    csvpath: str | None = None
    models: list[str] = field(default_factory=lambda: ["mobilenetv3"])
    weights: list[str | None] = field(default_factory=lambda: [None])
    model_weights: list[float] | None = None  # ensemble weights per model
    method: str = DEFAULT_METHOD
    mask: str = DEFAULT_MASK
    strategy: str = DEFAULT_STRATEGY
    ensembler: str = DEFAULT_ENSEMBLER
    cam_layers: list[str] | str | None = DEFAULT_LAYERS
    aug_smooth: bool = DEFAULT_AUG_SMOOTH  # pytorch-grad-cam's test-time augmentation (6 passes per CAM)
    mask_options: dict[str, Any] = field(default_factory=dict)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    output: str | None = "eval"
    random_init: bool = False
    device: str = "cpu"
    weights_dir: str | None = None
    accept_changed: bool = False
    montage: int = 4
    progress: bool = True


@dataclass
class EvalResult:
    summary: dict[str, Any]
    records: list[BoxRecord]
    config: EvalConfig
    files: dict[str, Path] = field(default_factory=dict)
    models: list[Any] = field(default_factory=list, repr=False)  # the loaded classifiers
    settings: Any = field(default=None, repr=False)  # the CamSettings used


def load_models(pm: Any, config: EvalConfig) -> list[Any]:
    """The classifiers of the run (PyTorch backend: CAM methods need autograd)."""
    from xcam.core.inference import load_classifier
    from xcam.core.weights import WeightsStore

    names, weights = list(config.models), list(config.weights or [None])
    if len(weights) == 1 and len(names) > 1:
        weights = weights * len(names)
    if len(weights) != len(names):
        raise UsageError(f"{len(weights)} --weights for {len(names)} --models (give one per model, comma-separated)")
    store = WeightsStore.from_env(config.weights_dir, accept_changed=config.accept_changed)
    return [
        load_classifier(pm, name, w or None, backend="torch", device=config.device, store=store,
                        random_init=config.random_init)
        for name, w in zip(names, weights)
    ]


def find_images(imgpath: str | Path, names: Sequence[str]) -> dict[str, Path]:
    from xcam.train.data import _image_index

    folder = Path(imgpath)
    if not folder.is_dir():
        raise UsageError(f"{folder}: image folder not found")
    return _image_index(folder, list(names))


def _argmax_point(cam: np.ndarray) -> tuple[float, float] | None:
    a = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=-np.inf)
    if a.size == 0 or not np.isfinite(a.max()) or a.max() <= a.min():
        return None
    r, c = np.unravel_index(int(np.argmax(a)), a.shape)
    return (c + 0.5, r + 0.5)


def boxes_from_cam(cam: np.ndarray, extract: Callable[..., np.ndarray], strategy: Callable[..., Sequence[Any]],
                   mask_options: dict[str, Any], strategy_options: dict[str, Any]) -> list[tuple[float, ...]]:
    """CAM → mask (extractor plugin) → scored boxes (strategy plugin), as ``(x, y, w, h, score)``."""
    mask = extract(cam, **mask_options)
    return [(b.x, b.y, b.width, b.height, float(b.score)) for b in strategy(mask, cam=cam, **strategy_options)]


def measure_box(gt: GroundTruthBox, cam: np.ndarray | None, width: int, height: int, extract, strategy,
                mask_options: dict[str, Any], strategy_options: dict[str, Any]) -> BoxRecord:
    """The record of one ground-truth box given its class's CAM (``None``: no model predicts it)."""
    from xcam.core.metrics import pointing_game_hit

    record = BoxRecord(gt.image, gt.label, gt.box, width, height)
    if cam is None:
        record.evaluated = False
        return record
    record.preds = boxes_from_cam(cam, extract, strategy, mask_options, strategy_options)
    record.point = _argmax_point(cam)
    record.hit = bool(pointing_game_hit(cam, gt.box))
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


def class_aucs(pm: Any, models: Sequence[Any], config: EvalConfig, combine_probs) -> dict[str, float]:
    """Per-class ROC AUC (scikit-learn) over every labelled image found in the image folder."""
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import tqdm

    from xcam.core.errors import XcamError
    from xcam.core.imageio import load_image
    from xcam.evaluation.cams import ensemble_probabilities

    labels_of = read_image_labels(config.csvpath)
    paths = find_images(config.imgpath, list(labels_of))
    scores: dict[str, list[float]] = defaultdict(list)
    truth: dict[str, list[int]] = defaultdict(list)
    predicted = {m.labels[i] for m in models for i in m.valid_indices}
    for name in tqdm(sorted(paths), desc="classify", disable=not config.progress, leave=False):
        try:
            image = load_image(paths[name])
        except XcamError:
            continue
        probs = ensemble_probabilities(models, image, combine_probs, config.model_weights)
        for label in predicted:
            if label in probs:
                scores[label].append(probs[label])
                truth[label].append(int(label in labels_of[name]))
    out: dict[str, float] = {}
    for label in sorted(predicted):
        y = truth[label]
        if 0 < sum(y) < len(y):
            out[label] = float(roc_auc_score(y, scores[label]))
    return out


def evaluate(config: EvalConfig, pm: Any = None) -> EvalResult:
    """Run the protocol and (with ``config.output``) write the report files."""
    from tqdm.auto import tqdm

    from xcam.core.errors import XcamError
    from xcam.core.imageio import load_image
    from xcam.core.manager import get_plugin_manager
    from xcam.evaluation.cams import CamSettings, ensemble_cams, resolve_cam_method

    pm = pm or get_plugin_manager()
    boxes = read_boxes(config.bbox_csv)
    if not boxes:
        raise UsageError(f"{config.bbox_csv}: no boxes to evaluate")
    method = resolve_cam_method(pm, config.method)
    extract = pm.mask_extractor(config.mask).extract
    strategy = pm.bbox_strategy(config.strategy).boxes
    ensembler = pm.ensembler(config.ensembler)
    models = load_models(pm, config)
    settings = CamSettings(method, ensembler.combine_cams, config.cam_layers,
                           {"aug_smooth": True} if config.aug_smooth else None)

    by_image: dict[str, list[GroundTruthBox]] = defaultdict(list)
    for gt in boxes:
        by_image[gt.image].append(gt)
    paths = find_images(config.imgpath, list(by_image))
    if not paths:
        raise UsageError(f"{config.imgpath}: none of the {len(by_image)} images of {Path(config.bbox_csv).name} was found")
    records: list[BoxRecord] = []
    unreadable: dict[str, str] = {}  # image name -> the one-line reason
    for name in tqdm(sorted(paths), desc="localize", disable=not config.progress, leave=False):
        try:
            image = load_image(paths[name])
        except XcamError as exc:
            unreadable[name] = str(exc)
            continue
        gts = by_image[name]
        cams = ensemble_cams(models, image, sorted({g.label for g in gts}), settings, config.model_weights)
        lung = B.lung_field_box(image.pixels)
        for gt in gts:
            record = measure_box(gt, cams.get(gt.label), image.width, image.height, extract, strategy,
                                 config.mask_options, config.strategy_options)
            record.baselines["lung_field"] = lung
            records.append(record)
    if not records:
        raise UsageError("no box could be evaluated (images unreadable)")
    add_centre_baselines(records)
    aucs = class_aucs(pm, models, config, ensembler.combine_probabilities) if config.csvpath else None
    order = [c for m in models for c in m.labels if c]
    summary = summarize(records, aucs, order)
    summary["images"] = {"with_boxes": len(by_image), "found": len(paths), "missing": len(by_image) - len(paths),
                         "unreadable": unreadable}
    summary["models"] = [{"name": m.name, "weights": m.variant, "cam_layer": "+".join(settings.layers_for(m.model)),
                          "input_size": m.input_size} for m in models]
    result = EvalResult(summary, records, config, models=list(models), settings=settings)
    if config.output:
        from xcam.evaluation.report import write_report

        result.files = write_report(result, models, settings)
    return result


def config_dict(config: EvalConfig) -> dict[str, Any]:
    d = asdict(config)
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in d.items()}
