"""The analysis chain behind ``xcam cam``, ``xcam analyze``, ``xcam evaluate`` and the UI.

image → preprocess → classify → pick classes → CAMs (:func:`compute_cams`) → CAM in the original
pixel grid (:meth:`Geometry.map_to_original`) → mask (mask-extractor plugin, on the float CAM) →
boxes (bbox-strategy plugin, original coordinates) → metrics against ground truth
(:mod:`xcam.core.metrics`) → consolidation across models (ensembler plugin, on CAMs in the
original grid).

Computing and writing are separate: :class:`Pipeline.analyze` returns plain dataclasses
(:class:`ImageAnalysis` → :class:`ModelResult` → :class:`Finding`), :func:`write_outputs` writes
them under ``OUTPUT/{image_stem}/`` with the established names (see ``docs/localization.md``).
Models are loaded once per process (:func:`get_classifier`) and reused across images and
pipelines. Each image records the seconds spent per stage (:data:`STAGES`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.core.imageio import XrayImage
    from xcam.core.inference import Classifier
    from xcam.core.manager import XcamPluginManager
    from xcam.core.preprocess import Geometry
    from xcam.core.types import CamMethodRegistration, ScoredBox
    from xcam.core.weights import WeightsStore

STAGES: tuple[str, ...] = ("load", "model", "cam", "mask_box", "write")
"""Timed stages: decode + preprocess, classification, CAMs, masks/boxes/metrics/consolidation, files."""

INPUT_IMAGE_NAME = "_input_image_.png"
METADATA_NAME = "metadata.json"
ANALYSIS_NAME = "analysis.json"
WRITE_THREADS = min(4, os.cpu_count() or 1)
LABEL_ALIASES: dict[str, str] = {"infiltrate": "infiltration"}
"""NIH's box list spells ``Infiltrate`` where its labels say ``Infiltration``."""

Box = tuple[float, float, float, float]


# -- labels --------------------------------------------------------------------------------
def label_key(label: str) -> str:
    """Case-, space-, ``_``- and ``-``-insensitive key with NIH aliases (``Infiltrate`` = ``Infiltration``)."""
    key = re.sub(r"[\s_\-]+", "", str(label)).lower()
    return LABEL_ALIASES.get(key, key)


def safe_name(text: str) -> str:
    """A label usable in a file name: path separators and control characters replaced by ``-``."""
    return re.sub(r"[/\\\x00-\x1f]", "-", str(text)).strip() or "unnamed"


# -- timing --------------------------------------------------------------------------------
@dataclass
class Timings:
    """Seconds per stage (:data:`STAGES`)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, other: "Timings | Mapping[str, float]") -> None:
        values = other.seconds if isinstance(other, Timings) else other
        for k, v in values.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + float(v)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


# -- results -------------------------------------------------------------------------------
@dataclass
class Finding:
    """One pathology of one model: its CAM, mask and boxes in the original image grid."""

    pathology: str
    class_index: int
    probability: float
    reason: str  # "target", "top-k", "threshold" or "ground-truth"
    cam: "np.ndarray"  # float32 H × W in [0, 1]
    mask: "np.ndarray"  # bool H × W
    boxes: list["ScoredBox"]  # best score first
    ground_truth: list[Box] = field(default_factory=list)
    metrics: dict[str, float] | None = None  # against the best-matching ground-truth box

    @property
    def box(self) -> "ScoredBox | None":
        return self.boxes[0] if self.boxes else None


@dataclass
class ModelResult:
    """One model on one image."""

    model: str
    weights: str
    backend: str
    method: str
    mask_extractor: str
    strategy: str
    predictions: dict[str, float]  # calibrated, the model's valid labels
    findings: list[Finding]
    input_size: int
    target_layer: str
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Consolidation:
    """Several models' CAMs for one pathology combined by an ensembler."""

    pathology: str
    models: list[str]
    probability: float | None
    ensembler: str
    cam: "np.ndarray"
    mask: "np.ndarray"
    boxes: list["ScoredBox"]
    ground_truth: list[Box] = field(default_factory=list)
    metrics: dict[str, float] | None = None

    @property
    def box(self) -> "ScoredBox | None":
        return self.boxes[0] if self.boxes else None


