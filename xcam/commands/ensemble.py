"""``xcam ensemble``: combine several models' probabilities and CAMs for one image.

``metadata.json`` (written by ``xcam cam`` and ``xcam analyze`` in ``OUTPUT/{image_stem}/``, see
:mod:`xcam.chain.outputs`; one file may hold several models, and several files for the same image
may be combined; a hand-written one needs only the keys below)::

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

``cams`` maps a pathology to a float ``H × W`` array in [0, 1] covering the whole image, saved
with ``np.save``; its path is relative to the folder of ``metadata.json``. xcam stores it in the
work grid (the image's aspect at the models' input resolution, e.g. 224 × 224 for a 1024² image);
any resolution of the image's aspect is accepted, and CAMs of different resolutions are resized to
the largest. A model without a ``cams`` entry for the target class is looked up as
``{model}_{pathology}_cam.npy`` beside it. Other keys (CAM method, strategy, findings, ...) may be
added freely and are ignored here.

Probabilities combine with the ensembler (``--ensembler``, default: the profile's; ``weighted``
takes ``--model-weights``). With ``--target-class`` the CAMs of that pathology combine with the
same ensembler, the profile's mask extractor and bbox strategy (``--mask``, ``--strategy``) give
the mask and boxes, and the boxes are mapped to original pixels with ``image_size`` (else the size
of ``_input_image_.png``, else the CAM's own grid).

Outputs (default: the first input's folder): ``ensemble.json`` (combined probabilities, per-model
probabilities, weights and, with ``--target-class``, the box and metrics) and, with
``--target-class``, ``ensemble_{pathology}_cam.npy`` (float16, the combined grid),
``ensemble_{pathology}_P0.png`` (overlay on ``_input_image_.png``, or the heatmap alone),
``ensemble_{pathology}_P3.png`` (mask) and ``ensemble_{pathology}_PBBox.png`` (box magenta, ground
truth green, with a legend), each at the original resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from xcam.commands._common import profile_option
from xcam.commands.bbox import (
    base_image,
    check_same_aspect,
    describe,
    ground_truth_box,
    image_size_of,
    mask_boxes,
    metrics_for,
    read_input_image,
    resized,
)
from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

ENSEMBLE_MODEL = "ensemble"  # the file prefix of the combined CAM: ensemble_{pathology}_*


@dataclass
class ModelEntry:
    """One model's record from a ``metadata.json``."""

    name: str
    source: Path  # the metadata.json it came from
    weights: str | None
    predictions: dict[str, float]
    cams: dict[str, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # recorded (width, height) of the file

    def cam_path(self, target: str) -> Path | None:
        """The CAM file for ``target`` (``cams`` entry, else ``{model}_{target}_cam.npy``), if it exists."""
        from xcam.chain.outputs import finding_names, finding_prefix
        from xcam.core.labels import same_label

        for label, rel in self.cams.items():
            if same_label(label, target):
                path = self.source.parent / rel
                if not path.is_file():
                    raise XcamError(f"{self.source}: CAM file {path} of model {self.name!r} not found")
                return path
        path = self.source.parent / finding_names(finding_prefix(self.name, target))["cam"]
        return path if path.is_file() else None


def read_metadata(path: str | Path) -> tuple[str | None, list[ModelEntry]]:
    """Parse and check one ``metadata.json``: ``(image, [ModelEntry, ...])``."""
    from xcam.chain.outputs import METADATA_NAME
    from xcam.core.jsonio import read_json

    p = Path(path)
    if p.is_dir():
        p = p / METADATA_NAME
    if not p.is_file():
        raise XcamError(f"{p}: file not found")
    data = read_json(p)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise XcamError(f"{p}: no 'models' object (see 'xcam ensemble --help' for the format)")
    size = image_size_of(data.get("image_size"), p)
    entries = []
    for name, record in models.items():
        preds = record.get("predictions") if isinstance(record, dict) else None
        if not isinstance(preds, dict):
            raise XcamError(f"{p}: model {name!r} has no 'predictions' object")
        probs = read_probabilities(preds, p, str(name))
        cams = record.get("cams") or {}
        if not isinstance(cams, dict):
            raise XcamError(f"{p}: model {name!r}: 'cams' must map pathology names to .npy files")
        entries.append(ModelEntry(str(name), p, record.get("weights"), probs,
                                  {str(k): str(v) for k, v in cams.items()}, size))
    image = data.get("image")
    return (str(image) if image is not None else None), entries


def read_probabilities(preds: dict, source: Path, model: str) -> dict[str, float]:
    """A model's ``predictions`` as floats (``null`` entries skipped); each must be a finite number
    in [0, 1], else a one-line error naming the file, the model and the class."""
    probs: dict[str, float] = {}
    for label, value in preds.items():
        if value is None:
            continue
        where = f"{source}: model {model!r}, class {str(label)!r}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise XcamError(f"{where}: non-numeric prediction {value!r}") from None
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise XcamError(f"{where}: prediction {value!r} is not a finite number in [0, 1]")
        probs[str(label)] = number
    return probs


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
    sized = [e for e in seen.values() if e.image_size is not None]
    for e in sized[1:]:
        if e.image_size != sized[0].image_size:
            a, b = sized[0], e
            raise UsageError(f"{b.source}: records a {b.image_size[0]}x{b.image_size[1]} image, "  # type: ignore[index]
                             f"but {a.source} a {a.image_size[0]}x{a.image_size[1]} one")  # type: ignore[index]
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
                raise UsageError(f"--model-weights names unknown models {unknown}; models: {', '.join(models)}")
            missing = [m for m in models if m not in named]
            if missing:
                raise UsageError(f"--model-weights gives no weight for {', '.join(missing)}")
            values = [named[m] for m in models]
        else:
            values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--model-weights {text!r}: expected numbers such as '0.6,0.4' or "
                         "'densenet121=0.6,resnet50=0.4'") from None
    if len(values) != len(models):
        raise UsageError(f"--model-weights has {len(values)} values for {len(models)} models ({', '.join(models)})")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise UsageError(f"--model-weights {text!r}: weights must be non-negative with a positive sum")
    return values


