"""``xcam bbox``: the boxes of a binary mask, with metrics against a ground-truth box.

The mask is ``{model}_{pathology}_P3.png`` or ``{pathology}_consolidated.png`` of a result folder
(:mod:`xcam.chain.outputs` lays it out) or any two-level PNG. What was recorded beside it is read
through :mod:`xcam.chain.outputs`: the box file (``_PBBox.json`` / ``_bbox.json``), the stored CAM
(``_cam.npy``, in the work grid), ``metadata.json`` and ``_input_image_.png``.

* A box file beside the mask and no option that changes the result (no ``--profile``,
  ``--strategy``, ``--strategy-option``, ``--min-area``, ``--max-boxes``, or ones that name what
  was recorded): the recorded boxes are reused as they are, and only the metrics against
  ``--ground-truth`` (else the recorded ground truth) are computed.
* Otherwise (another strategy or other options, or a mask from elsewhere): the boxes are computed
  from the mask with the settings' strategy (the stored CAM, resized to the mask, scores them) and
  mapped to original pixels: the image size recorded in the box file or ``metadata.json``, else
  ``_input_image_.png``'s, else the mask's own.

Writes the box file (the record beside the mask, updated; ``boxes_from`` says ``recorded`` or
``mask``) and its image (prediction magenta, ground truth green, with a legend). The helpers here
are shared by ``consolidate`` and ``ensemble``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import click

from xcam.commands._common import profile_option
from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.chain.localize import Localizer
    from xcam.chain.outputs import StoredFinding
    from xcam.chain.settings import ChainSettings
    from xcam.core.manager import XcamPluginManager
    from xcam.core.preprocess import WorkGrid
    from xcam.core.types import ScoredBox

Box = tuple[float, float, float, float]
ASPECT_TOLERANCE = 0.02
CONSOLIDATED_SUFFIX = "_consolidated"


# -- names ------------------------------------------------------------------------------------
def parse_mask_name(path: str | Path) -> tuple[str, str | None, str | None]:
    """``(prefix, model, pathology)`` from ``{model}_{pathology}_P3.png``.

    The model is the part before the first ``_`` (classifier names cannot contain one: enforced by
    :class:`~xcam.core.types.ClassifierRegistration`); the pathology is the rest without ``_P3``
    (it may hold spaces and underscores). Other names give ``(stem, None, None)``.
    """
    stem = Path(path).stem
    if not stem.endswith("_P3"):
        return stem, None, None
    prefix = stem[: -len("_P3")]
    model, sep, pathology = prefix.partition("_")
    if not sep or not model or not pathology:
        return prefix, None, None
    return prefix, model, pathology


def mask_names(path: str | Path) -> dict[str, str]:
    """The file names that belong with a mask (:mod:`xcam.chain.outputs`): a consolidation's for
    ``{pathology}_consolidated.png``, else a finding's (``X_P3.png`` → ``X_PBBox.json``; any other
    ``X.png`` → ``X_PBBox.json``)."""
    from xcam.chain.outputs import consolidated_names, finding_names

    stem = Path(path).stem
    if stem.endswith(CONSOLIDATED_SUFFIX) and len(stem) > len(CONSOLIDATED_SUFFIX):
        return consolidated_names(stem)
    return finding_names(parse_mask_name(path)[0])


def mask_pathology(path: str | Path) -> str | None:
    """The pathology a mask's name gives (``None`` for a name from elsewhere)."""
    stem = Path(path).stem
    if stem.endswith(CONSOLIDATED_SUFFIX) and len(stem) > len(CONSOLIDATED_SUFFIX):
        return stem[: -len(CONSOLIDATED_SUFFIX)]
    return parse_mask_name(path)[2]


# -- grids --------------------------------------------------------------------------------------
def check_same_aspect(a: tuple[int, ...], b: tuple[int, ...], what: str) -> None:
    """Raise when two ``(height, width)`` grids differ in aspect ratio by more than 2 %."""
    ra, rb = a[1] / max(a[0], 1), b[1] / max(b[0], 1)
    if abs(ra - rb) > ASPECT_TOLERANCE * max(ra, rb):
        raise UsageError(f"{what}: grids {a[1]}x{a[0]} and {b[1]}x{b[0]} differ in aspect ratio")


