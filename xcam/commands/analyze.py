"""``xcam analyze``: the whole chain for an image or a folder, with several models.

Per image: classify with every model (each loaded once), CAMs for the positive (or top-k, or
named) classes and for classes with a ground-truth box, masks, boxes, consolidation across models,
metrics where ground truth exists; all files of ``xcam cam`` plus ``{pathology}_consolidated*``
and ``analysis.json`` under ``OUTPUT/{image_stem}/``, and ``OUTPUT/analyze_summary.json`` for the
run. A bad image is reported on one line and the run goes on (exit status 1 at the end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from xcam.commands._common import (
    accept_changed_weights_option,
    device_option,
    plugin_manager,
    resolve_device,
    weights_dir_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.pipeline import ImageAnalysis, Timings

STAGE_NAMES = {"load": "load", "model": "model", "cam": "CAM", "mask_box": "masks/boxes", "write": "writing"}


def parse_weights(text: str | None, models: list[str]) -> dict[str, str] | str | None:
    """``nih`` (one model) or ``densenet121=nih,resnet50=resnet50-res512-all``."""
    from xcam.core.errors import UsageError

    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all("=" in p for p in parts):
        out = {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in parts)}
        unknown = sorted(set(out) - set(models))
        if unknown:
            raise UsageError(f"--weights names models not in --models: {', '.join(unknown)}")
        return out
    if len(parts) == 1 and len(models) == 1:
        return parts[0]
    raise UsageError(f"--weights {text!r}: use 'model=variant,...' when several models run")


def timing_report(total: "Timings", images: int, load_seconds: float) -> str:
    """The end-of-run table: seconds per stage, in total and per image."""
    n = max(images, 1)
    lines = [f"Timing ({images} image{'s' if images != 1 else ''}; models loaded in {load_seconds:.2f} s):",
             f"  {'stage':<12} {'total s':>9} {'ms/image':>10}"]
    for key, label in STAGE_NAMES.items():
        seconds = total.seconds.get(key, 0.0)
        lines.append(f"  {label:<12} {seconds:>9.2f} {1000 * seconds / n:>10.1f}")
    lines.append(f"  {'total':<12} {total.total:>9.2f} {1000 * total.total / n:>10.1f}")
    return "\n".join(lines)


def summary_line(path: str, analysis: "ImageAnalysis") -> str:
    """One line per image: each model's findings with their top box (and IoU with ground truth)."""
    parts = []
    for r in analysis.results:
        items = []
        for f in r.findings:
            b = f.box
            text = f"{f.pathology} {f.probability:.2f}"
            text += f" [{b.x:.0f},{b.y:.0f},{b.width:.0f},{b.height:.0f}]" if b else " [no box]"
            if f.metrics:
                text += f" IoU={f.metrics['iou']:.2f}"
            items.append(text)
        parts.append(f"{r.model}: " + ("; ".join(items) or "no finding"))
    for c in analysis.consolidated:
        b = c.box
        parts.append(f"consolidated {c.pathology}" + (f" [{b.x:.0f},{b.y:.0f},{b.width:.0f},{b.height:.0f}]" if b else " [no box]"))
    return f"{path}: " + " | ".join(parts)


@click.command("analyze")
@click.option("--input", "input_path", required=True, type=click.Path(), help="Image file or folder (searched recursively).")
@click.option("--models", default=None, help="Comma-separated classifiers, e.g. densenet121,resnet50 (default from plugins.toml).")
@click.option("--weights", default=None, help="'model=variant,...' (or one variant for one model).")
@click.option("--target-class", "target_classes", multiple=True, help="Explain these pathologies (repeatable or comma-separated).")
@click.option("--top-k", type=click.IntRange(min=0), default=None, help="Explain at most the k most probable positive classes.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Positive when probability >= this.")
@click.option("--method", default=None, help="CAM method (default from plugins.toml: gradcam).")
@click.option("--mask", "mask_name", default=None, help="Mask extractor (default from plugins.toml: otsu).")
@click.option("--strategy", default=None, help="Bbox strategy (default from plugins.toml: largest).")
@click.option("--ensembler", default=None, help="Ensembler across models (default from plugins.toml: mean).")
@click.option("--ground-truth-csv", type=click.Path(dir_okay=False), default=None,
              help="NIH BBox_List_2017.csv: boxes for metrics (their classes get CAMs too).")
@click.option("--gt-classes/--no-gt-classes", default=True, show_default=True,
              help="Also explain classes that have a ground-truth box on the image.")