def load_cams(entries: Sequence[ModelEntry], target: str) -> tuple[list[int], list["np.ndarray"], list[Path]]:
    """Indices of the models with a CAM for ``target``, their CAMs in the largest grid, and their files."""
    from xcam.chain.outputs import finding_names, finding_prefix, load_cam

    found = [(i, e.cam_path(target)) for i, e in enumerate(entries)]
    found = [(i, p) for i, p in found if p is not None]
    if not found:
        example = entries[0].source.parent / finding_names(finding_prefix(entries[0].name, target))["cam"]
        raise UsageError(f"no model has a CAM for {target!r} (expected e.g. {example})")
    cams = [load_cam(p) for _, p in found]
    grid = max((c.shape for c in cams), key=lambda s: s[0] * s[1])
    for (_, p), c in zip(found, cams):
        check_same_aspect(grid, c.shape, f"CAM {p}")
    return [i for i, _ in found], [resized(c, grid) for c in cams], [p for _, p in found]


@click.command("ensemble")
@click.option("--inputs", "inputs", multiple=True, metavar="metadata.json",
              help="metadata.json files (repeat the option or list them after it).")
@click.argument("more_inputs", nargs=-1, metavar="[metadata.json]...")
@click.option("--input-dir", "input_dirs", multiple=True, type=click.Path(file_okay=False),
              help="OUTPUT/{image_stem} folder holding metadata.json (repeatable).")
@profile_option
@click.option("--ensembler", default=None, help="Ensembler: mean, max, weighted, product (default: the profile's).")
@click.option("--method", "old_method", default=None, hidden=True)
@click.option("--model-weights", default=None, metavar="W1,W2|NAME=W,...",
              help="Ensemble weight per model for 'weighted': '0.6,0.4' in model order, or 'name=0.6,name=0.4'.")