@dataclass
class ImageAnalysis:
    """Everything computed for one image."""

    image: "XrayImage"
    results: list[ModelResult]
    consolidated: list[Consolidation] = field(default_factory=list)
    combined_predictions: dict[str, float] | None = None
    ensembler: str | None = None
    ground_truth: list[tuple[str, Box]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)

    @property
    def stem(self) -> str:
        return self.image.stem

    @property
    def findings(self) -> list[tuple[ModelResult, Finding]]:
        return [(r, f) for r in self.results for f in r.findings]


@dataclass(frozen=True)
class AnalysisSettings:
    """How classes are picked and which plugins turn them into CAMs, masks and boxes.

    Class choice: ``target_classes`` (names matched case-insensitively) when given; else the
    ``top_k`` most probable classes with probability ``≥ threshold``; else every class
    ``≥ threshold``. With ``ground_truth_classes`` a class that has a ground-truth box on the
    image is added too. Plugin names ``None`` mean the ``plugins.toml`` defaults.
    """

    method: str | None = None
    mask: str | None = None
    strategy: str | None = None
    ensembler: str | None = None
    target_classes: tuple[str, ...] = ()
    top_k: int | None = None
    threshold: float = 0.5
    ground_truth_classes: bool = True
    aug_smooth: bool = False
    eigen_smooth: bool = False
    cam_options: Mapping[str, Any] = field(default_factory=dict)
    mask_options: Mapping[str, Any] = field(default_factory=dict)
    strategy_options: Mapping[str, Any] = field(default_factory=dict)


# -- model loading -------------------------------------------------------------------------
_CLASSIFIERS: dict[tuple, "Classifier"] = {}


def get_classifier(
    pm: "XcamPluginManager",
    name: str | None,
    variant: str | None = None,
    *,
    backend: str = "torch",
    device: str = "cpu",
    store: "WeightsStore | None" = None,
    random_init: bool = False,
) -> "Classifier":
    """:func:`xcam.core.inference.load_classifier`, cached for the process.

    Random-weight models are built under ``torch.manual_seed(0)`` (RNG state restored after), so
    ``--random-weights`` runs are reproducible across processes.
    """
    from xcam.core.inference import load_classifier

    reg = pm.classifier(name)
    options = pm.config.plugin_options(reg.name)
    stamp = Path(variant).stat().st_mtime_ns if variant and Path(variant).is_file() else None  # retrained checkpoints
    key = (reg.name, variant, stamp, backend, device, random_init, repr(store), json.dumps(options, sort_keys=True, default=str))
    if key not in _CLASSIFIERS:
        if random_init:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                clf = load_classifier(pm, reg.name, variant, backend=backend, device=device, store=store, random_init=True)
        else:
            clf = load_classifier(pm, reg.name, variant, backend=backend, device=device, store=store)
        _CLASSIFIERS[key] = clf
    return _CLASSIFIERS[key]


def clear_classifier_cache() -> None:
    """Forget the models :func:`get_classifier` loaded (tests, weight changes)."""
    _CLASSIFIERS.clear()


# -- class choice --------------------------------------------------------------------------
def resolve_class(name: str, labels: Sequence[str], valid: Sequence[int]) -> int:
    """The output index of class ``name`` (case-insensitive); :class:`UsageError` listing valid names."""
    for i in valid:
        if label_key(labels[i]) == label_key(name):
            return i
    names = ", ".join(labels[i] for i in valid)
    raise UsageError(f"unknown target class {name!r}; valid: {names}")


def select_classes(
    probs: "np.ndarray",
    labels: Sequence[str],
    valid: Sequence[int],
    settings: AnalysisSettings,
    gt_labels: Sequence[str] = (),
) -> list[tuple[int, str]]:
    """``[(output index, reason), ...]`` per :class:`AnalysisSettings` (no duplicates)."""
    chosen: dict[int, str] = {}
    if settings.target_classes:
        for name in settings.target_classes:
            chosen.setdefault(resolve_class(name, labels, valid), "target")
    else:
        ranked = sorted(valid, key=lambda i: -float(probs[i]))
        positive = [i for i in ranked if float(probs[i]) >= settings.threshold]
        if settings.top_k is not None:
            for i in positive[: max(int(settings.top_k), 0)]:
                chosen[i] = "top-k"
        else:
            for i in positive:
                chosen[i] = "threshold"
    if settings.ground_truth_classes:
        keys = {label_key(g) for g in gt_labels}
        for i in valid:
            if label_key(labels[i]) in keys:
                chosen.setdefault(i, "ground-truth")
    return list(chosen.items())


