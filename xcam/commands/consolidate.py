"""``xcam consolidate``: several models' masks for one pathology → one mask and one box.

Each source is a mask ``{model}_{pathology}_P3.png`` of a result folder (or any two-level PNG); what
was recorded beside it is read through :mod:`xcam.chain.outputs`: its box file (boxes in original
pixels), its stored CAM (``_cam.npy``, in the work grid) and the image size. Rules (``--rule``;
``n`` sources):

* ``merge-masking`` — union: a pixel is in when any source's mask has it;
* ``intersection``  — a pixel is in when every source's mask has it;
* ``majority``      — a pixel is in when more than ``n / 2`` sources' masks have it;
* ``mean-cam``      — the mean of the stored CAMs (a source without one counts with its 0/1 mask),
  normalized, then the profile's mask extractor (``--mask``);
* ``ensembler``     — as ``mean-cam`` with the profile's ensembler (``--ensembler``: mean, max,
  weighted, product), what ``xcam analyze`` does for its ``*_consolidated`` files.

Masks are combined in the largest mask grid and CAMs in the largest CAM grid (others are resized;
a different aspect is refused). Boxes come from the profile's strategy (``--strategy``) and are
mapped to original pixels with the image size recorded in the box files or ``metadata.json`` (else
``_input_image_.png``'s, else the mask's). Each source's own box is the recorded one when it was
made with the same strategy, else computed from its mask.

Writes, as :mod:`xcam.chain.outputs` names them: ``{pathology}_consolidated.png`` (mask, original
resolution), ``{pathology}_consolidated_bbox.json``, ``{pathology}_consolidated_bbox.png`` (the
consolidated box magenta, each model's box in its own colour, ground truth green, with a legend)
and, for the CAM rules, ``{pathology}_consolidated_cam.npy``. Sources whose ``_input_image_.png``
differ, or whose recorded image sizes differ, are refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from xcam.commands._common import profile_option
from xcam.commands.bbox import (
    Box,
    base_image,
    check_same_aspect,
    describe,
    ground_truth_box,
    image_size_of,
    mask_boxes,
    mask_names,
    mask_pathology,
    metadata_size,
    metrics_for,
    parse_mask_name,
    recorded_strategy_options,
    resized,
    reuse_recorded,
)
from xcam.core.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.chain.outputs import StoredFinding
    from xcam.core.types import ScoredBox

MASK_RULES = ("merge-masking", "intersection", "majority")
CAM_RULES = ("mean-cam", "ensembler")
RULES = (*MASK_RULES, *CAM_RULES)
DEFAULT_RULE = "merge-masking"
IMAGE_DIFF_LIMIT = 8.0  # mean absolute grey-level difference above which two input images differ


@dataclass
class Source:
    """One model's mask, with what was recorded beside it."""

    path: Path
    model: str
    pathology: str | None
    mask: "np.ndarray"
    cam: "np.ndarray | None" = None
    cam_path: Path | None = None
    stored: "StoredFinding | None" = None
    record: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # the recorded original (width, height)
    size_from: Path | None = None


def combine_masks(masks: Sequence["np.ndarray"], rule: str) -> "np.ndarray":
    """Union (``merge-masking``), ``intersection`` or ``majority`` (count ``> n/2``) of same-shape masks."""
    import numpy as np

    if not masks:
        raise UsageError("no masks to consolidate")
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    if rule == "merge-masking":
        return stack.any(axis=0)
    if rule == "intersection":
        return stack.all(axis=0)
    if rule == "majority":
        return stack.sum(axis=0) * 2 > len(masks)
    raise UsageError(f"unknown consolidation rule {rule!r}; valid: {', '.join(MASK_RULES)}")


def cam_layers(sources: Sequence[Source]) -> tuple[tuple[int, int], list["np.ndarray"]]:
    """The grid CAMs are combined in (the largest stored CAM's, else the largest mask's) and each
    source's map in it: its CAM, or its 0/1 mask when it has none."""
    import numpy as np

    shapes = [s.cam.shape for s in sources if s.cam is not None] or [s.mask.shape for s in sources]
    grid: tuple[int, int] = max(shapes, key=lambda shape: shape[0] * shape[1])  # type: ignore[assignment]
    for s in sources:
        check_same_aspect(grid, (s.cam if s.cam is not None else s.mask).shape, f"{s.cam_path or s.path}")
    layers = [resized(s.cam, grid) if s.cam is not None else resized(s.mask, grid).astype(np.float32)
              for s in sources]
    return grid, layers


def mean_cam(sources: Sequence[Source]) -> "np.ndarray":
    """The ``mean-cam`` rule's map: mean over sources of the CAM (or the 0/1 mask), min–max normalized."""
    import numpy as np

    from xcam.plugins.ensemblers import mean_cams

    _, layers = cam_layers(sources)
    return np.asarray(mean_cams(layers), dtype=np.float32)