@click.option("--aug-smooth", is_flag=True, help="Test-time augmentation smoothing (6x slower).")
@click.option("--eigen-smooth", is_flag=True, help="First principal component of the weighted activations.")
@click.option("--output-dir", type=click.Path(file_okay=False), default="OUTPUT", show_default=True)
@click.option("--no-render", is_flag=True, help="Write no PNG images (CAM .npy and JSON only).")
@click.option("--json-only", is_flag=True, help="Write only the JSON files (no images, no .npy).")
@click.option("--backend", type=click.Choice(["torch", "onnx", "auto"]), default="torch", show_default=True,
              help="Backend for classification (CAMs run on PyTorch unless the backend has a fast path).")
@device_option
@weights_dir_option
@accept_changed_weights_option
@click.option("--random-weights", is_flag=True, hidden=True, help="Random-init models (tests, demos).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="PyTorch CPU threads (default: PyTorch's; on a busy machine 1 can be much faster).")
@click.option("--quiet", is_flag=True, help="No per-image lines.")
def analyze(input_path, models, weights, target_classes, top_k, threshold, method, mask_name, strategy, ensembler,
            ground_truth_csv, gt_classes, aug_smooth, eigen_smooth, output_dir, no_render, json_only, backend, device,
            weights_dir, accept_changed_weights, random_weights, threads, quiet) -> None:
    """Whole chain: classify, CAMs, masks, boxes, consolidation across models, metrics."""
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from xcam.commands.cam import split_names
    from xcam.core.errors import UsageError, XcamError
    from xcam.core.imageio import iter_image_files
    from xcam.core.pipeline import AnalysisSettings, Pipeline, Timings, analysis_dict, read_bbox_csv, write_outputs
    from xcam.core.weights import WeightsStore

    source = Path(input_path)
    if not source.exists():
        raise UsageError(f"{source}: not found")
    files = iter_image_files(source) if source.is_dir() else [source]
    if not files:
        raise UsageError(f"{source}: no images found (PNG, JPEG, TIFF, BMP or DICOM)")
    truth = read_bbox_csv(ground_truth_csv) if ground_truth_csv else {}

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    pm = plugin_manager()
    names = [n.strip() for n in (models or pm.classifier(None).name).split(",") if n.strip()]
    targets = split_names(target_classes)
    settings = AnalysisSettings(
        method=method, mask=mask_name, strategy=strategy, ensembler=ensembler, target_classes=targets,
        top_k=top_k, threshold=threshold, ground_truth_classes=gt_classes, aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
    )
    store = WeightsStore.from_env(weights_dir, accept_changed=accept_changed_weights)
    try:
        pipeline = Pipeline(pm, names, settings, weights=parse_weights(weights, names), backend=backend,
                            device=resolve_device(device), store=store, random_init=random_weights)
        pipeline.load_all()
    except ModuleNotFoundError as exc:
        raise XcamError(f"--backend {backend}: not available in this installation ({exc.name} missing)") from None

    out_root = Path(output_dir)
    total, done, failures = Timings(), 0, []
    summary: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    bar = tqdm(files, desc="analyze", unit="image", disable=len(files) < 2, file=sys.stderr)
    for path in bar:
        try:
            analysis = pipeline.analyze(path, truth.get(path.name, ()))  # decoding is timed as "load"
            stem = analysis.stem
            folder = stem if stem not in used else f"{stem}_{used[stem] + 1}"
            used[stem] = used.get(stem, 0) + 1
            write_outputs(analysis, out_root, render=not (no_render or json_only), arrays=not json_only,
                          analysis_json=True, folder_name=folder)
        except XcamError as exc:
            failures.append(str(path))
            summary.append({"image": str(path), "status": "error", "error": str(exc)})
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad image never stops a batch
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            failures.append(str(path))
            summary.append({"image": str(path), "status": "error", "error": f"{type(exc).__name__}: {first}"})
            tqdm.write(f"error: {path}: {type(exc).__name__}: {first}", file=sys.stderr)
            continue
        done += 1
        total.add(analysis.timings)
        record = analysis_dict(analysis)
        summary.append({"image": str(path), "status": "ok", "folder": str(out_root / folder),
                        "seconds": record["seconds"]})
        if not quiet:
            tqdm.write(summary_line(str(path), analysis))
    bar.close()

    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "analyze_summary.json").write_text(json.dumps({
        "models": [r for r, _ in pipeline.specs], "method": pipeline.method.name,
        "mask_extractor": pipeline.mask_extractor.name, "strategy": pipeline.strategy.name,
        "ensembler": pipeline.ensembler.name, "images": summary, "failed": len(failures),
        "seconds": total.seconds, "model_load_seconds": pipeline.load_seconds,
    }, indent=2) + "\n")
    click.echo(timing_report(total, done, pipeline.load_seconds))
    click.echo(f"{done} of {len(files)} images analyzed -> {out_root}")
    if failures:
        click.echo(f"error: {len(failures)} of {len(files)} images failed", err=True)
        sys.exit(1)
