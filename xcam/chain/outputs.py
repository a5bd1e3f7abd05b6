"""The chain's files: one layout, one writer, one reader.

Layout, under ``OUTPUT/{image_stem}/`` (names kept from the first version of xcam):

* ``_input_image_.png`` — the X-ray as 8-bit grey;
* per finding, prefix ``{model}_{pathology}``: ``_P0.png`` overlay, ``_P1.png`` jet heatmap,
  ``_P2.png`` its red channel, ``_P3.png`` binary mask (each at the original resolution),
  ``_cam.npy`` (float16 CAM in the work grid: the image's aspect at the models' input resolution),
  ``_PBBox.json`` (boxes, metrics) and ``_PBBox.png``;
* per consolidated pathology, prefix ``{pathology}_consolidated``: ``_P0.png``, ``.png`` (mask),
  ``_cam.npy``, ``_bbox.json``, ``_bbox.png``;
* ``metadata.json`` — per model: weights, predictions, CAM files (merged over runs on one image);
* ``analysis.json`` — :func:`xcam.chain.results.result_dict` plus the files written.

Box images follow one colour convention (:data:`xcam.core.render.TRUTH`,
:data:`~xcam.core.render.PREDICTION`) and carry a legend. :func:`read_result` reads a folder back
(``xcam bbox``, ``consolidate`` and ``ensemble`` use it instead of recomputing).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from xcam.core.errors import XcamError
from xcam.core.jsonio import read_json, write_json
from xcam.core.labels import safe_name, same_label

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.chain.results import Consolidation, Finding, ImageResult
    from xcam.core.types import ScoredBox

INPUT_IMAGE_NAME = "_input_image_.png"
METADATA_NAME = "metadata.json"
ANALYSIS_NAME = "analysis.json"
WRITE_THREADS = 2
Box = tuple[float, float, float, float]


def finding_prefix(model: str, pathology: str) -> str:
    """``{model}_{pathology}``: the file prefix of one model's finding."""
    return f"{model}_{safe_name(pathology)}"


def consolidated_prefix(pathology: str) -> str:
    return f"{safe_name(pathology)}_consolidated"


def finding_names(prefix: str) -> dict[str, str]:
    return {"cam": f"{prefix}_cam.npy", "P0": f"{prefix}_P0.png", "P1": f"{prefix}_P1.png", "P2": f"{prefix}_P2.png",
            "P3": f"{prefix}_P3.png", "json": f"{prefix}_PBBox.json", "boxes": f"{prefix}_PBBox.png"}


def consolidated_names(prefix: str) -> dict[str, str]:
    return {"cam": f"{prefix}_cam.npy", "P0": f"{prefix}_P0.png", "P3": f"{prefix}.png", "json": f"{prefix}_bbox.json",
            "boxes": f"{prefix}_bbox.png"}


def box_legend(has_truth: bool, prediction: str = "prediction") -> list[tuple[tuple[int, int, int], str]]:
    """The legend entries of a box image."""
    from xcam.core.render import PREDICTION, TRUTH

    return [(PREDICTION, prediction)] + ([(TRUTH, "ground truth")] if has_truth else [])


def box_items(boxes: Sequence["ScoredBox"], gts: Sequence[Box], pathology: str, *, all_boxes: bool = True
              ) -> list[tuple[Any, ...]]:
    """Draw items: predicted boxes (score labels when several) and ground-truth boxes."""
    from xcam.core.render import PREDICTION, TRUTH

    shown = list(boxes) if all_boxes else list(boxes[:1])
    several = len(shown) > 1
    items: list[tuple[Any, ...]] = [(b, PREDICTION, f"{b.score:.2f}" if several else None) for b in shown]
    items += [(g, TRUTH, pathology) for g in gts]
    return items