@click.option("--weights", "old_weights", default=None, hidden=True)
@click.option("--target-class", default=None, help="Also combine the CAMs of this pathology into a mask and box.")
@click.option("--mask", "mask_name", default=None, help="Mask extractor (default: the profile's).")
@click.option("--mask-option", multiple=True, metavar="KEY=VALUE", help="Mask extractor option (repeatable).")
@click.option("--strategy", default=None, help="Bbox strategy (default: the profile's).")
@click.option("--strategy-option", multiple=True, metavar="KEY=VALUE", help="Bbox strategy option (repeatable).")
@click.option("--ground-truth", default=None, metavar="'Label,x,y,w,h'", help="Ground-truth box (original pixels).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, help="Default: the first input's folder.")
def ensemble(
    inputs: tuple[str, ...],
    more_inputs: tuple[str, ...],
    input_dirs: tuple[str, ...],
    profile: str | None,
    ensembler: str | None,
    old_method: str | None,
    model_weights: str | None,
    old_weights: str | None,
    target_class: str | None,
    mask_name: str | None,
    mask_option: tuple[str, ...],
    strategy: str | None,
    strategy_option: tuple[str, ...],
    ground_truth: str | None,
    output_dir: str | None,
) -> None:
    """Combine several models' probabilities and CAMs (see the module docs for metadata.json)."""
    import numpy as np

    from xcam.chain.localize import Localizer
    from xcam.chain.outputs import (
        INPUT_IMAGE_NAME,
        METADATA_NAME,
        box_items,
        box_legend,
        box_report,
        finding_names,
        finding_prefix,
    )
    from xcam.commands._common import chain_settings, parse_key_values, pick_renamed, plugin_manager
    from xcam.core.jsonio import write_json
    from xcam.core.labels import same_label
    from xcam.core.render import draw_annotated, heatmap_bgr, mask_png, overlay, write_png

    ensembler = pick_renamed(ensembler, old_method, "--ensembler", "--method")
    model_weights = pick_renamed(model_weights, old_weights, "--model-weights", "--weights")
    sources = [*inputs, *more_inputs, *(str(Path(d) / METADATA_NAME) for d in input_dirs)]
    if not sources:
        raise UsageError("ensemble needs --inputs metadata.json... or --input-dir OUTPUT/{image_stem}")
    settings = chain_settings(
        profile, mask=mask_name, mask_options=parse_key_values(mask_option, "--mask-option"), strategy=strategy,
        strategy_options=parse_key_values(strategy_option, "--strategy-option"), ensembler=ensembler,
    )
    image_name, entries = collect_models(list(dict.fromkeys(sources)))
    names = [e.name for e in entries]
    pm = plugin_manager()
    reg = pm.ensembler(settings.ensembler)
    w = parse_weights(model_weights, names)
    if model_weights is not None and reg.name != "weighted":
        click.echo(f"warning: --model-weights is ignored by the {reg.name!r} ensembler", err=True)
    probs = reg.combine_probabilities([e.predictions for e in entries], w)
    report: dict[str, Any] = {
        "image": image_name,
        "ensembler": reg.name,
        "profile": settings.profile,
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
        cam = np.asarray(reg.combine_cams(cams, [w[i] for i in idx] if w is not None else None), dtype=np.float32)
        grid = cam.shape
        folder = entries[0].source.parent
        image = read_input_image(folder)
        recorded = next((e for e in entries if e.image_size is not None), None)
        if recorded is not None:
            (width, height), size_from = recorded.image_size, recorded.source  # type: ignore[misc]
        elif image is not None:
            (height, width), size_from = image.shape[:2], folder / INPUT_IMAGE_NAME
        else:
            (height, width), size_from = grid, cam_files[0]
        check_same_aspect(grid, (height, width), f"CAMs {cam_files[0]} and {size_from}")
        gt = ground_truth_box(ground_truth, width, height, str(entries[0].source))
        gts = [gt[1]] if gt is not None else []
        localizer = Localizer(pm, settings)
        mask = localizer.mask(cam)
        boxes, peak = mask_boxes(localizer, mask, cam, width, height)
        metrics = metrics_for(boxes, peak, gts, width, height, True)

        files = finding_names(finding_prefix(ENSEMBLE_MODEL, target))
        full_cam = resized(cam, (height, width))
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / files["cam"], cam.astype(np.float16))
        if image is not None and image.shape[:2] != (height, width):
            image = base_image(image, mask, width, height, folder / INPUT_IMAGE_NAME)
        write_png(out_dir / files["P0"], overlay(image, full_cam) if image is not None else heatmap_bgr(full_cam))
        write_png(out_dir / files["P3"], mask_png(resized(mask, (height, width))))
        base = image if image is not None else heatmap_bgr(full_cam)
        label = gt[0] if gt is not None else target
        write_png(out_dir / files["boxes"], draw_annotated(base, box_items(boxes, gts, label),
                                                           box_legend(bool(gts), f"ensemble ({reg.name})")))
        report["target"] = {
            "class": target,
            "probability": probs[target],
            "cam_models": [names[i] for i in idx],
            "cam_files": [str(p) for p in cam_files],
            "mask_extractor": localizer.extractor.name,
            "strategy": localizer.strategy.name,
            "grid": {"width": int(grid[1]), "height": int(grid[0])},
            "peak": list(peak) if peak is not None else None,
            **box_report(boxes, width, height, gts, label, metrics),
        }

    json_path = write_json(out_dir / "ensemble.json", report)
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    line = f"{reg.name} of {len(entries)} models: " + ", ".join(f"{k}={v:.3f}" for k, v in top)
    if target_class is not None:
        line += f"; {target}: {describe(boxes, report['target'])}"
    click.echo(f"{line} -> {json_path}")
