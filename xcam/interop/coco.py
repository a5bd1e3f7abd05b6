"""xcam's boxes in COCO's formats, and dataset-level detection AP from pycocotools.

Two files, each exactly what pycocotools reads (``COCO(dataset).loadRes(results)``):

* the **results** file (``--coco FILE``): a JSON *list*, as the COCO results format specifies —
  one entry per box: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in original image
  pixels and ``score``, plus two fields pycocotools ignores: ``cam_score`` (the box's own CAM score)
  and ``model`` (the model, or ``ensemble``, whose CAM gave the box);
* the **data set** file: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories``
  and ``annotations`` — the ground-truth boxes (``area`` = w·h, ``iscrowd`` 0) when the command
  knows them, else none. ``--coco preds.json`` writes it beside the results as
  ``preds.dataset.json`` (``xcam evaluate --coco-gt FILE`` names it itself).

**Score.** COCO ranks every detection of a class across the data set by its score, so a box's
``score`` is the **class probability** of its finding (the ensembler's for a consolidated finding):
boxes of one finding share it and keep the chain's order (best CAM score first), which pycocotools'
stable sort preserves.

**Which boxes.** One detector per file: for each image and class, the boxes of the finding an
evaluation scores (:meth:`xcam.chain.results.ImageResult.localized`): the consolidation when
several models explained the class, else the one model's finding.

**Stable ids.** ``category_id`` is 1 + the label's position in torchxrayvision's 18-label order
(:data:`CATEGORY_ORDER`; spellings compare with :func:`~xcam.core.labels.label_key`, so the box list's
``Infiltrate`` is ``Infiltration``); another label gets ``1000 + hash``. ``image_id`` is a 48-bit
hash of the file name, the key xcam's ground truth uses, so files from different commands over the
same images join; files that share a name in one data set are keyed by their path instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from xcam.core.errors import UsageError, XcamError
from xcam.core.labels import canonical_label, label_key

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.results import ImageResult

Box = tuple[float, float, float, float]

CATEGORY_ORDER: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)
"""torchxrayvision's label order: ``category_id`` = 1 + position (NIH's and CheXpert's labels are in it)."""

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                               "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
"""The 12 numbers of ``COCOeval.stats``, in order (-1: nothing to measure, e.g. no small boxes)."""

_KNOWN = {label_key(name): (i + 1, name) for i, name in enumerate(CATEGORY_ORDER)}


def category(label: str) -> tuple[int, str]:
    """``(category_id, name)`` of a label spelling (stable across runs and commands)."""
    key = label_key(label)
    if key in _KNOWN:
        return _KNOWN[key]
    digest = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return 1000 + digest % 1_000_000_000, canonical_label(label)


def image_id(key: str) -> int:
    """A stable 48-bit id for an image key (its file name, or its path when names clash)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)


def dataset_path_for(results_path: str | Path) -> Path:
    """Where ``--coco FILE`` puts the data set file: ``preds.json`` → ``preds.dataset.json``."""
    p = Path(results_path)
    return p.with_name(f"{p.stem if p.suffix == '.json' else p.name}.dataset.json")


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header (no decoding); ``None`` when it cannot be read."""
    from xcam.core.imageio import DICOM_SUFFIXES

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        if p.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
            import pydicom

            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(p) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - moved, unreadable or not an image: the size is left out
        return None


@dataclass
class _Image:
    path: str
    width: int | None
    height: int | None


