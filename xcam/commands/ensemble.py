"""``xcam ensemble``: combine several models' probabilities and CAMs for one image.

``metadata.json`` (written by ``xcam cam`` in ``OUTPUT/{image_stem}/``; one file may hold several
models, and several files for the same image may be combined)::

    {
      "image": "images/00000001_000.png",      # the input image as given (same image in every file)
      "image_size": [1024, 1024],             # optional: original width, height
      "models": {
        "densenet121": {
          "weights": "densenet121-res224-nih",                    # weight variant name
          "predictions": {"Cardiomegaly": 0.73, "Effusion": 0.12},  # calibrated, the model's label names
          "cams": {"Cardiomegaly": "densenet121_Cardiomegaly_cam.npy"}
        }
      }
    }

``cams`` maps a pathology to a float32 ``H × W`` array in [0, 1] in the original image grid, saved
with ``np.save``; its path is relative to the folder of ``metadata.json``. A model without a
``cams`` entry for the target class is looked up as ``{model}_{pathology}_cam.npy`` beside it.
Other keys (CAM method, timings, ...) may be added freely and are ignored here.

Outputs (default: the first input's folder): ``ensemble.json`` (combined probabilities, per-model
probabilities, weights) and, with ``--target-class``, ``ensemble_{pathology}_cam.npy``,
``ensemble_{pathology}_P0.png`` (overlay on ``_input_image_.png``, or the heatmap alone),
``ensemble_{pathology}_P3.png`` (mask) and ``ensemble_{pathology}_PBBox.png``; the box is in
``ensemble.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
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
    read_input_image,
    resize_cam,
    same_label,
    scale_boxes,
    strategy_boxes,
    write_json,
)
from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

METADATA_NAME = "metadata.json"


@dataclass
class ModelEntry:
    """One model's record from a ``metadata.json``."""

    name: str
    source: Path  # the metadata.json it came from
    weights: str | None
    predictions: dict[str, float]
    cams: dict[str, str] = field(default_factory=dict)

    def cam_path(self, target: str) -> Path | None:
        """The CAM file for ``target`` (``cams`` entry, else ``{model}_{target}_cam.npy``), if it exists."""
        for label, rel in self.cams.items():
            if same_label(label, target):
                path = self.source.parent / rel
                if not path.is_file():
                    raise XcamError(f"{self.source}: CAM file {path} of model {self.name!r} not found")
                return path
        path = self.source.parent / f"{self.name}_{target}_cam.npy"
        return path if path.is_file() else None