# -- CAMs ----------------------------------------------------------------------------------
def torch_model(classifier: "Classifier") -> Any:
    """The :class:`XCamModel` behind a classifier, or an error naming the backend."""
    model = getattr(classifier, "model", None)
    if model is None:
        raise XcamError(
            f"{classifier.name}: the {classifier.backend} backend has no PyTorch model for CAM methods; "
            "use --backend torch"
        )
    return model


def compute_cams(
    classifier: "Classifier",
    batch: Any,
    class_indices: Sequence[int],
    method: "CamMethodRegistration | str | None" = None,
    *,
    pm: "XcamPluginManager | None" = None,
    cam_classifier: "Classifier | Callable[[], Classifier] | None" = None,
    **options: Any,
) -> "np.ndarray":
    """CAMs for ``batch`` ``[B, 1, S, S]`` (numpy or tensor), one class index per image →
    float32 ``[B, S, S]`` in [0, 1] at the model's input resolution.

    Extension point for fast paths (e.g. the ONNX in-graph all-class Grad-CAM of ``xcam.export``):
    a classifier may offer ``cam_fast_path(batch, class_indices, method_name, options)`` returning
    ``[B, h, w]`` maps, or ``None`` when it cannot serve that method/options; its maps are resized to
    ``S × S`` and normalized here. Otherwise the method plugin runs on the PyTorch model of
    ``cam_classifier`` (default: ``classifier``; a callable is called only then), from raw logits.
    """
    import numpy as np

    from xcam.plugins.cam_methods import normalize_maps

    if method is None or isinstance(method, str):
        if pm is None:
            from xcam.core.manager import get_plugin_manager

            pm = get_plugin_manager()
        method = pm.cam_method(method)
    size = int(batch.shape[-1])
    fast = getattr(classifier, "cam_fast_path", None)
    if callable(fast):
        maps = fast(np.asarray(batch, dtype=np.float32), list(class_indices), method.name, dict(options))
        if maps is not None:
            return normalize_maps(_resize_maps(np.asarray(maps, dtype=np.float32), size))
    import torch

    if callable(cam_classifier):  # a loader (classifiers themselves are not callable)
        cam_classifier = cam_classifier()
    model = torch_model(cam_classifier or classifier)
    from xcam.export.fast_cam import torch_cam_fast_path  # exact Grad-CAM for GAP→linear heads

    maps = torch_cam_fast_path(model, batch, list(class_indices), method.name, dict(options))
    if maps is not None:
        return normalize_maps(_resize_maps(np.asarray(maps, dtype=np.float32), size))
    tensor = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    maps = method.compute(model, tensor, list(class_indices), **options)
    return normalize_maps(_resize_maps(np.asarray(maps, dtype=np.float32), size))


def _resize_maps(maps: "np.ndarray", size: int) -> "np.ndarray":
    import cv2
    import numpy as np

    if maps.shape[-2:] == (size, size):
        return maps
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in maps]) if len(maps) else maps