@dataclass
class CocoCollector:
    """Gathers images, predicted and ground-truth boxes; writes and evaluates them as COCO."""

    images: dict[str, _Image] = field(default_factory=dict)  # by path as given
    predictions: list[tuple[str, str, Box, float, float, str]] = field(default_factory=list)
    ground_truth: list[tuple[str, str, Box]] = field(default_factory=list)
    has_ground_truth: bool = False  # a ground-truth source was given (an image without boxes is a negative)

    # -- adding ----------------------------------------------------------------------------
    def add_image(self, path: str | Path, width: int | None, height: int | None) -> None:
        self.images.setdefault(str(path), _Image(str(path), width, height))

    def add_prediction(self, path: str | Path, label: str, box: Box, score: float, cam_score: float = 1.0,
                       model: str = "") -> None:
        """One predicted box of ``path`` (added with :meth:`add_image` first)."""
        self.predictions.append((str(path), label, tuple(float(v) for v in box), float(score),  # type: ignore[arg-type]
                                 float(cam_score), model))

    def add_truth(self, path: str | Path, label: str, box: Box) -> None:
        self.ground_truth.append((str(path), label, tuple(float(v) for v in box)))  # type: ignore[arg-type]

    def add_result(self, result: "ImageResult", ground_truth: bool = False) -> None:
        """A chain result: its localized findings' boxes (score: the class probability) and, with
        ``ground_truth`` (the command has a ground-truth source), its ground-truth boxes."""
        if not result.ok:
            return
        self.add_image(result.path, result.width, result.height)
        owner = {id(f): r.model for r, f in result.findings}
        for item in result.localized().values():
            if item.probability is None:  # no probability, no rank: left out
                continue
            model = owner.get(id(item), "ensemble")
            for b in item.boxes:
                self.add_prediction(result.path, item.pathology, (b.x, b.y, b.width, b.height), item.probability,
                                    b.score, model)
        if ground_truth:
            self.has_ground_truth = True
            for label, box in result.ground_truth:
                self.add_truth(result.path, label, box)

    # -- ids ---------------------------------------------------------------------------------
    def _keys(self) -> dict[str, str]:
        """path → image key: the file name, or the path where two inputs share a name."""
        by_name: dict[str, list[str]] = {}
        for path in self.images:
            by_name.setdefault(Path(path).name, []).append(path)
        keys = {}
        for name, paths in by_name.items():
            for path in paths:
                keys[path] = name if len(paths) == 1 else path
        return keys

    def _ids(self) -> dict[str, int]:
        keys = self._keys()
        ids = {path: image_id(key) for path, key in keys.items()}
        seen: dict[int, str] = {}
        for path, i in ids.items():
            if i in seen:  # pragma: no cover - a 48-bit collision
                raise XcamError(f"{path} and {seen[i]}: the same COCO image id {i}; rename one of them")
            seen[i] = path
        return ids

    def _category_table(self) -> dict[int, str]:
        table: dict[int, str] = {}
        labels = [p[1] for p in self.predictions] + [g[1] for g in self.ground_truth]
        for label in labels:
            cid, name = category(label)
            if table.setdefault(cid, name) != name and label_key(table[cid]) != label_key(name):
                raise XcamError(f"labels {table[cid]!r} and {name!r} get the same COCO category id {cid}")
        return dict(sorted(table.items()))

    # -- COCO documents ---------------------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        """The COCO results list (what ``COCO.loadRes`` reads)."""
        ids = self._ids()
        return [{"image_id": ids[path], "category_id": category(label)[0], "bbox": list(box), "score": score,
                 "cam_score": cam_score, "model": model}
                for path, label, box, score, cam_score, model in self.predictions]

    def dataset(self) -> dict[str, Any]:
        """The COCO data set: images, categories and the ground-truth annotations (if any)."""
        ids, keys = self._ids(), self._keys()
        images = []
        for path, im in self.images.items():
            entry: dict[str, Any] = {"id": ids[path], "file_name": keys[path]}
            if im.width and im.height:
                entry.update(width=int(im.width), height=int(im.height))
            images.append(entry)
        annotations = [
            {"id": n, "image_id": ids[path], "category_id": category(label)[0], "bbox": list(box),
             "area": max(box[2], 0.0) * max(box[3], 0.0), "iscrowd": 0}
            for n, (path, label, box) in enumerate(self.ground_truth, start=1)
        ]
        categories = [{"id": cid, "name": name, "supercategory": "finding"}
                      for cid, name in self._category_table().items()]
        from xcam import __version__

        info = {"description": "written by xcam", "version": __version__,
                "score": "class probability of the finding (results file)"}
        return {"info": info, "images": images, "categories": categories, "annotations": annotations}

    def write(self, results_path: str | Path, dataset_path: str | Path | None = None) -> tuple[Path, Path]:
        """Write the results list and the data set (default :func:`dataset_path_for`)."""
        from xcam.core.jsonio import write_json

        results = write_json(results_path, self.results())
        dataset = write_json(dataset_path or dataset_path_for(results_path), self.dataset())
        return results, dataset

    def evaluate(self, cat_ids: Sequence[int] | None = None) -> "CocoScores":
        """COCOeval (bbox) of the predictions against the ground truth gathered here."""
        return coco_eval(self.dataset(), self.results(), cat_ids)


# -- evaluation --------------------------------------------------------------------------------
@dataclass
class CocoScores:
    """What pycocotools' COCOeval measured: the 12 ``stats`` by name and AP per category."""

    stats: dict[str, float]
    per_class: dict[str, dict[str, float]]
    images: int
    categories: int
    detections: int

    def line(self) -> str:
        """One line for the terminal."""
        s = self.stats
        return (f"COCO bbox AP (pycocotools, {self.images} images, {self.categories} classes, "
                f"{self.detections} boxes): AP {s['AP']:.3f}, AP50 {s['AP50']:.3f}, AP75 {s['AP75']:.3f}, "
                f"AR100 {s['AR100']:.3f}")

    def as_dict(self) -> dict[str, Any]:
        return {"stats": self.stats, "per_class": self.per_class, "images": self.images,
                "categories": self.categories, "detections": self.detections,
                "score": "class probability", "tool": "pycocotools COCOeval (bbox)"}


def _load_json(source: Any) -> Any:
    if isinstance(source, (str, Path)):
        from xcam.core.jsonio import read_json

        return read_json(source)
    return source


