"""``xcam consolidate``: several models' masks for one pathology → one mask and one box.

Methods (``n`` sources, masks resized with nearest neighbour to the largest grid):

* ``merge-masking`` — union: a pixel is in when any source has it.
* ``intersection``  — a pixel is in when every source has it.
* ``majority``      — a pixel is in when more than ``n / 2`` sources have it.
* ``mean-cam``      — mean of the float CAMs ``{model}_{pathology}_cam.npy`` saved beside the masks
  (the source's 0/1 mask when its CAM is absent), normalized, then a mask extractor (``--mask``).

Writes ``{pathology}_consolidated.png`` (0/255 mask), ``{pathology}_consolidated_bbox.json`` and
``{pathology}_consolidated_bbox.png`` (each model's box in its own colour, the consolidated one in
green, the ground truth in red). Sources whose ``_input_image_.png`` differ are refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from xcam.commands.bbox import (
    INPUT_IMAGE_NAME,
    box_report,
    check_same_aspect,
    describe,
    ground_truth_box,
    load_cam,
    parse_mask_name,
    resize_cam,
    resize_mask,
    same_label,
    scale_boxes,
    strategy_boxes,
    write_json,
)
from xcam.core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

METHODS = ("merge-masking", "intersection", "majority", "mean-cam")
IMAGE_DIFF_LIMIT = 8.0  # mean absolute grey-level difference above which two input images differ


@dataclass
class Source:
    """One model's mask (and CAM when saved beside it)."""

    path: Path
    model: str
    pathology: str | None
    mask: "np.ndarray"
    cam: "np.ndarray | None" = None
    cam_path: Path | None = None


def combine_masks(masks: Sequence["np.ndarray"], method: str) -> "np.ndarray":
    """Union (``merge-masking``), ``intersection`` or ``majority`` (count ``> n/2``) of same-shape masks."""
    import numpy as np

    if not masks:
        raise UsageError("no masks to consolidate")
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    if method == "merge-masking":
        return stack.any(axis=0)
    if method == "intersection":
        return stack.all(axis=0)
    if method == "majority":
        return stack.sum(axis=0) * 2 > len(masks)
    raise UsageError(f"unknown consolidation method {method!r}; valid: {', '.join(METHODS)}")


def mean_cam(sources: Sequence[Source], shape: tuple[int, int]) -> "np.ndarray":
    """Mean over sources of the CAM (or the 0/1 mask without one) in ``shape``, min–max normalized."""
    import numpy as np

    layers = [
        resize_cam(s.cam, shape) if s.cam is not None else resize_mask(s.mask, shape).astype(np.float32)
        for s in sources
    ]
    mean = np.mean(np.stack(layers), axis=0)
    lo, hi = float(mean.min()), float(mean.max())
    return np.zeros(shape, np.float32) if hi - lo <= 1e-12 else ((mean - lo) / (hi - lo)).astype(np.float32)


def load_sources(paths: Sequence[str], target_class: str) -> list[Source]:
    """Read the masks (and CAMs); refuse a mask for another pathology or grids of different aspect."""
    from xcam.core.render import read_mask

    sources: list[Source] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        mask = read_mask(path)
        prefix, model, pathology = parse_mask_name(path)
        if pathology is not None and not same_label(pathology, target_class):
            raise UsageError(f"{path}: mask is for {pathology!r}, not the target class {target_class!r}")
        cam_path = path.parent / f"{prefix}_cam.npy"
        cam = load_cam(cam_path) if cam_path.is_file() else None
        if cam is not None:
            check_same_aspect(mask.shape, cam.shape, f"{cam_path} and {path}")
        sources.append(Source(path, model or prefix or f"source{i + 1}", pathology, mask, cam, cam_path if cam is not None else None))
    for s in sources[1:]:
        check_same_aspect(sources[0].mask.shape, s.mask.shape, f"{sources[0].path} and {s.path}")
    return sources


def common_input_image(sources: Sequence[Source]) -> tuple["np.ndarray | None", Path | None]:
    """The ``_input_image_.png`` shared by the sources' folders; an error when two folders' differ."""
    import cv2
    import numpy as np

    from xcam.core.render import read_png

    found: dict[str, tuple[Path, np.ndarray]] = {}
    for folder in dict.fromkeys(s.path.parent.resolve() for s in sources):
        path = folder / INPUT_IMAGE_NAME
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found.setdefault(digest, (path, read_png(path)))
    if not found:
        return None, None
    (first_path, first), *others = found.values()
    for path, image in others:
        check_same_aspect(first.shape[:2], image.shape[:2], f"input images {first_path} and {path}")
        resized = cv2.resize(image, (first.shape[1], first.shape[0]), interpolation=cv2.INTER_AREA)
        diff = float(np.mean(np.abs(resized.astype(np.float32) - first.astype(np.float32))))
        if diff > IMAGE_DIFF_LIMIT:
            raise UsageError(f"sources come from different images: {first_path} and {path} differ")
    return first, first_path


