"""``xcam analyze``: the whole chain for an image or a folder, with several models.

The chain (:mod:`xcam.chain`) over a folder, batched with decoding ahead of inference: classify
with every model (each loaded once), CAMs for the positive (or top-k, or named) classes and for
classes with a ground-truth box, masks, boxes, consolidation across models, metrics where ground
truth exists; all files of ``xcam cam`` plus ``{pathology}_consolidated*`` and ``analysis.json``
under ``OUTPUT/{image_stem}/``, and ``OUTPUT/analyze_summary.json`` for the run. A bad image is
reported on one line and the run goes on (exit status 1 at the end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from xcam.commands._common import (
    MODEL_BACKENDS,
    accept_changed_weights_option,
    cam_options,
    device_option,
    dicom_out_option,
    dicom_voi_option,
    plugin_manager,
    failure_limits,
    plugin_failure_options,
    profile_option,
    resolve_device,
    weights_dir_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.results import ImageResult, Timings

STAGE_NAMES = {"load": "load", "model": "model", "cam": "CAM", "mask_box": "masks/boxes", "write": "writing"}


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


def summary_line(path: str, analysis: "ImageResult") -> str:
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


def write_problem(exc: OSError) -> str:
    """One line for an output that could not be written: the path and the problem."""
    path = exc.filename or "output"
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return f"cannot write {path}: a file is in the way"
    return f"cannot write {path}: {exc.strerror or exc}"


@click.command("analyze")
@click.option("--input", "input_path", required=True, type=click.Path(), help="Image file or folder (searched recursively).")
@click.option("--models", default=None, metavar="M[:WEIGHTS],...",
              help="Classifiers, comma-separated, each optionally name:variant (default from plugins.toml).")
@click.option("--weights", default=None, help="Weight variant or checkpoint of the one model given.")
@click.option("--target-class", "target_classes", multiple=True, help="Explain these pathologies (repeatable or comma-separated).")
@click.option("--top-k", type=click.IntRange(min=0), default=None, help="Explain at most the k most probable positive classes.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Positive when probability >= this.")
@profile_option
@cam_options
@click.option("--ensembler", default=None, help="Ensembler across models (default: the profile's).")
@click.option("--model-weights", default=None, metavar="W1,W2,...", help="Ensemble weight per model (weighted ensembler).")
@click.option("--ground-truth-csv", type=click.Path(dir_okay=False), default=None,
              help="NIH BBox_List_2017.csv: boxes for metrics (their classes get CAMs too).")
@click.option("--gt-classes/--no-gt-classes", default=True, show_default=True,
              help="Also explain classes that have a ground-truth box on the image.")
@click.option("--output-dir", type=click.Path(file_okay=False), default="OUTPUT", show_default=True)
@click.option("--coco", "coco_file", default=None, type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Also write the boxes as COCO results (score: class probability) and FILE.dataset.json "
                   "(images, categories, --ground-truth-csv boxes); with ground truth, print COCO AP.")
@click.option("--no-render", is_flag=True, help="Write no PNG images (CAM .npy and JSON only).")
@click.option("--json-only", is_flag=True, help="Write only the JSON files (no images, no .npy).")
@click.option("--backend", type=click.Choice(MODEL_BACKENDS), default="torch", show_default=True,
              help="Backend for classification (CAMs in-graph when it serves the method, else on PyTorch).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Decoding threads.")
@plugin_failure_options
@dicom_out_option
@dicom_voi_option
@device_option
@weights_dir_option
@accept_changed_weights_option
@click.option("--random-weights", is_flag=True, hidden=True, help="Random-init models (tests, demos).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="PyTorch CPU threads (default: PyTorch's; on a busy machine 1 can be much faster).")
@click.option("--quiet", is_flag=True, help="No per-image lines.")
def analyze(input_path, models, weights, target_classes, top_k, threshold, profile, method, cam_layers, aug_smooth,
            eigen_smooth, mask_name, mask_option, strategy, strategy_option, ensembler, model_weights,
            ground_truth_csv, gt_classes, output_dir, coco_file, no_render, json_only, backend, batch_size, workers, fail_fast,
            max_plugin_failures, dicom_out, device,
            weights_dir, accept_changed_weights, random_weights, threads, quiet) -> None:
    """Whole chain: classify, CAMs, masks, boxes, consolidation across models, metrics."""
    import sys
    from pathlib import Path

    from xcam.chain.engine import build_chain, ground_truth_lookup, with_model_weights
    from xcam.chain.guard import PluginGaveUp
    from xcam.chain.models import LoadOptions
    from xcam.chain.outputs import write_result
    from xcam.chain.results import Timings
    from xcam.chain.settings import ClassChoice
    from xcam.commands._common import renamed_option, settings_from_options, split_csv
    from xcam.commands.cam import split_names
    from xcam.core.errors import UsageError, XcamError
    from xcam.core.imageio import iter_image_files
    from xcam.core.jsonio import write_json
    from xcam.core.progress import progress_bar, tqdm
    from xcam.core.weights import WeightsStore
    from xcam.core.nih import read_box_table
    from xcam.chain.models import parse_models
    from xcam.evaluation.preflight import check_output_dir, check_output_file, check_result_truth, parse_model_weights

    source = Path(input_path)
    if not source.exists():
        raise UsageError(f"{source}: not found")
    files = iter_image_files(source) if source.is_dir() else [source]
    if not files:
        raise UsageError(f"{source}: no images found (PNG, JPEG, TIFF, BMP or DICOM)")
    truth = read_box_table(ground_truth_csv) if ground_truth_csv else {}
    check_output_dir(output_dir, "--output-dir")  # before any work: nothing may be in the way
    if coco_file:
        check_output_file(coco_file, "--coco")

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    pm = plugin_manager()
    if weights and "=" in weights:  # the old 'model=variant,...' spelling
        renamed_option("--weights model=variant,...", "--models model:variant,...")
        pairs = dict(p.split("=", 1) for p in split_csv(weights))
        names = split_csv(models) or [pm.classifier(None).name]
        unknown = sorted(set(pairs) - set(names))
        if unknown:
            raise UsageError(f"--weights names models not in --models: {', '.join(unknown)}")
        models, weights = ",".join(f"{n}:{pairs[n]}" if n in pairs else n for n in names), None
    n_models = len(parse_models(models, pm.classifier(None).name, weights))
    ensemble_w = parse_model_weights(model_weights, n_models)  # before any model loads
    settings = settings_from_options(profile, method, cam_layers, aug_smooth, eigen_smooth, mask_name, mask_option,
                                     strategy, strategy_option, ensembler=ensembler)
    choice = ClassChoice(targets=split_names(target_classes), top_k=top_k, threshold=threshold, ground_truth=gt_classes)
    store = WeightsStore.from_env(weights_dir, accept_changed=accept_changed_weights)
    render = not (no_render or json_only)
    try:
        chain = build_chain(pm, models, settings, choice, weights=weights, store=store, keep_images=render,
                            load=LoadOptions(backend=backend, device=resolve_device(device), random_init=random_weights),
                            **failure_limits(fail_fast, max_plugin_failures))
    except ModuleNotFoundError as exc:
        raise XcamError(f"--backend {backend}: not available in this installation ({exc.name} missing)") from None
    chain.settings = settings = with_model_weights(settings, ensemble_w, len(chain.models))

    out_root = Path(output_dir)
    total, done, failures, truth_errors = Timings(), 0, [], 0
    summary: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    bar = progress_bar(len(files), "analyze", enabled=len(files) >= 2, unit="image")
    from xcam.interop.coco import CocoCollector

    coco = CocoCollector() if coco_file else None
    from xcam.interop.dicom import weights_digests, write_dicom

    digests = weights_digests(chain.models) if dicom_out else {}
    stopped = None
    try:
        for result in chain.stream(files, batch_size=batch_size, workers=workers,
                                   ground_truth=ground_truth_lookup(truth)):
            bar.update(1)
            try:
                if result.error is not None:
                    raise XcamError(f"{result.path}: {result.error}")
                stem = result.stem
                folder = stem if stem not in used else f"{stem}_{used[stem] + 1}"
                used[stem] = used.get(stem, 0) + 1
                box_errors = check_result_truth(result, ground_truth_csv) if truth else []
                try:
                    write_result(result, out_root, render=render, arrays=not json_only, folder_name=folder,
                                 settings=settings.as_dict())
                    if dicom_out:  # a file that cannot get DICOM output fails here, on one line
                        write_dicom(result, dicom_out, name=folder, digests=digests)
                except OSError as exc:  # a file in the way, a full disk: this image's error, not the run's
                    raise XcamError(write_problem(exc)) from None
            except XcamError as exc:
                failures.append(result.path)
                summary.append({"image": result.path, "status": "error", "error": str(exc)})
                tqdm.write(f"error: {exc}", file=sys.stderr)
                continue
            done += 1
            for problem in box_errors:
                tqdm.write(f"error: {problem}", file=sys.stderr)
            truth_errors += len(box_errors)
            if coco is not None:
                coco.add_result(result, ground_truth=bool(truth))
            total.add(result.timings)
            summary.append({"image": result.path, "status": "ok", "folder": str(out_root / folder),
                            "seconds": dict(result.timings.seconds),
                            **({"ground_truth_errors": box_errors} if box_errors else {})})
            if not quiet:
                tqdm.write(summary_line(result.path, result), file=sys.stdout)
    except PluginGaveUp as exc:  # what was written stays; the summary says where it stopped
        stopped = str(exc)
    bar.close()

    write_json(out_root / "analyze_summary.json", {
        "models": [m.ref.key for m in chain.models], "settings": settings.as_dict(), "images": summary,
        "failed": len(failures), "ground_truth_errors": truth_errors, "stopped": stopped, "seconds": total.seconds,
        "model_load_seconds": chain.load_seconds,
    })
    click.echo(timing_report(total, done, chain.load_seconds))
    if coco is not None:
        coco_paths = coco.write(coco_file)
        click.echo(f"COCO: {len(coco.predictions)} boxes -> {coco_paths[0]} (data set: {coco_paths[1]})")
        if coco.has_ground_truth:
            click.echo(coco.evaluate().line())
    click.echo(f"{done} of {len(files)} images analyzed -> {out_root}")
    if failures:
        click.echo(f"error: {len(failures)} of {len(files)} images failed", err=True)
    if truth_errors:
        click.echo(f"error: {truth_errors} ground-truth box{'es' if truth_errors != 1 else ''} of {ground_truth_csv} "
                   "outside its image (not scored)", err=True)
    if stopped:
        click.echo(f"error: {stopped}; {len(files) - len(summary)} images not analyzed", err=True)
        sys.exit(2)
    if failures or truth_errors:
        sys.exit(1)