# -- masks, boxes, metrics -------------------------------------------------------------------
def _options(pm: "XcamPluginManager", name: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = pm.config.plugin_options(name)
    merged.update({k: v for k, v in extra.items() if v is not None})
    return merged


def localize(
    pm: "XcamPluginManager", cam: "np.ndarray", settings: AnalysisSettings
) -> tuple["np.ndarray", list["ScoredBox"]]:
    """Mask (extractor plugin on the float CAM) and boxes (strategy plugin), best score first."""
    import numpy as np

    extractor = pm.mask_extractor(settings.mask)
    mask = np.asarray(extractor.extract(cam, **_options(pm, extractor.name, settings.mask_options)), dtype=bool)
    strategy = pm.bbox_strategy(settings.strategy)
    boxes = list(strategy.boxes(mask, cam=cam, **_options(pm, strategy.name, settings.strategy_options)))
    return mask, sorted(boxes, key=lambda b: -b.score)


def box_metrics(
    boxes: Sequence["ScoredBox"], cam: "np.ndarray", gts: Sequence[Box], width: int, height: int
) -> dict[str, float] | None:
    """:func:`xcam.core.metrics.image_metrics` against the ground-truth box the top box overlaps
    most, plus ``pointing_game`` (1.0 when the CAM's maximum lies in that box)."""
    from xcam.core.metrics import box_iou, image_metrics, pointing_game_hit

    if not gts:
        return None
    top = boxes[0] if boxes else None
    gt = max(gts, key=lambda g: box_iou(top, g)) if top is not None else gts[0]
    out = image_metrics(list(boxes), gt, width, height)
    out["pointing_game"] = float(pointing_game_hit(cam, gt))
    return out


def ground_truth_for(label: str, ground_truth: Sequence[tuple[str, Box]]) -> list[Box]:
    key = label_key(label)
    return [box for name, box in ground_truth if label_key(name) == key]


# -- the pipeline ----------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A classifier (any backend) and, built on first need, the PyTorch classifier its CAMs run on
    (an ONNX classifier whose in-graph CAMs serve the method never needs one)."""

    classifier: "Classifier"
    load_cam_classifier: Callable[[], "Classifier"]
    _cam_classifier: "Classifier | None" = None

    @property
    def cam_classifier(self) -> "Classifier":
        if self._cam_classifier is None:
            self._cam_classifier = self.load_cam_classifier()
        return self._cam_classifier

    @property
    def cam_classifier_if_loaded(self) -> "Classifier | None":
        return self._cam_classifier


class Pipeline:
    """Analyze images with one or more models; models load on first use and stay loaded.

    ``models``: plugin names, each optionally ``name:variant``; ``weights`` maps a model name to a
    variant (or is one variant for a single model).
    """

    def __init__(
        self,
        pm: "XcamPluginManager",
        models: Sequence[str],
        settings: AnalysisSettings | None = None,
        *,
        weights: Mapping[str, str] | str | None = None,
        backend: str = "torch",
        device: str = "cpu",
        store: "WeightsStore | None" = None,
        random_init: bool = False,
    ) -> None:
        if not models:
            raise UsageError("no model given")
        self.pm = pm
        self.settings = settings or AnalysisSettings()
        self.backend, self.device, self.store, self.random_init = backend, device, store, random_init
        self.specs: list[tuple[str, str | None]] = []
        for spec in models:
            name, _, variant = str(spec).partition(":")
            name = pm.classifier(name.strip()).name  # unknown names fail here, before any work
            if isinstance(weights, str):
                variant = variant or weights
            elif weights:
                variant = variant or weights.get(name)
            self.specs.append((name, variant or None))
        if len({n for n, _ in self.specs}) != len(self.specs):
            raise UsageError(f"a model is listed twice: {', '.join(n for n, _ in self.specs)}")
        self.method = pm.cam_method(self.settings.method)
        self.mask_extractor = pm.mask_extractor(self.settings.mask)
        self.strategy = pm.bbox_strategy(self.settings.strategy)
        self.ensembler = pm.ensembler(self.settings.ensembler)
        self._loaded: dict[str, LoadedModel] = {}
        self.load_seconds = 0.0

    # models
    def model(self, name: str) -> LoadedModel:
        if name not in self._loaded:
            start = time.perf_counter()
            variant = dict(self.specs)[name]
            kw = dict(device=self.device, store=self.store, random_init=self.random_init)
            clf = get_classifier(self.pm, name, variant, backend=self.backend, **kw)
            if getattr(clf, "model", None) is not None:
                self._loaded[name] = LoadedModel(clf, lambda: clf, clf)
            else:
                self._loaded[name] = LoadedModel(clf, lambda: get_classifier(self.pm, name, variant, **kw))
            self.load_seconds += time.perf_counter() - start
        return self._loaded[name]

    def load_all(self) -> None:
        """Load every model now (so per-image timings exclude loading); checks target classes."""
        for name, _ in self.specs:
            self.model(name)
        self.check_target_classes()

    def check_target_classes(self) -> None:
        """Every target class must be a label of at least one model (error lists the valid names)."""
        if not self.settings.target_classes:
            return
        loaded = [self.model(n).classifier for n, _ in self.specs]
        for target in self.settings.target_classes:
            if not any(label_key(c.labels[i]) == label_key(target) for c in loaded for i in c.valid_indices):
                names = sorted({c.labels[i] for c in loaded for i in c.valid_indices})
                raise UsageError(f"unknown target class {target!r}; valid: {', '.join(names)}")

    # analysis
    def analyze(self, image: "XrayImage | str | Path", ground_truth: Sequence[tuple[str, Box]] = ()) -> ImageAnalysis:
        """Run the chain on one image (a path or a decoded :class:`XrayImage`)."""
        from xcam.core.imageio import XrayImage, load_image

        timings = Timings()
        with timings.stage("load"):
            xray = image if isinstance(image, XrayImage) else load_image(image)
        self.check_target_classes()
        gts = [(str(label), tuple(float(v) for v in box)) for label, box in ground_truth]
        analysis = ImageAnalysis(image=xray, results=[], ground_truth=gts, timings=timings)  # type: ignore[arg-type]
        for name, _ in self.specs:
            analysis.results.append(self._run_model(name, xray, gts, timings))
        with timings.stage("mask_box"):
            self._consolidate(analysis)
        return analysis

    def _run_model(self, name: str, xray: "XrayImage", gts: list[tuple[str, Box]], timings: Timings) -> ModelResult:
        import numpy as np

        from xcam.core.preprocess import preprocess

        loaded = self.model(name)
        clf = loaded.classifier
        own = Timings()
        with own.stage("load"):
            x, geometry = preprocess(xray, clf.input_size, clf.preprocessing)
        with own.stage("model"):
            probs = clf.predict(x[None])[0]
        predictions = {clf.labels[i]: float(probs[i]) for i in clf.valid_indices}
        settings = self.settings
        if settings.target_classes:  # in a multi-model run, each model takes the targets it knows
            known = [t for t in settings.target_classes
                     if any(label_key(clf.labels[i]) == label_key(t) for i in clf.valid_indices)]
            # a model that knows none of the targets explains only its ground-truth classes
            settings = replace(settings, target_classes=tuple(known), **({} if known else {"top_k": 0}))
        picks = select_classes(probs, clf.labels, clf.valid_indices, settings, [g[0] for g in gts])
        findings: list[Finding] = []
        if picks:
            with own.stage("cam"):
                batch = np.repeat(x[None], len(picks), axis=0)
                cams = compute_cams(
                    clf, batch, [i for i, _ in picks], self.method, pm=self.pm, cam_classifier=lambda: loaded.cam_classifier,
                    aug_smooth=self.settings.aug_smooth, eigen_smooth=self.settings.eigen_smooth,
                    **dict(self.settings.cam_options),
                )
            with own.stage("mask_box"):
                for (index, reason), cam in zip(picks, cams):
                    findings.append(self._finding(clf.labels[index], index, float(probs[index]), reason, cam, geometry, xray, gts))
        timings.add(own)
        model = getattr(loaded.cam_classifier_if_loaded, "model", None)
        return ModelResult(
            model=clf.name, weights=clf.variant, backend=clf.backend, method=self.method.name,
            mask_extractor=self.mask_extractor.name, strategy=self.strategy.name, predictions=predictions,
            findings=findings, input_size=clf.input_size,
            target_layer=getattr(model, "target_layer_path", "") if model is not None
            else getattr(clf, "cam_layer", ""),  # CAMs came from the ONNX graph
            seconds=dict(own.seconds),
        )

    def _finding(
        self, label: str, index: int, prob: float, reason: str, cam_model: "np.ndarray", geometry: "Geometry",
        xray: "XrayImage", gts: list[tuple[str, Box]],
    ) -> Finding:
        import numpy as np

        cam = np.clip(geometry.map_to_original(cam_model), 0.0, 1.0).astype(np.float32)
        mask, boxes = localize(self.pm, cam, self.settings)
        boxes = [_clip_box(b, xray.width, xray.height) for b in boxes]
        own_gts = ground_truth_for(label, gts)
        metrics = box_metrics(boxes, cam, own_gts, xray.width, xray.height)
        return Finding(label, index, prob, reason, cam, mask, boxes, own_gts, metrics)

    def _consolidate(self, analysis: ImageAnalysis) -> None:
        """Combine the CAMs of every pathology that two or more models produced."""
        if len(analysis.results) < 2:
            return
        reg = self.ensembler
        analysis.ensembler = reg.name
        analysis.combined_predictions = reg.combine_probabilities([r.predictions for r in analysis.results], None)
        groups: dict[str, list[tuple[str, Finding]]] = {}
        for result, finding in analysis.findings:
            groups.setdefault(label_key(finding.pathology), []).append((result.model, finding))
        combined_keys = {label_key(k): v for k, v in analysis.combined_predictions.items()}
        xray = analysis.image
        for key, members in groups.items():
            if len(members) < 2:
                continue
            label = members[0][1].pathology
            cam = reg.combine_cams([f.cam for _, f in members], None)
            mask, boxes = localize(self.pm, cam, self.settings)
            boxes = [_clip_box(b, xray.width, xray.height) for b in boxes]
            gts = ground_truth_for(label, analysis.ground_truth)
            analysis.consolidated.append(Consolidation(
                pathology=label, models=[m for m, _ in members], probability=combined_keys.get(key),
                ensembler=reg.name, cam=cam, mask=mask, boxes=boxes, ground_truth=gts,
                metrics=box_metrics(boxes, cam, gts, xray.width, xray.height),
            ))


def _clip_box(box: "ScoredBox", width: int, height: int) -> "ScoredBox":
    from xcam.core.types import ScoredBox

    x0, y0 = min(max(box.x, 0.0), width), min(max(box.y, 0.0), height)
    x1, y1 = min(max(box.x2, 0.0), width), min(max(box.y2, 0.0), height)
    return ScoredBox(float(x0), float(y0), float(x1 - x0), float(y1 - y0), float(box.score))


# -- ground truth files ----------------------------------------------------------------------
def read_bbox_csv(path: str | Path) -> dict[str, list[tuple[str, Box]]]:
    """NIH ``BBox_List_2017.csv`` → ``{image file name: [(label as written, (x, y, w, h)), ...]}``
    (read by :func:`xcam.evaluation.groundtruth.read_boxes`; errors are one line naming file and row)."""
    from xcam.evaluation.groundtruth import read_boxes

    out: dict[str, list[tuple[str, Box]]] = {}
    for gt in read_boxes(path):
        out.setdefault(gt.image, []).append((gt.raw_label, gt.box))
    return out


# -- writing -------------------------------------------------------------------------------
def finding_prefix(model: str, pathology: str) -> str:
    return f"{model}_{safe_name(pathology)}"


def _box_json(boxes: Sequence["ScoredBox"], width: int, height: int, gts: Sequence[Box], pathology: str,
              metrics: Mapping[str, float] | None) -> dict[str, Any]:
    """The shared box report (as ``xcam bbox`` writes it)."""
    from xcam.core.metrics import box_dict

    report: dict[str, Any] = {
        "image_size": {"width": int(width), "height": int(height)},
        "box": box_dict(boxes[0]) if boxes else None,
        "boxes": [box_dict(b) for b in boxes],
    }
    if gts:
        x, y, w, h = max(gts, key=lambda g: _iou(boxes[0], g) if boxes else 0.0)
        report["ground_truth"] = {"label": pathology, "x": x, "y": y, "width": w, "height": h, "x2": x + w, "y2": y + h}
        report["ground_truth_boxes"] = [list(g) for g in gts]
        report["metrics"] = dict(metrics or {})
    return report


def _iou(a: Any, b: Box) -> float:
    from xcam.core.metrics import box_iou

    return box_iou(a, b)


def _write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def merge_metadata(path: Path, analysis: ImageAnalysis, cam_files: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """``metadata.json`` (format in ``xcam/commands/ensemble.py``) with this analysis's models merged
    into what is already there for the same image (a different image's file is replaced)."""
    from xcam import __version__

    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}
        other_image = isinstance(data, dict) and data.get("image") and \
            Path(str(data["image"])).name != Path(analysis.image.path).name
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or other_image:
            data = {}
    image = analysis.image
    data.update({
        "image": image.path, "image_size": [image.width, image.height], "xcam_version": __version__,
    })
    models = data.setdefault("models", {})
    for r in analysis.results:
        models[r.model] = {
            "weights": r.weights,
            "backend": r.backend,
            "predictions": r.predictions,
            "method": r.method,
            "mask_extractor": r.mask_extractor,
            "strategy": r.strategy,
            "target_layer": r.target_layer,
            "input_size": r.input_size,
            "cams": {f.pathology: cam_files[(r.model, f.pathology)] for f in r.findings if (r.model, f.pathology) in cam_files},
            "findings": [{"pathology": f.pathology, "probability": f.probability, "reason": f.reason} for f in r.findings],
        }
    return data


def analysis_dict(analysis: ImageAnalysis, files: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """A JSON-able summary of an :class:`ImageAnalysis` (no arrays)."""
    from xcam.core.metrics import box_dict

    image = analysis.image
    files = files or {}

    def finding(model: str, f: Finding) -> dict[str, Any]:
        prefix = finding_prefix(model, f.pathology)
        return {
            "pathology": f.pathology, "probability": f.probability, "reason": f.reason,
            "box": box_dict(f.box) if f.box else None, "boxes": [box_dict(b) for b in f.boxes],
            "mask_fraction": float(f.mask.mean()) if f.mask.size else 0.0,
            "ground_truth": [list(g) for g in f.ground_truth], "metrics": f.metrics,
            "files": list(files.get(prefix, [])),
        }

    return {
        "image": image.path,
        "image_size": {"width": image.width, "height": image.height},
        "ground_truth": [{"label": label, "box": list(box)} for label, box in analysis.ground_truth],
        "models": [
            {
                "model": r.model, "weights": r.weights, "backend": r.backend, "method": r.method,
                "mask_extractor": r.mask_extractor, "strategy": r.strategy, "target_layer": r.target_layer,
                "predictions": r.predictions, "findings": [finding(r.model, f) for f in r.findings],
                "seconds": r.seconds,
            }
            for r in analysis.results
        ],
        "ensembler": analysis.ensembler,
        "combined_predictions": analysis.combined_predictions,
        "consolidated": [
            {
                "pathology": c.pathology, "models": c.models, "probability": c.probability, "ensembler": c.ensembler,
                "box": box_dict(c.box) if c.box else None, "boxes": [box_dict(b) for b in c.boxes],
                "ground_truth": [list(g) for g in c.ground_truth], "metrics": c.metrics,
                "files": list(files.get(f"{safe_name(c.pathology)}_consolidated", [])),
            }
            for c in analysis.consolidated
        ],
        "seconds": dict(analysis.timings.seconds),
    }


def write_outputs(
    analysis: ImageAnalysis,
    output_dir: str | Path,
    render: bool = True,
    *,
    arrays: bool = True,
    analysis_json: bool = False,
    folder_name: str | None = None,
) -> list[Path]:
    """Write the files of one analysis under ``output_dir/{image_stem}/``; returns their paths.

    ``render=False`` skips every PNG; ``arrays=False`` also skips the ``_cam.npy`` files (JSON only).
    ``metadata.json`` merges with an existing one; ``analysis.json`` is written with ``analysis_json``.
    The time spent is added to ``analysis.timings`` under ``write``.
    """
    with analysis.timings.stage("write"):
        return _write(analysis, Path(output_dir) / (folder_name or analysis.stem), render, arrays, analysis_json)


def _write(analysis: ImageAnalysis, folder: Path, render: bool, arrays: bool, analysis_json: bool) -> list[Path]:
    import numpy as np

    from xcam.core.render import GREEN, RED, draw_boxes, heatmap_bgr, mask_png, overlay, red_channel, write_png

    folder.mkdir(parents=True, exist_ok=True)
    image = analysis.image
    grey = image.to_uint8()
    written: list[Path] = []
    per_prefix: dict[str, list[str]] = {}
    cam_files: dict[tuple[str, str], str] = {}

    pngs: list[tuple[str, Path, Callable[[], Any]]] = []  # rendered and encoded in a thread pool

    def add(prefix: str, path: Path) -> None:
        written.append(path)
        per_prefix.setdefault(prefix, []).append(path.name)

    if render:
        pngs.append(("", folder / INPUT_IMAGE_NAME, lambda: grey))

    def emit(prefix: str, pathology: str, cam: "np.ndarray", mask: "np.ndarray", boxes: Sequence["ScoredBox"],
             gts: Sequence[Box], names: Mapping[str, str]) -> None:
        if arrays:
            cam_path = folder / names["cam"]
            np.save(cam_path, cam.astype(np.float16))
            add(prefix, cam_path)
        if render:
            items: list[tuple[Any, ...]] = [(b, GREEN) for b in boxes] + [(g, RED, pathology) for g in gts]
            renderers: dict[str, Callable[[], Any]] = {
                "P0": lambda: overlay(grey, cam), "P1": lambda: heatmap_bgr(cam),
                "P2": lambda: red_channel(heatmap_bgr(cam)), "P3": lambda: mask_png(mask),
                "bbox_png": lambda: draw_boxes(grey, items),
            }
            pngs.extend((prefix, folder / names[k], fn) for k, fn in renderers.items() if k in names)

    for r, f in analysis.findings:
        prefix = finding_prefix(r.model, f.pathology)
        names = {"cam": f"{prefix}_cam.npy", "P0": f"{prefix}_P0.png", "P1": f"{prefix}_P1.png",
                 "P2": f"{prefix}_P2.png", "P3": f"{prefix}_P3.png", "bbox_png": f"{prefix}_PBBox.png"}
        emit(prefix, f.pathology, f.cam, f.mask, f.boxes, f.ground_truth, names)
        if arrays:
            cam_files[(r.model, f.pathology)] = names["cam"]
        report = {
            "source_mask": str(folder / names["P3"]) if render else None,
            "model": r.model, "pathology": f.pathology, "probability": f.probability,
            "method": r.method, "mask_extractor": r.mask_extractor, "strategy": r.strategy,
            "cam": str(folder / names["cam"]) if arrays else None,
            "mask_size": {"width": int(f.mask.shape[1]), "height": int(f.mask.shape[0])},
        }
        report.update(_box_json(f.boxes, image.width, image.height, f.ground_truth, f.pathology, f.metrics))
        add(prefix, _write_json(folder / f"{prefix}_PBBox.json", report))

    for c in analysis.consolidated:
        prefix = f"{safe_name(c.pathology)}_consolidated"
        names = {"cam": f"{prefix}_cam.npy", "P0": f"{prefix}_P0.png", "P3": f"{prefix}.png",
                 "bbox_png": f"{prefix}_bbox.png"}
        emit(prefix, c.pathology, c.cam, c.mask, c.boxes, c.ground_truth, names)
        report = {
            "target_class": c.pathology, "method": f"ensembler:{c.ensembler}", "models": c.models,
            "probability": c.probability, "strategy": analysis.results[0].strategy,
            "mask_extractor": analysis.results[0].mask_extractor,
            "grid": {"width": int(c.mask.shape[1]), "height": int(c.mask.shape[0])},
        }
        report.update(_box_json(c.boxes, image.width, image.height, c.ground_truth, c.pathology, c.metrics))
        add(prefix, _write_json(folder / f"{prefix}_bbox.json", report))

    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:  # OpenCV releases the GIL while encoding
        for (prefix, path, _), done in zip(pngs, pool.map(lambda job: write_png(job[1], job[2]()), pngs)):
            if prefix:
                add(prefix, done)
            else:
                written.append(done)
    meta_path = folder / METADATA_NAME
    written.append(_write_json(meta_path, merge_metadata(meta_path, analysis, cam_files)))
    if analysis_json:
        written.append(_write_json(folder / ANALYSIS_NAME, analysis_dict(analysis, per_prefix)))
    return written