def load_coco(dataset: Mapping[str, Any] | str | Path) -> Any:
    """A ``pycocotools.coco.COCO`` from a data set dict or file (quietly; one-line errors)."""
    from pycocotools.coco import COCO

    data = _load_json(dataset)
    where = str(dataset) if isinstance(dataset, (str, Path)) else "COCO data set"
    if not isinstance(data, Mapping) or not isinstance(data.get("images"), list):
        raise UsageError(f"{where}: not a COCO data set (no 'images' list)")
    coco = COCO()
    coco.dataset = dict(data)
    coco.dataset.setdefault("annotations", [])
    coco.dataset.setdefault("categories", [])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{where}: malformed COCO data set ({type(exc).__name__}: {exc})") from None
    return coco


def coco_eval(ground_truth: Mapping[str, Any] | str | Path, predictions: Sequence[Mapping[str, Any]] | str | Path,
              cat_ids: Sequence[int] | None = None) -> CocoScores:
    """Dataset-level detection AP with pycocotools' ``COCOeval`` (``iouType="bbox"``).

    ``ground_truth``: a COCO data set (dict or file); ``predictions``: a COCO results list (or
    file). ``cat_ids`` restricts the classes averaged (default: every category of the data set; a
    class with ground truth but no prediction counts as AP 0, one without ground truth is left out).
    AP is COCO's: 101-point interpolated precision, averaged over IoU 0.50:0.05:0.95 (``AP``) or at
    0.50 / 0.75, up to 100 detections per image. An empty results list (which ``loadRes`` cannot
    read) scores 0 wherever there is ground truth.
    """
    import numpy as np
    from pycocotools.cocoeval import COCOeval

    gt = load_coco(ground_truth)
    dets = _load_json(predictions)
    where = str(predictions) if isinstance(predictions, (str, Path)) else "COCO results"
    if not isinstance(dets, list):
        raise UsageError(f"{where}: a COCO results file is a JSON list of boxes")
    known = set(gt.getImgIds())
    stray = {d.get("image_id") for d in dets if isinstance(d, Mapping)} - known
    if stray:
        raise UsageError(f"{where}: {len(stray)} image id(s) not in the data set (e.g. {sorted(stray)[0]})")
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            if dets:
                dt = gt.loadRes([dict(d) for d in dets])
            else:
                dt = load_coco({"images": gt.dataset["images"], "categories": gt.dataset.get("categories", [])})
            ev = COCOeval(gt, dt, "bbox")
            if cat_ids is not None:
                ev.params.catIds = sorted(int(c) for c in cat_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    except (KeyError, TypeError, ValueError, IndexError, AssertionError) as exc:
        raise UsageError(f"{where}: cannot evaluate ({type(exc).__name__}: {exc})") from None
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    per_class: dict[str, dict[str, float]] = {}
    precision = ev.eval["precision"]  # [T, R, K, A, M]: IoU, recall, class, area, max detections
    names = {c["id"]: c["name"] for c in gt.dataset.get("categories", [])}
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        if (p > -1).any():
            per_class[names.get(cid, str(cid))] = {"AP": float(p[p > -1].mean()),
                                                   "AP50": float(p[iou50][p[iou50] > -1].mean())}
    used = set(ev.params.catIds)
    return CocoScores(stats, per_class, len(known), len(per_class) if used else 0,
                      sum(1 for d in dets if d.get("category_id") in used))


def evaluate_files(dataset_path: str | Path, results_path: str | Path) -> CocoScores:
    """:func:`coco_eval` of a data set file and a results file (as xcam writes them)."""
    return coco_eval(Path(dataset_path), Path(results_path))


def from_box_records(records: Iterable[Any]) -> tuple[CocoCollector, list[int]]:
    """A collector from ``xcam evaluate``'s per-box records (``image``, ``label``, ``gt``, ``width``,
    ``height``, ``preds`` ``(x, y, w, h, cam score)``, ``probability``, ``evaluated``) and the ids
    of the classes some model predicts (the ones to average: see :func:`coco_eval`). Several
    ground-truth boxes of one class on an image share their predictions: those are added once."""
    collector = CocoCollector(has_ground_truth=True)
    seen: set[tuple[str, str]] = set()
    evaluated: set[int] = set()
    for r in records:
        collector.add_image(r.image, r.width, r.height)
        collector.add_truth(r.image, r.label, r.gt)
        if not r.evaluated:
            continue
        evaluated.add(category(r.label)[0])
        key = (r.image, label_key(r.label))
        if key in seen or r.probability is None:
            continue
        seen.add(key)
        for x, y, w, h, cam_score in r.preds:
            collector.add_prediction(r.image, r.label, (x, y, w, h), float(r.probability), cam_score)
    return collector, sorted(evaluated)


def collect(results: Iterable["ImageResult"], ground_truth: bool = False) -> CocoCollector:
    """A :class:`CocoCollector` filled from chain results."""
    collector = CocoCollector()
    for r in results:
        collector.add_result(r, ground_truth)
    return collector