def read_metadata(path: str | Path) -> tuple[str | None, list[ModelEntry]]:
    """Parse and check one ``metadata.json``: ``(image, [ModelEntry, ...])``."""
    p = Path(path)
    if p.is_dir():
        p = p / METADATA_NAME
    if not p.is_file():
        raise XcamError(f"{p}: file not found")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XcamError(f"{p}: not valid JSON ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise XcamError(f"{p}: no 'models' object (see 'xcam ensemble --help' for the format)")
    entries = []
    for name, record in models.items():
        preds = record.get("predictions") if isinstance(record, dict) else None
        if not isinstance(preds, dict):
            raise XcamError(f"{p}: model {name!r} has no 'predictions' object")
        try:
            probs = {str(k): float(v) for k, v in preds.items() if v is not None}
        except (TypeError, ValueError):
            raise XcamError(f"{p}: model {name!r} has a non-numeric prediction") from None
        cams = record.get("cams") or {}
        if not isinstance(cams, dict):
            raise XcamError(f"{p}: model {name!r}: 'cams' must map pathology names to .npy files")
        entries.append(ModelEntry(str(name), p, record.get("weights"), probs, {str(k): str(v) for k, v in cams.items()}))
    image = data.get("image")
    return (str(image) if image is not None else None), entries


def collect_models(paths: Sequence[str | Path]) -> tuple[str | None, list[ModelEntry]]:
    """All models of several ``metadata.json``; they must describe one image and not repeat a model."""
    image: str | None = None
    first: Path | None = None
    seen: dict[str, ModelEntry] = {}
    for raw in paths:
        img, entries = read_metadata(raw)
        if img is not None:
            if image is not None and Path(img).name != Path(image).name:
                raise UsageError(f"{entries[0].source}: is for image {img!r}, but {first} is for {image!r}")
            if image is None:
                image, first = img, entries[0].source
        for e in entries:
            if e.name in seen:
                raise UsageError(f"model {e.name!r} appears in both {seen[e.name].source} and {e.source}")
            seen[e.name] = e
    return image, list(seen.values())


def parse_weights(text: str | None, models: Sequence[str]) -> list[float] | None:
    """``"0.6,0.4"`` (in model order) or ``"densenet121=0.6,resnet50=0.4"`` → one weight per model."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("=" in p for p in parts):
            named = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
            unknown = sorted(set(named) - set(models))
            if unknown:
                raise UsageError(f"--weights names unknown models {unknown}; models: {', '.join(models)}")
            missing = [m for m in models if m not in named]
            if missing:
                raise UsageError(f"--weights gives no weight for {', '.join(missing)}")
            values = [named[m] for m in models]
        else:
            values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--weights {text!r}: expected numbers such as '0.6,0.4' or 'densenet121=0.6,resnet50=0.4'") from None
    if len(values) != len(models):
        raise UsageError(f"--weights has {len(values)} values for {len(models)} models ({', '.join(models)})")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise UsageError(f"--weights {text!r}: weights must be non-negative with a positive sum")
    return values


def load_cams(entries: Sequence[ModelEntry], target: str) -> tuple[list[int], list["np.ndarray"], list[Path]]:
    """Indices of the models with a CAM for ``target``, their CAMs in the largest grid, and their files."""
    found = [(i, e.cam_path(target)) for i, e in enumerate(entries)]
    found = [(i, p) for i, p in found if p is not None]
    if not found:
        raise UsageError(f"no model has a CAM for {target!r} (expected e.g. {entries[0].source.parent / f'{entries[0].name}_{target}_cam.npy'})")
    cams = [load_cam(p) for _, p in found]
    grid = max((c.shape for c in cams), key=lambda s: s[0] * s[1])
    for (_, p), c in zip(found, cams):
        check_same_aspect(grid, c.shape, f"CAM {p}")
    return [i for i, _ in found], [resize_cam(c, grid) for c in cams], [p for _, p in found]


@click.command("ensemble")
@click.option("--inputs", "inputs", multiple=True, metavar="metadata.json",
              help="metadata.json files (repeat the option or list them after it).")
@click.argument("more_inputs", nargs=-1, metavar="[metadata.json]...")
@click.option("--input-dir", "input_dirs", multiple=True, type=click.Path(file_okay=False),
              help="OUTPUT/{image_stem} folder holding metadata.json (repeatable).")
@click.option("--method", default=None, help="Ensembler: mean, max, weighted (default from plugins.toml: mean).")
@click.option("--weights", default=None, help="weighted: '0.6,0.4' in model order, or 'name=0.6,name=0.4'.")
@click.option("--target-class", default=None, help="Also combine the CAMs of this pathology into a mask and box.")
@click.option("--mask", "mask_name", default=None, help="Mask extractor (default from plugins.toml: otsu).")
@click.option("--strategy", default=None, help="Bbox strategy (default from plugins.toml: largest).")
@click.option("--ground-truth", default=None, metavar="'Label,x,y,w,h'", help="Ground-truth box (original pixels).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Default: the first input's folder.")
def ensemble(
    inputs: tuple[str, ...],
    more_inputs: tuple[str, ...],
    input_dirs: tuple[str, ...],
    method: str | None,
    weights: str | None,
    target_class: str | None,
    mask_name: str | None,
    strategy: str | None,
    ground_truth: str | None,
    output_dir: str | None,
) -> None:
    """Combine several models' probabilities and CAMs (see the module docs for metadata.json)."""
    import numpy as np

    from xcam.commands._common import plugin_manager
    from xcam.core.render import GREEN, RED, draw_boxes, heatmap_bgr, mask_png, overlay, write_png

    sources = [*inputs, *more_inputs, *(str(Path(d) / METADATA_NAME) for d in input_dirs)]
    if not sources:
        raise UsageError("ensemble needs --inputs metadata.json... or --input-dir OUTPUT/{image_stem}")
    image_name, entries = collect_models(list(dict.fromkeys(sources)))
    names = [e.name for e in entries]
    pm = plugin_manager()
    reg = pm.ensembler(method)
    w = parse_weights(weights, names)
    if weights is not None and reg.name != "weighted":
        click.echo(f"warning: --weights is ignored by the {reg.name!r} ensembler", err=True)
    probs = reg.combine_probabilities([e.predictions for e in entries], w)
    report: dict[str, Any] = {
        "image": image_name,
        "method": reg.name,
        "models": {e.name: {"weights": e.weights, "metadata": str(e.source)} for e in entries},
        "model_weights": dict(zip(names, w)) if w is not None else None,
        "predictions": probs,
        "per_model": {e.name: e.predictions for e in entries},
    }
    out_dir = Path(output_dir) if output_dir else entries[0].source.parent

    if target_class is not None:
        if not any(same_label(label, target_class) for label in probs):
            raise UsageError(f"no model predicts {target_class!r}; labels: {', '.join(probs)}")
        target = next(label for label in probs if same_label(label, target_class))
        idx, cams, cam_files = load_cams(entries, target)
        cam = reg.combine_cams(cams, [w[i] for i in idx] if w is not None else None)
        grid = cam.shape
        image = read_input_image(entries[0].source.parent)
        out_grid = grid if image is None else image.shape[:2]
        if image is not None:
            check_same_aspect(grid, out_grid, f"CAMs and {entries[0].source.parent / INPUT_IMAGE_NAME}")
        height, width = out_grid
        gt = ground_truth_box(ground_truth, width, height, str(entries[0].source))
        extractor = pm.mask_extractor(mask_name)
        mask = extractor.extract(cam, **pm.config.plugin_options(extractor.name))
        bbox_reg = pm.bbox_strategy(strategy)
        boxes = scale_boxes(strategy_boxes(pm, bbox_reg, mask, cam), grid, out_grid)
        prefix = f"ensemble_{target}"
        full_cam = resize_cam(cam, out_grid)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / f"{prefix}_cam.npy", full_cam.astype(np.float32))
        write_png(out_dir / f"{prefix}_P0.png", overlay(image, full_cam) if image is not None else heatmap_bgr(full_cam))
        write_png(out_dir / f"{prefix}_P3.png", mask_png(mask))
        items: list[tuple[Any, ...]] = [(b, GREEN) for b in boxes[:1]]
        if gt is not None:
            items.append((gt[1], RED, gt[0]))
        base = image if image is not None else heatmap_bgr(full_cam)
        write_png(out_dir / f"{prefix}_PBBox.png", draw_boxes(base, items))
        report["target"] = {
            "class": target,
            "probability": probs[target],
            "cam_models": [names[i] for i in idx],
            "cam_files": [str(p) for p in cam_files],
            "mask_extractor": extractor.name,
            "strategy": bbox_reg.name,
            **box_report(boxes, width, height, gt),
        }

    json_path = write_json(out_dir / "ensemble.json", report)
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    line = f"{reg.name} of {len(entries)} models: " + ", ".join(f"{k}={v:.3f}" for k, v in top)
    if target_class is not None:
        line += f"; {target}: {describe(boxes, report['target'])}"
    click.echo(f"{line} -> {json_path}")
