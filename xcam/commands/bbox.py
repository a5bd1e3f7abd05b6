"""``xcam bbox``: boxes from a binary mask, with metrics against a ground-truth box.

Reads ``{model}_{pathology}_P3.png`` (and, when present beside it, the float CAM
``{model}_{pathology}_cam.npy`` for box scores and the X-ray ``_input_image_.png``), writes
``{model}_{pathology}_PBBox.json`` and ``{model}_{pathology}_PBBox.png`` (green: predicted,
red: ground truth). The helpers here are shared by ``consolidate`` and ``ensemble``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import click

from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.core.manager import XcamPluginManager
    from xcam.core.types import BboxStrategyRegistration, ScoredBox

INPUT_IMAGE_NAME = "_input_image_.png"
ASPECT_TOLERANCE = 0.02


def parse_mask_name(path: str | Path) -> tuple[str, str | None, str | None]:
    """``(prefix, model, pathology)`` from ``{model}_{pathology}_P3.png``.

    The model is the part before the first ``_`` (classifier names cannot contain one: enforced by
    :class:`~xcam.core.types.ClassifierRegistration`); the pathology is the rest
    without ``_P3`` (it may hold spaces and underscores). Other names give ``(stem, None, None)``.
    """
    stem = Path(path).stem
    if not stem.endswith("_P3"):
        return stem, None, None
    prefix = stem[: -len("_P3")]
    model, sep, pathology = prefix.partition("_")
    if not sep or not model or not pathology:
        return prefix, None, None
    return prefix, model, pathology


def same_label(a: str | None, b: str | None) -> bool:
    """Label names equal up to case, spaces, ``_`` and ``-`` ("Pleural_Thickening" = "pleural thickening")."""
    if a is None or b is None:
        return False
    key = lambda s: re.sub(r"[\s_\-]+", "", s).lower()  # noqa: E731
    return key(a) == key(b)


def load_cam(path: str | Path) -> "np.ndarray":
    """A float CAM saved with ``np.save`` (2-D, finite); :class:`XcamError` naming the file otherwise."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise XcamError(f"{p}: file not found")
    try:
        cam = np.load(p, allow_pickle=False)
    except Exception as exc:  # corrupt or not a .npy file
        raise XcamError(f"{p}: not a NumPy .npy CAM ({type(exc).__name__})") from None
    if cam.ndim != 2 or not np.issubdtype(cam.dtype, np.number):
        raise XcamError(f"{p}: a CAM must be a 2-D numeric array, got shape {cam.shape} and type {cam.dtype}")
    return np.nan_to_num(cam.astype(np.float32), nan=0.0)


def check_same_aspect(a: tuple[int, int], b: tuple[int, int], what: str) -> None:
    """Raise when two ``(height, width)`` grids differ in aspect ratio by more than 2 %."""
    ra, rb = a[1] / a[0], b[1] / b[0]
    if abs(ra - rb) > ASPECT_TOLERANCE * max(ra, rb):
        raise UsageError(f"{what}: grids {a[1]}x{a[0]} and {b[1]}x{b[0]} differ in aspect ratio")


def scale_boxes(boxes: Sequence["ScoredBox"], src: tuple[int, int], dst: tuple[int, int]) -> list["ScoredBox"]:
    """Boxes from a ``(height, width)`` grid ``src`` to ``dst`` (``x · W_dst / W_src`` and so on)."""
    from xcam.core.types import ScoredBox

    if tuple(src) == tuple(dst):
        return list(boxes)
    sx, sy = dst[1] / src[1], dst[0] / src[0]
    return [ScoredBox(b.x * sx, b.y * sy, b.width * sx, b.height * sy, b.score) for b in boxes]


def resize_mask(mask: "np.ndarray", shape: tuple[int, int]) -> "np.ndarray":
    """Nearest-neighbour resize of a boolean mask to ``(height, width)``."""
    import cv2
    import numpy as np

    if mask.shape == tuple(shape):
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def resize_cam(cam: "np.ndarray", shape: tuple[int, int]) -> "np.ndarray":
    """Bilinear resize of a float CAM to ``(height, width)``."""
    import cv2
    import numpy as np

    if cam.shape == tuple(shape):
        return cam
    return cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def strategy_boxes(
    pm: "XcamPluginManager",
    strategy: "BboxStrategyRegistration",
    mask: "np.ndarray",
    cam: "np.ndarray | None" = None,
    **options: Any,
) -> list["ScoredBox"]:
    """Run a bbox strategy with ``plugins.toml`` options for it, overridden by ``options`` (None dropped)."""
    merged = pm.config.plugin_options(strategy.name)
    merged.update({k: v for k, v in options.items() if v is not None})
    if cam is not None and cam.shape != mask.shape:
        cam = resize_cam(cam, mask.shape)
    boxes = list(strategy.boxes(mask, cam=cam, **merged))
    return sorted(boxes, key=lambda b: -b.score)


def ground_truth_box(text: str | None, width: int, height: int, where: str) -> tuple[str, tuple[float, float, float, float]] | None:
    """Parse ``--ground-truth`` and check that it lies inside the ``width × height`` image of ``where``."""
    from xcam.core.metrics import check_box_in_image, parse_ground_truth

    if text is None:
        return None
    label, x, y, w, h = parse_ground_truth(text)
    check_box_in_image((x, y, w, h), width, height, what=f"ground truth box of {where}")
    return label, (x, y, w, h)