def pixel_grid(shape: tuple[int, ...], width: int, height: int) -> "WorkGrid":
    """A map of ``shape`` (rows, columns) covering the whole ``width × height`` image, as a
    :class:`~xcam.core.preprocess.WorkGrid`: its box and point mappings give original pixels."""
    from xcam.core.preprocess import WorkGrid

    rows, cols = int(shape[0]), int(shape[1])
    return WorkGrid(int(width), int(height), max(rows, cols), 0, 0, cols, rows)


def resized(array: "np.ndarray", shape: tuple[int, ...]) -> "np.ndarray":
    """``array`` at ``(rows, columns)``: bilinear for a float map, nearest for a boolean mask."""
    return pixel_grid(array.shape, int(shape[1]), int(shape[0])).to_original(array)


def image_size_of(value: Any, where: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` from a recorded ``image_size`` (``[w, h]`` or ``{"width", "height"}``)."""
    if value is None:
        return None
    try:
        w, h = (value["width"], value["height"]) if isinstance(value, Mapping) else value
        size = (int(w), int(h))
    except (KeyError, TypeError, ValueError):
        raise XcamError(f"{where}: image_size must be [width, height], not {value!r}") from None
    if size[0] <= 0 or size[1] <= 0:
        raise XcamError(f"{where}: image_size must be positive, not {value!r}")
    return size


def metadata_size(folder: Path) -> tuple[int, int] | None:
    """``(width, height)`` recorded in a folder's ``metadata.json`` (``None`` without one)."""
    from xcam.chain.outputs import METADATA_NAME
    from xcam.core.jsonio import read_json

    path = folder / METADATA_NAME
    if not path.is_file():
        return None
    data = read_json(path)
    return image_size_of(data.get("image_size") if isinstance(data, dict) else None, path)


def read_input_image(folder: Path) -> "np.ndarray | None":
    """The grey ``_input_image_.png`` of a result folder, or ``None`` when there is none."""
    from xcam.chain.outputs import INPUT_IMAGE_NAME
    from xcam.core.render import read_png

    path = folder / INPUT_IMAGE_NAME
    return read_png(path) if path.is_file() else None


def base_image(image: "np.ndarray | None", mask: "np.ndarray", width: int, height: int, where: str | Path = ""
               ) -> "np.ndarray":
    """What boxes are drawn on, at ``width × height``: the input image (resized when it has another
    resolution of the same aspect), else the boolean ``mask`` as 0/255."""
    import cv2

    from xcam.core.render import mask_png

    if image is None:
        return mask_png(resized(mask, (height, width)))
    if image.shape[:2] == (height, width):
        return image
    check_same_aspect(image.shape[:2], (height, width), f"{where} and the recorded {width}x{height} image")
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


# -- boxes --------------------------------------------------------------------------------------
def mask_boxes(localizer: "Localizer", mask: "np.ndarray", cam: "np.ndarray | None", width: int, height: int
               ) -> tuple[list["ScoredBox"], tuple[float, float] | None]:
    """The localizer's strategy on ``mask`` (any grid covering the image): boxes in original pixels
    (``cam``, resized to the mask, scores them) and the CAM's peak in original pixels."""
    from xcam.chain.localize import boxes_to_original
    from xcam.core.metrics import cam_peak

    scores = resized(cam, mask.shape) if cam is not None else None
    boxes = boxes_to_original(localizer.boxes(mask, scores), pixel_grid(mask.shape, width, height))
    if cam is None:
        return boxes, None
    peak = cam_peak(cam)
    return boxes, (pixel_grid(cam.shape, width, height).point_to_original(*peak) if peak is not None else None)


def metrics_for(boxes: Sequence["ScoredBox"], peak: Any, gts: Sequence[Box], width: int, height: int,
                has_cam: bool) -> dict[str, float] | None:
    """:func:`xcam.chain.localize.box_metrics`; without a CAM there is no peak, so no pointing game."""
    from xcam.chain.localize import box_metrics

    point = (float(peak[0]), float(peak[1])) if peak is not None else None
    metrics = box_metrics(boxes, point, gts, width, height)
    if metrics is not None and not has_cam:
        metrics.pop("pointing_game", None)
    return metrics


def recorded_strategy_options(folder: Path, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The strategy options a box file's boxes were made with: its own ``strategy_options`` (``xcam
    bbox`` records them), else the settings in ``analysis.json`` beside it; ``None`` when unknown."""
    from xcam.chain.outputs import ANALYSIS_NAME
    from xcam.core.jsonio import read_json

    own = record.get("strategy_options")
    if isinstance(own, dict):
        return dict(own)
    path = folder / ANALYSIS_NAME
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except XcamError:
        return None
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict) or not isinstance(settings.get("strategy_options"), dict):
        return None
    if str(settings.get("strategy", "")).lower() != str(record.get("strategy", "")).lower():
        return None
    return dict(settings["strategy_options"])


def reuse_recorded(pm: "XcamPluginManager", settings: "ChainSettings", stored: "StoredFinding | None",
                   recorded_options: Mapping[str, Any] | None, explicit_options: bool) -> bool:
    """Whether recorded boxes are what ``settings`` gives: the same strategy with the same options
    (options that were not recorded count as the same unless given on the command line)."""
    from xcam.chain.settings import plugin_options

    if stored is None or not stored.strategy:
        return False
    name = pm.bbox_strategy(settings.strategy).name
    if name.lower() != stored.strategy.lower():
        return False
    if recorded_options is None:
        return not explicit_options
    return plugin_options(pm, name, recorded_options) == plugin_options(pm, name, settings.strategy_options)


def ground_truth_box(text: str | None, width: int, height: int, where: str) -> tuple[str, Box] | None:
    """Parse ``--ground-truth`` and check that it lies inside the ``width × height`` image of ``where``."""
    from xcam.core.metrics import check_box_in_image, parse_ground_truth

    if text is None:
        return None
    label, x, y, w, h = parse_ground_truth(text)
    check_box_in_image((x, y, w, h), width, height, what=f"ground truth box of {where}")
    return label, (x, y, w, h)


def describe(boxes: Sequence["ScoredBox"], report: Mapping[str, Any]) -> str:
    """One human line: the top box and, with ground truth, IoU / IoBB / Dice."""
    if not boxes:
        text = "no box (empty mask)"
    else:
        b = boxes[0]
        text = f"box x={b.x:.1f} y={b.y:.1f} w={b.width:.1f} h={b.height:.1f}"
        if len(boxes) > 1:
            text += f" (+{len(boxes) - 1} more)"
    metrics = report.get("metrics")
    if metrics:
        text += f"; IoU={metrics['iou']:.3f} IoBB={metrics['iobb']:.3f} Dice={metrics['dice']:.3f}"
    return text


REPORT_BOX_KEYS = ("box", "boxes", "image_size", "ground_truth", "ground_truth_boxes", "metrics")


# -- command ------------------------------------------------------------------------------------
@click.command("bbox")
@click.option("--input-mask", "input_mask", required=True, type=click.Path(dir_okay=False),
              help="Binary mask: {model}_{pathology}_P3.png, {pathology}_consolidated.png or any 2-level PNG.")
@click.option("--ground-truth", default=None, metavar="'Label,x,y,w,h'",
              help="Ground-truth box in original-image pixels, e.g. 'Cardiomegaly,277.5,459,540,301'.")
@profile_option
@click.option("--strategy", default=None,
              help="Bbox strategy (default: the recorded boxes are reused; without a record, the profile's).")
@click.option("--strategy-option", multiple=True, metavar="KEY=VALUE", help="Bbox strategy option (repeatable).")
@click.option("--min-area", type=float, default=None, help="components: smallest box area (fraction <1 or pixels).")
@click.option("--max-boxes", type=int, default=None, help="components: keep at most this many boxes.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Default: the mask's folder.")
def bbox(
    input_mask: str,
    ground_truth: str | None,
    profile: str | None,
    strategy: str | None,
    strategy_option: tuple[str, ...],
    min_area: float | None,
    max_boxes: int | None,
    output_dir: str | None,
) -> None:
    """Boxes of a binary mask (the recorded ones when nothing changes them), with metrics."""
    from dataclasses import replace

    from xcam.chain.localize import Localizer
    from xcam.chain.outputs import INPUT_IMAGE_NAME, METADATA_NAME, box_items, box_legend, box_report, load_cam, \
        read_box_json
    from xcam.chain.settings import STRATEGY_KIND, check_plugin_options
    from xcam.commands._common import chain_settings, parse_key_values, plugin_manager
    from xcam.core.jsonio import read_json, write_json
    from xcam.core.labels import same_label
    from xcam.core.render import draw_annotated, read_mask, write_png

    mask_path = Path(input_mask)
    mask = read_mask(mask_path)
    folder = mask_path.parent
    names = mask_names(mask_path)
    _, name_model, name_pathology = parse_mask_name(mask_path)
    record_path = folder / names["json"]
    stored = read_box_json(record_path) if record_path.is_file() else None
    record: dict[str, Any] = read_json(record_path) if stored is not None else {}

    image = read_input_image(folder)
    if stored is not None and record.get("image_size") is not None:
        size, where = image_size_of(record["image_size"], record_path), record_path
    elif (recorded := metadata_size(folder)) is not None:
        size, where = recorded, folder / METADATA_NAME
    elif image is not None:
        size, where = (image.shape[1], image.shape[0]), folder / INPUT_IMAGE_NAME
    else:
        size, where = (mask.shape[1], mask.shape[0]), mask_path
    assert size is not None
    width, height = size
    check_same_aspect(mask.shape, (height, width), f"{mask_path} and {where}")

    options = parse_key_values(strategy_option, "--strategy-option")
    pm = plugin_manager()
    settings = chain_settings(profile, strategy=strategy, strategy_options=options)  # checks names and options
    flags = {k: v for k, v in (("min_area", min_area), ("max_boxes", max_boxes)) if v is not None}
    if flags:  # --min-area / --max-boxes: strategy options too, checked under their own names
        check_plugin_options(STRATEGY_KIND, pm.bbox_strategy(settings.strategy), flags,
                             " / ".join(f"--{k.replace('_', '-')}" for k in flags))
        options.update(flags)
        settings = replace(settings, strategy_options={**settings.strategy_options, **flags})
    explicit = profile is not None or strategy is not None or bool(options)
    reuse = stored is not None and bool(stored.strategy) and (
        not explicit or reuse_recorded(pm, settings, stored, recorded_strategy_options(folder, record), bool(options)))

    pathology = (stored.pathology if stored is not None else None) or mask_pathology(mask_path)
    gt = ground_truth_box(ground_truth, width, height, str(mask_path))
    if gt is not None and pathology is not None and not same_label(gt[0], pathology):
        click.echo(f"warning: ground truth label {gt[0]!r} differs from the mask's pathology {pathology!r}", err=True)
    gts: list[Box] = [gt[1]] if gt is not None else list(stored.ground_truth if stored is not None else [])
    gt_label = gt[0] if gt is not None else (pathology or "ground truth")

    report = {k: v for k, v in record.items() if k not in REPORT_BOX_KEYS}
    report.setdefault("model", name_model)
    report.setdefault("pathology", pathology or (gt[0] if gt else None))
    report["source_mask"] = str(mask_path)
    if reuse:
        assert stored is not None
        boxes = list(stored.boxes)
        peak = record.get("peak")
        has_cam = peak is not None or stored.cam_file is not None
        strategy_name = str(stored.strategy)
        report["boxes_from"] = "recorded"
    else:
        localizer = Localizer(pm, settings)
        cam_file = stored.cam_file if stored is not None else None
        if cam_file is None and (folder / names["cam"]).is_file():
            cam_file = folder / names["cam"]
        cam = load_cam(cam_file) if cam_file is not None else None
        if cam is not None:
            check_same_aspect(mask.shape, cam.shape, f"{cam_file} and {mask_path}")
        boxes, peak = mask_boxes(localizer, mask, cam, width, height)
        has_cam = cam is not None
        strategy_name = localizer.strategy.name
        report.update({
            "strategy": strategy_name, "strategy_options": localizer.strategy_options, "boxes_from": "mask",
            "cam": str(cam_file) if cam_file is not None else None,
            "mask_size": {"width": int(mask.shape[1]), "height": int(mask.shape[0])},
            "peak": list(peak) if peak is not None else None,
        })
    metrics = metrics_for(boxes, peak, gts, width, height, has_cam)
    report.update(box_report(boxes, width, height, gts, gt_label, metrics))

    out_dir = Path(output_dir) if output_dir else folder
    json_path = write_json(out_dir / names["json"], report)
    base = base_image(image, mask, width, height, folder / INPUT_IMAGE_NAME)
    write_png(out_dir / names["boxes"], draw_annotated(base, box_items(boxes, gts, gt_label), box_legend(bool(gts))))
    how = f"recorded {strategy_name} boxes" if reuse else f"{strategy_name} boxes from the mask"
    click.echo(f"{describe(boxes, report)} ({how}) -> {json_path}")