def box_report(boxes: Sequence["ScoredBox"], width: int, height: int, gts: Sequence[Box], pathology: str,
               metrics: Mapping[str, float] | None) -> dict[str, Any]:
    """The box part every ``*_PBBox.json``/``*_bbox.json`` shares: image size, boxes, truth, metrics."""
    from xcam.core.metrics import box_dict, box_iou

    report: dict[str, Any] = {
        "image_size": {"width": int(width), "height": int(height)},
        "box": box_dict(boxes[0]) if boxes else None,
        "boxes": [box_dict(b) for b in boxes],
    }
    if gts:
        x, y, w, h = max(gts, key=lambda g: box_iou(boxes[0], g) if boxes else 0.0)
        report["ground_truth"] = {"label": pathology, "x": x, "y": y, "width": w, "height": h, "x2": x + w, "y2": y + h}
        report["ground_truth_boxes"] = [list(g) for g in gts]
        report["metrics"] = dict(metrics or {})
    return report


# -- writer --------------------------------------------------------------------------------
def write_result(
    result: "ImageResult",
    output_dir: str | Path,
    *,
    render: bool = True,
    arrays: bool = True,
    analysis_json: bool = True,
    folder_name: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one image's files under ``output_dir/{folder_name or image stem}/``; returns their paths.

    ``render=False`` skips every PNG (nothing is made at full resolution then); ``arrays=False``
    skips the ``_cam.npy`` files. The time spent is added to ``result.timings`` under ``write``.
    """
    if not result.ok:
        raise XcamError(f"{result.path}: cannot write a failed result ({result.error})")
    with result.timings.stage("write"):
        return _write(result, Path(output_dir) / (folder_name or result.stem), render, arrays, analysis_json, settings)


def _write(result: "ImageResult", folder: Path, render: bool, arrays: bool, analysis_json: bool,
           settings: Mapping[str, Any] | None) -> list[Path]:
    import numpy as np

    from xcam.chain.results import result_dict
    from xcam.core import render as R

    if render and result.image is None:
        raise XcamError(f"{result.path}: rendering needs the decoded image (build the chain with keep_images=True)")
    folder.mkdir(parents=True, exist_ok=True)
    grid = result.grid
    assert grid is not None
    grey = result.image.to_uint8() if render and result.image is not None else None
    written: list[Path] = []
    per_prefix: dict[str, list[str]] = {}
    cam_files: dict[tuple[str, str], str] = {}
    jobs: list[tuple[str, Path, Callable[[], Any]]] = []  # PNGs, rendered and encoded in a thread pool

    def record(prefix: str, path: Path) -> None:
        written.append(path)
        per_prefix.setdefault(prefix, []).append(path.name)

    if grey is not None:
        jobs.append(("", folder / INPUT_IMAGE_NAME, lambda: grey))

    def emit(prefix: str, item: "Finding | Consolidation", names: Mapping[str, str]) -> None:
        if arrays:
            np.save(folder / names["cam"], item.cam.astype(np.float16))
            record(prefix, folder / names["cam"])
        if grey is None:
            return
        full: dict[str, Any] = {}

        def cam_full() -> Any:  # made once per item, only when images are written
            if "cam" not in full:
                full["cam"] = grid.to_original(item.cam)
            return full["cam"]

        items = box_items(item.boxes, item.ground_truth, item.pathology)
        legend = box_legend(bool(item.ground_truth))
        renderers: dict[str, Callable[[], Any]] = {
            "P0": lambda: R.overlay(grey, cam_full()), "P1": lambda: R.heatmap_bgr(cam_full()),
            "P2": lambda: R.red_channel(R.heatmap_bgr(cam_full())),
            "P3": lambda: R.mask_png(grid.to_original(item.mask)),
            "boxes": lambda: R.draw_annotated(grey, items, legend),
        }
        jobs.extend((prefix, folder / names[k], fn) for k, fn in renderers.items() if k in names)

    for r, f in result.findings:
        prefix = finding_prefix(r.model, f.pathology)
        names = finding_names(prefix)
        emit(prefix, f, names)
        if arrays:
            cam_files[(r.model, f.pathology)] = names["cam"]
        report = {
            "model": r.model, "pathology": f.pathology, "probability": f.probability,
            "method": r.method, "layers": list(r.layers), "mask_extractor": r.mask_extractor,
            "strategy": r.strategy, "source_mask": str(folder / names["P3"]) if grey is not None else None,
            "cam": str(folder / names["cam"]) if arrays else None, "work_grid": grid.as_dict(),
            "peak": list(f.peak) if f.peak else None,
        }
        report.update(box_report(f.boxes, result.width, result.height, f.ground_truth, f.pathology, f.metrics))
        record(prefix, write_json(folder / names["json"], report))

    for c in result.consolidated:
        prefix = consolidated_prefix(c.pathology)
        names = consolidated_names(prefix)
        emit(prefix, c, names)
        report = {
            "target_class": c.pathology, "rule": f"ensembler:{c.ensembler}", "models": c.models,
            "probability": c.probability, "strategy": result.results[0].strategy,
            "mask_extractor": result.results[0].mask_extractor, "work_grid": grid.as_dict(),
            "peak": list(c.peak) if c.peak else None,
        }
        report.update(box_report(c.boxes, result.width, result.height, c.ground_truth, c.pathology, c.metrics))
        record(prefix, write_json(folder / names["json"], report))

    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:  # OpenCV releases the GIL while encoding
        for (prefix, _, _), done in zip(jobs, pool.map(lambda job: R.write_png(job[1], job[2]()), jobs)):
            if prefix:
                record(prefix, done)
            else:
                written.append(done)
    meta_path = folder / METADATA_NAME
    written.append(write_json(meta_path, merged_metadata(meta_path, result, cam_files)))
    if analysis_json:
        written.append(write_json(folder / ANALYSIS_NAME, result_dict(result, per_prefix, settings)))
    return written


def merged_metadata(path: Path, result: "ImageResult", cam_files: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """``metadata.json`` with this result's models merged into what is there for the same image
    (a different image's file is replaced). Format: ``xcam ensemble --help``."""
    from xcam import __version__

    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = read_json(path)
        except XcamError:
            data = {}
        other = isinstance(data, dict) and data.get("image") and Path(str(data["image"])).name != Path(result.path).name
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or other:
            data = {}
    data.update({"image": result.path, "image_size": [result.width, result.height], "xcam_version": __version__})
    models = data.setdefault("models", {})
    for r in result.results:
        models[r.model] = {
            "weights": r.weights, "backend": r.backend, "predictions": r.predictions, "method": r.method,
            "layers": list(r.layers), "mask_extractor": r.mask_extractor, "strategy": r.strategy,
            "target_layer": r.target_layer, "input_size": r.input_size,
            "cams": {f.pathology: cam_files[(r.model, f.pathology)] for f in r.findings
                     if (r.model, f.pathology) in cam_files},
            "findings": [{"pathology": f.pathology, "probability": f.probability, "reason": f.reason}
                         for f in r.findings],
        }
    return data


# -- reader --------------------------------------------------------------------------------
@dataclass
class StoredFinding:
    """One finding (or consolidation) as written: boxes in original pixels, the CAM on demand."""

    folder: Path
    model: str | None  # None for a consolidation
    pathology: str
    probability: float | None
    boxes: list["ScoredBox"]
    strategy: str | None
    mask_extractor: str | None
    ground_truth: list[Box] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    cam_file: Path | None = None
    mask_file: Path | None = None

    def cam(self) -> "np.ndarray":
        """The stored float CAM (work grid), checked."""
        if self.cam_file is None:
            raise XcamError(f"{self.folder}: no CAM was written for {self.model or 'consolidated'} {self.pathology}")
        return load_cam(self.cam_file)


@dataclass
class StoredResult:
    """A result folder read back (``analysis.json``, else the ``*_PBBox.json`` files)."""

    folder: Path
    image: str | None
    width: int
    height: int
    findings: list[StoredFinding]
    consolidated: list[StoredFinding]
    predictions: dict[str, dict[str, float]]

    def finding(self, model: str, pathology: str) -> StoredFinding | None:
        return next((f for f in self.findings if f.model == model and same_label(f.pathology, pathology)), None)


def load_cam(path: str | Path) -> "np.ndarray":
    """A float CAM saved with ``np.save`` (2-D, finite, never unpickled); one line naming the file otherwise."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise XcamError(f"{p}: file not found")
    try:
        cam = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - corrupt or not a .npy file
        raise XcamError(f"{p}: not a NumPy .npy CAM ({type(exc).__name__})") from None
    if cam.ndim != 2 or not np.issubdtype(cam.dtype, np.number):
        raise XcamError(f"{p}: a CAM must be a 2-D numeric array, got shape {cam.shape} and type {cam.dtype}")
    return np.nan_to_num(cam.astype(np.float32), nan=0.0)


def _boxes(entries: Any) -> list["ScoredBox"]:
    from xcam.core.types import ScoredBox

    out = []
    for b in entries or []:
        out.append(ScoredBox(float(b["x"]), float(b["y"]), float(b["width"]), float(b["height"]),
                             float(b.get("score", 1.0))))
    return out


def read_box_json(path: str | Path) -> StoredFinding:
    """One ``*_PBBox.json`` or ``*_bbox.json`` (as :func:`write_result` writes them; files from
    before the single-image AP rename have their ``ap@…`` metrics read as ``image_ap@…``)."""
    from xcam.core.metrics import upgrade_metric_keys

    p = Path(path)
    data = read_json(p)
    if not isinstance(data, dict) or "boxes" not in data:
        raise XcamError(f"{p}: not an xcam box file (no 'boxes')")
    folder = p.parent
    cam = data.get("cam")
    if p.name.endswith("_bbox.json"):
        prefix = p.name[: -len("_bbox.json")]
        cam_path = folder / consolidated_names(prefix)["cam"]
        mask_path = folder / consolidated_names(prefix)["P3"]
    else:
        prefix = p.name[: -len("_PBBox.json")]
        cam_path = Path(cam) if cam else folder / finding_names(prefix)["cam"]
        mask_path = folder / finding_names(prefix)["P3"]
    gts = [tuple(float(v) for v in g) for g in data.get("ground_truth_boxes", [])]
    return StoredFinding(
        folder=folder, model=data.get("model"), pathology=str(data.get("pathology") or data.get("target_class") or prefix),
        probability=data.get("probability"), boxes=_boxes(data.get("boxes")), strategy=data.get("strategy"),
        mask_extractor=data.get("mask_extractor"), ground_truth=gts, metrics=upgrade_metric_keys(data.get("metrics")),  # type: ignore[arg-type]
        cam_file=cam_path if cam_path.is_file() else None, mask_file=mask_path if mask_path.is_file() else None,
    )


def read_result(folder: str | Path) -> StoredResult:
    """A result folder written by :func:`write_result` (its box files and ``metadata.json``)."""
    root = Path(folder)
    if not root.is_dir():
        raise XcamError(f"{root}: result folder not found")
    findings = [read_box_json(p) for p in sorted(root.glob("*_PBBox.json"))]
    consolidated = [read_box_json(p) for p in sorted(root.glob("*_consolidated_bbox.json"))]
    meta = read_json(root / METADATA_NAME) if (root / METADATA_NAME).is_file() else {}
    if not isinstance(meta, dict) or not isinstance(meta.get("models", {}), dict):
        raise XcamError(f"{root / METADATA_NAME}: not an xcam metadata.json ('models' must map names to records)")
    size = meta.get("image_size") or [0, 0]
    predictions = {name: dict(m.get("predictions", {})) for name, m in (meta.get("models") or {}).items()
                   if isinstance(m, dict)}
    return StoredResult(root, meta.get("image"), int(size[0]), int(size[1]), findings, consolidated, predictions)