def box_report(
    boxes: Sequence["ScoredBox"], width: int, height: int, gt: tuple[str, tuple[float, float, float, float]] | None
) -> dict[str, Any]:
    """``{"box", "boxes", "image_size"[, "ground_truth", "metrics"]}``: the JSON part every command shares."""
    from xcam.core.metrics import box_dict, image_metrics

    report: dict[str, Any] = {
        "image_size": {"width": int(width), "height": int(height)},
        "box": box_dict(boxes[0]) if boxes else None,
        "boxes": [box_dict(b) for b in boxes],
    }
    if gt is not None:
        label, (x, y, w, h) = gt
        report["ground_truth"] = {"label": label, "x": x, "y": y, "width": w, "height": h, "x2": x + w, "y2": y + h}
        report["metrics"] = image_metrics(boxes, gt[1], width, height)
    return report


def read_input_image(folder: Path) -> "np.ndarray | None":
    """The grey ``_input_image_.png`` of a folder, or ``None`` when there is none."""
    from xcam.core.render import read_png

    path = folder / INPUT_IMAGE_NAME
    return read_png(path) if path.is_file() else None


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def describe(boxes: Sequence["ScoredBox"], report: Mapping[str, Any]) -> str:
    """One human line: the top box and, with ground truth, IoU / IoBB."""
    if not boxes:
        text = "no box (empty mask)"
    else:
        b = boxes[0]
        text = f"box x={b.x:.1f} y={b.y:.1f} w={b.width:.1f} h={b.height:.1f}"
        if len(boxes) > 1:
            text += f" (+{len(boxes) - 1} more)"
    if "metrics" in report:
        m = report["metrics"]
        text += f"; IoU={m['iou']:.3f} IoBB={m['iobb']:.3f} Dice={m['dice']:.3f}"
    return text


@click.command("bbox")
@click.option("--input-mask", "input_mask", required=True, type=click.Path(dir_okay=False),
              help="Binary mask {model}_{pathology}_P3.png.")
@click.option("--ground-truth", default=None, metavar="'Label,x,y,w,h'",
              help="Ground-truth box in original-image pixels, e.g. 'Cardiomegaly,277.5,459,540,301'.")
@click.option("--strategy", default=None, help="Bbox strategy (default from plugins.toml: largest).")
@click.option("--min-area", type=float, default=None, help="components: smallest box area (fraction <1 or pixels).")
@click.option("--max-boxes", type=int, default=None, help="components: keep at most this many boxes.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Default: the mask's folder.")
def bbox(
    input_mask: str,
    ground_truth: str | None,
    strategy: str | None,
    min_area: float | None,
    max_boxes: int | None,
    output_dir: str | None,
) -> None:
    """Boxes from a binary mask, with metrics against a ground-truth box."""
    from xcam.commands._common import plugin_manager
    from xcam.core.render import GREEN, RED, draw_boxes, mask_png, read_mask, write_png

    mask_path = Path(input_mask)
    mask = read_mask(mask_path)
    prefix, model, pathology = parse_mask_name(mask_path)
    folder = mask_path.parent
    cam_path = folder / f"{prefix}_cam.npy"
    cam = load_cam(cam_path) if cam_path.is_file() else None
    if cam is not None:
        check_same_aspect(mask.shape, cam.shape, f"{cam_path} and {mask_path}")

    image = read_input_image(folder)
    grid = mask.shape if image is None else image.shape[:2]
    if image is not None:
        check_same_aspect(mask.shape, grid, f"{mask_path} and {folder / INPUT_IMAGE_NAME}")
    height, width = grid
    gt = ground_truth_box(ground_truth, width, height, str(mask_path))
    if gt is not None and pathology is not None and not same_label(gt[0], pathology):
        click.echo(f"warning: ground truth label {gt[0]!r} differs from the mask's pathology {pathology!r}", err=True)

    pm = plugin_manager()
    reg = pm.bbox_strategy(strategy)
    boxes = scale_boxes(
        strategy_boxes(pm, reg, mask, cam, min_area=min_area, max_boxes=max_boxes), mask.shape, grid
    )
    report: dict[str, Any] = {
        "source_mask": str(mask_path),
        "model": model,
        "pathology": pathology or (gt[0] if gt else None),
        "strategy": reg.name,
        "cam": str(cam_path) if cam is not None else None,
        "mask_size": {"width": int(mask.shape[1]), "height": int(mask.shape[0])},
    }
    report.update(box_report(boxes, width, height, gt))

    out_dir = Path(output_dir) if output_dir else folder
    json_path = write_json(out_dir / f"{prefix}_PBBox.json", report)
    base = image if image is not None else mask_png(resize_mask(mask, grid))
    several = len(boxes) > 1
    items: list[tuple[Any, ...]] = [(b, GREEN, f"{b.score:.2f}" if several else None) for b in boxes]
    if gt is not None:
        items.append((gt[1], RED, gt[0]))
    write_png(out_dir / f"{prefix}_PBBox.png", draw_boxes(base, items))
    click.echo(f"{describe(boxes, report)} -> {json_path}")