def merge_source_paths(options: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``--input-sources a --input-sources b`` and ``--input-sources a b`` both give ``[a, b]``."""
    return list(dict.fromkeys([*options, *extra]))


@click.command("consolidate")
@click.option("--input-sources", "input_sources", multiple=True, metavar="P3.png",
              help="Masks {model}_{pathology}_P3.png (repeat the option or list them after it).")
@click.argument("more_sources", nargs=-1, metavar="[P3.png]...")
@click.option("--method", type=click.Choice(METHODS), default="merge-masking", show_default=True)
@click.option("--target-class", required=True, help="Pathology name (used in the output file names).")
@click.option("--ground-truth", default=None, metavar="'Label,x,y,w,h'", help="Ground-truth box (original pixels).")
@click.option("--strategy", default=None, help="Bbox strategy (default from plugins.toml: largest).")
@click.option("--mask", "mask_name", default=None, help="mean-cam: mask extractor (default from plugins.toml: otsu).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Default: the first mask's folder.")
def consolidate(
    input_sources: tuple[str, ...],
    more_sources: tuple[str, ...],
    method: str,
    target_class: str,
    ground_truth: str | None,
    strategy: str | None,
    mask_name: str | None,
    output_dir: str | None,
) -> None:
    """Combine several models' masks for one pathology into one mask and box."""
    from xcam.commands._common import plugin_manager
    from xcam.core.metrics import box_dict
    from xcam.core.render import GREEN, PALETTE, RED, draw_boxes, mask_png, write_png

    paths = merge_source_paths(input_sources, more_sources)
    if not paths:
        raise UsageError("consolidate needs at least one mask: --input-sources P3.png [P3.png ...]")
    if not target_class.strip() or any(c in target_class for c in "/\\"):
        raise UsageError(f"--target-class {target_class!r} must be a non-empty name without path separators")
    sources = load_sources(paths, target_class)
    grid = max((s.mask.shape for s in sources), key=lambda shape: shape[0] * shape[1])
    image, image_path = common_input_image(sources)
    out_grid = grid if image is None else image.shape[:2]
    if image is not None:
        check_same_aspect(grid, out_grid, f"{sources[0].path} and {image_path}")
    height, width = out_grid
    gt = ground_truth_box(ground_truth, width, height, str(sources[0].path))

    pm = plugin_manager()
    reg = pm.bbox_strategy(strategy)
    cam = None
    extractor_name = None
    if method == "mean-cam":
        extractor = pm.mask_extractor(mask_name)
        extractor_name = extractor.name
        cam = mean_cam(sources, grid)
        mask = extractor.extract(cam, **pm.config.plugin_options(extractor.name))
    else:
        mask = combine_masks([resize_mask(s.mask, grid) for s in sources], method)

    boxes = scale_boxes(strategy_boxes(pm, reg, mask, cam), grid, out_grid)
    per_source = []
    for s in sources:
        s_boxes = scale_boxes(strategy_boxes(pm, reg, s.mask, s.cam), s.mask.shape, out_grid)
        entry = {
            "mask": str(s.path),
            "model": s.model,
            "cam": str(s.cam_path) if s.cam_path else None,
            "box": box_dict(s_boxes[0]) if s_boxes else None,
        }
        if gt is not None:
            entry["metrics"] = box_report(s_boxes, width, height, gt)["metrics"]
        per_source.append((entry, s_boxes))

    report: dict[str, Any] = {
        "target_class": target_class,
        "method": method,
        "strategy": reg.name,
        "mask_extractor": extractor_name,
        "grid": {"width": int(grid[1]), "height": int(grid[0])},
        "input_image": str(image_path) if image_path else None,
        "sources": [entry for entry, _ in per_source],
    }
    report.update(box_report(boxes, width, height, gt))

    out_dir = Path(output_dir) if output_dir else sources[0].path.parent
    write_png(out_dir / f"{target_class}_consolidated.png", mask_png(mask))
    json_path = write_json(out_dir / f"{target_class}_consolidated_bbox.json", report)
    items: list[tuple[Any, ...]] = [
        (s_boxes[0], PALETTE[i % len(PALETTE)], entry["model"])
        for i, (entry, s_boxes) in enumerate(per_source)
        if s_boxes
    ]
    if boxes:
        items.append((boxes[0], GREEN, "consolidated"))
    if gt is not None:
        items.append((gt[1], RED, gt[0]))
    base = image if image is not None else mask_png(resize_mask(mask, out_grid))
    write_png(out_dir / f"{target_class}_consolidated_bbox.png", draw_boxes(base, items))
    click.echo(f"{method}: {describe(boxes, report)} -> {json_path}")