def load_sources(paths: Sequence[str], target_class: str) -> list[Source]:
    """Read the masks and, through :mod:`xcam.chain.outputs`, their box files and CAMs; refuse a mask
    for another pathology, grids of different aspect and different recorded image sizes."""
    from xcam.chain.outputs import METADATA_NAME, load_cam, read_box_json
    from xcam.core.jsonio import read_json
    from xcam.core.labels import same_label
    from xcam.core.render import read_mask

    sources: list[Source] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        mask = read_mask(path)
        names = mask_names(path)
        prefix, model, _ = parse_mask_name(path)
        record_path = path.parent / names["json"]
        stored = read_box_json(record_path) if record_path.is_file() else None
        record = read_json(record_path) if stored is not None else {}
        pathology = (stored.pathology if stored is not None else None) or mask_pathology(path)
        if pathology is not None and not same_label(pathology, target_class):
            raise UsageError(f"{path}: mask is for {pathology!r}, not the target class {target_class!r}")
        cam_path = stored.cam_file if stored is not None else None
        if cam_path is None and (path.parent / names["cam"]).is_file():
            cam_path = path.parent / names["cam"]
        cam = load_cam(cam_path) if cam_path is not None else None
        if cam is not None:
            check_same_aspect(mask.shape, cam.shape, f"{cam_path} and {path}")
        if record.get("image_size") is not None:
            size, size_from = image_size_of(record["image_size"], record_path), record_path
        else:
            size, size_from = metadata_size(path.parent), path.parent / METADATA_NAME
        name = (stored.model if stored is not None else None) or model or prefix or f"source{i + 1}"
        sources.append(Source(path, name, pathology, mask, cam, cam_path, stored, record, size,
                              size_from if size is not None else None))
    for s in sources[1:]:
        check_same_aspect(sources[0].mask.shape, s.mask.shape, f"{sources[0].path} and {s.path}")
    sized = [s for s in sources if s.size is not None]
    for s in sized[1:]:
        if s.size != sized[0].size:
            a, b = sized[0], s
            raise UsageError(f"sources come from different images: {a.size_from} records "  # type: ignore[index]
                             f"{a.size[0]}x{a.size[1]}, {b.size_from} {b.size[0]}x{b.size[1]}")  # type: ignore[index]
    return sources


def common_input_image(sources: Sequence[Source]) -> tuple["np.ndarray | None", Path | None]:
    """The ``_input_image_.png`` shared by the sources' folders; an error when two folders' differ."""
    import cv2
    import numpy as np

    from xcam.chain.outputs import INPUT_IMAGE_NAME
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
        other = cv2.resize(image, (first.shape[1], first.shape[0]), interpolation=cv2.INTER_AREA)
        diff = float(np.mean(np.abs(other.astype(np.float32) - first.astype(np.float32))))
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
@click.option("--rule", type=click.Choice(RULES), default=None,
              help=f"How the sources combine: {', '.join(RULES)} (default: {DEFAULT_RULE}).")
@click.option("--method", "old_method", type=click.Choice(RULES), default=None, hidden=True)
@click.option("--target-class", required=True, help="Pathology of the masks (names the output files).")
@click.option("--ground-truth", default=None, metavar="'Label,x,y,w,h'", help="Ground-truth box (original pixels).")
@profile_option
@click.option("--strategy", default=None, help="Bbox strategy (default: the profile's).")
@click.option("--strategy-option", multiple=True, metavar="KEY=VALUE", help="Bbox strategy option (repeatable).")
@click.option("--mask", "mask_name", default=None, help="CAM rules: mask extractor (default: the profile's).")
@click.option("--mask-option", multiple=True, metavar="KEY=VALUE", help="Mask extractor option (repeatable).")
@click.option("--ensembler", default=None, help="Rule 'ensembler': the CAM ensembler (default: the profile's).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Default: the first mask's folder.")
def consolidate(
    input_sources: tuple[str, ...],
    more_sources: tuple[str, ...],
    rule: str | None,
    old_method: str | None,
    target_class: str,
    ground_truth: str | None,
    profile: str | None,
    strategy: str | None,
    strategy_option: tuple[str, ...],
    mask_name: str | None,
    mask_option: tuple[str, ...],
    ensembler: str | None,
    output_dir: str | None,
) -> None:
    """Combine several models' masks (or stored CAMs) for one pathology into one mask and box."""
    import numpy as np

    from xcam.chain.localize import Localizer
    from xcam.chain.outputs import box_items, box_legend, box_report, consolidated_names, consolidated_prefix
    from xcam.commands._common import chain_settings, parse_key_values, pick_renamed, plugin_manager
    from xcam.core.jsonio import write_json
    from xcam.core.metrics import box_dict
    from xcam.core.render import PALETTE, draw_annotated, mask_png, write_png

    rule = pick_renamed(rule, old_method, "--rule", "--method") or DEFAULT_RULE
    paths = merge_source_paths(input_sources, more_sources)
    if not paths:
        raise UsageError("consolidate needs at least one mask: --input-sources P3.png [P3.png ...]")
    if not target_class.strip():
        raise UsageError("--target-class must name a pathology")
    strategy_options = parse_key_values(strategy_option, "--strategy-option")
    settings = chain_settings(profile, mask=mask_name, mask_options=parse_key_values(mask_option, "--mask-option"),
                              strategy=strategy, strategy_options=strategy_options, ensembler=ensembler)
    sources = load_sources(paths, target_class)
    pathology = next((s.pathology for s in sources if s.pathology), None) or target_class.strip()
    image, image_path = common_input_image(sources)
    recorded = next((s for s in sources if s.size is not None), None)
    if recorded is not None:
        (width, height), size_from = recorded.size, recorded.size_from  # type: ignore[misc]
    elif image is not None:
        (height, width), size_from = image.shape[:2], image_path
    else:
        largest = max(sources, key=lambda s: s.mask.size)
        (height, width), size_from = largest.mask.shape, largest.path
    for s in sources:
        check_same_aspect(s.mask.shape, (height, width), f"{s.path} and {size_from}")
    gt = ground_truth_box(ground_truth, width, height, str(sources[0].path))
    gts: list[Box] = [gt[1]] if gt is not None else next(
        (list(s.stored.ground_truth) for s in sources if s.stored is not None and s.stored.ground_truth), [])
    gt_label = gt[0] if gt is not None else pathology

    pm = plugin_manager()
    localizer = Localizer(pm, settings)
    cam: np.ndarray | None = None
    probability = None
    if rule in CAM_RULES:
        reg = pm.ensembler("mean" if rule == "mean-cam" else settings.ensembler)
        grid, layers = cam_layers(sources)
        cam = np.asarray(reg.combine_cams(layers, None), dtype=np.float32)
        mask = localizer.mask(cam)
        rule_label = "mean-cam" if rule == "mean-cam" else f"ensembler:{reg.name}"
        probs = [s.stored.probability for s in sources if s.stored is not None and s.stored.probability is not None]
        if rule == "ensembler" and len(probs) == len(sources):
            probability = reg.combine_probabilities([{pathology: float(p)} for p in probs], None).get(pathology)
    else:
        grid = max((s.mask.shape for s in sources), key=lambda shape: shape[0] * shape[1])
        mask = combine_masks([resized(s.mask, grid) for s in sources], rule)
        rule_label = rule
    boxes, peak = mask_boxes(localizer, mask, cam, width, height)
    metrics = metrics_for(boxes, peak, gts, width, height, cam is not None)

    per_source: list[tuple[dict[str, Any], list[ScoredBox]]] = []
    for s in sources:
        options = recorded_strategy_options(s.path.parent, s.record) if s.stored is not None else None
        if s.stored is not None and reuse_recorded(pm, settings, s.stored, options, bool(strategy_options)):
            s_boxes, s_peak, came_from = list(s.stored.boxes), s.record.get("peak"), "recorded"
        else:
            s_boxes, s_peak = mask_boxes(localizer, s.mask, s.cam, width, height)
            came_from = "mask"
        entry: dict[str, Any] = {
            "mask": str(s.path), "model": s.model, "cam": str(s.cam_path) if s.cam_path else None,
            "probability": s.stored.probability if s.stored is not None else None,
            "box": box_dict(s_boxes[0]) if s_boxes else None, "boxes_from": came_from,
        }
        if gts:
            entry["metrics"] = metrics_for(s_boxes, s_peak, gts, width, height, s.cam is not None or s_peak is not None)
        per_source.append((entry, s_boxes))

    report: dict[str, Any] = {
        "target_class": pathology,
        "rule": rule_label,
        "models": [s.model for s in sources],
        "probability": probability,
        "strategy": localizer.strategy.name,
        "strategy_options": localizer.strategy_options,
        "mask_extractor": localizer.extractor.name if cam is not None else None,
        "grid": {"width": int(grid[1]), "height": int(grid[0])},
        "input_image": str(image_path) if image_path else None,
        "peak": list(peak) if peak is not None else None,
        "sources": [entry for entry, _ in per_source],
    }
    report.update(box_report(boxes, width, height, gts, gt_label, metrics))

    out_dir = Path(output_dir) if output_dir else sources[0].path.parent
    names = consolidated_names(consolidated_prefix(pathology))
    write_png(out_dir / names["P3"], mask_png(resized(mask, (height, width))))
    if cam is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / names["cam"], cam.astype(np.float16))
    json_path = write_json(out_dir / names["json"], report)
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(per_source))]
    items: list[tuple[Any, ...]] = [(b[0], c, None) for (_, b), c in zip(per_source, colours) if b]
    items += box_items(boxes, gts, gt_label)
    legend = box_legend(bool(gts), f"consolidated ({rule_label})")
    legend[1:1] = [(c, entry["model"]) for (entry, b), c in zip(per_source, colours) if b]
    base = base_image(image, mask, width, height, image_path or "")
    write_png(out_dir / names["boxes"], draw_annotated(base, items, legend))
    click.echo(f"{rule_label}: {describe(boxes, report)} -> {json_path}")
