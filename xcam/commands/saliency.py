"""``xcam saliency``: explanation quality of CAM methods on a folder — localization, faithfulness
(ROAD), the sanity check (cascading randomization) and cost — in one table (docs/saliency.md)."""

from __future__ import annotations

import click

from xcam.commands._common import (
    MODEL_BACKENDS,
    accept_changed_weights_option,
    device_option,
    plugin_failure_options,
    profile_option,
    weights_dir_option,
)


def _ints(text: str, what: str) -> tuple[int, ...]:
    from xcam.commands._common import split_csv
    from xcam.core.errors import UsageError

    try:
        return tuple(int(v) for v in split_csv(text))
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected comma-separated integers") from None


@click.command("saliency")
@click.option("--input", "input_path", required=True, type=click.Path(), help="Image file or folder (searched recursively).")
@click.option("--models", default=None, metavar="M[:WEIGHTS],...",
              help="Classifiers, comma-separated, each optionally name:variant (default from plugins.toml).")
@click.option("--weights", default=None, help="Weight variant or checkpoint of the one model given.")
@click.option("--methods", default=None, metavar="all|M1,M2",
              help="CAM-method plugins to compare; 'all': every installed one (default: the profile's method).")
@profile_option
@click.option("--cam-layers", default=None, metavar="model|auto|L1,L2", help="Target layer(s) (default: the profile's).")
@click.option("--aug-smooth/--no-aug-smooth", default=None, help="Test-time augmentation of each CAM.")
@click.option("--bbox-csv", "--ground-truth-csv", "bbox_csv", type=click.Path(dir_okay=False), default=None,
              help="NIH BBox_List_2017.csv: adds pointing and T(IoBB>0.25) (its classes get CAMs).")
@click.option("--target-class", "target_classes", multiple=True,
              help="Explain these pathologies (repeatable or comma-separated; default: the top-k).")
@click.option("--top-k", type=click.IntRange(min=0), default=1, show_default=True,
              help="Explain the k most probable classes of each image.")
@click.option("--faithfulness/--no-faithfulness", default=True, show_default=True, help="ROAD (MoRF, LeRF).")
@click.option("--road-percentiles", default="10,20,30,40,50,60,70,80,90", show_default=True,
              help="ROAD percentiles (each removes 100-p % of the pixels).")
@click.option("--sanity/--no-sanity", default=True, show_default=True, help="Cascading model randomization.")
@click.option("--sanity-steps", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Randomization steps from the head down (the last randomizes every layer).")
@click.option("--sanity-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images the sanity check uses (the first that succeed).")
@click.option("--sanity-threshold", type=click.FloatRange(-1, 1), default=0.5, show_default=True,
              help="Flag a method whose mean Spearman after full randomization is above this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the randomization and ROAD's noise.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Use the first N images only.")
@click.option("--output", default="saliency", show_default=True, type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(MODEL_BACKENDS), default="torch", show_default=True,
              help="Classifier backend (in-graph CAMs and ROAD's forward passes; randomization runs on PyTorch).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--random-weights", is_flag=True, hidden=True, help="Random-init models (tests).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@plugin_failure_options
@device_option
@weights_dir_option
@accept_changed_weights_option
def saliency(input_path, models, weights, methods, profile, cam_layers, aug_smooth, bbox_csv, target_classes, top_k,
             faithfulness, road_percentiles, sanity, sanity_steps, sanity_images, sanity_threshold, seed, max_images,
             output, backend, batch_size, random_weights, quiet, fail_fast, max_plugin_failures, device, weights_dir,
             accept_changed_weights) -> None:
    """Compare CAM methods: localization, faithfulness (ROAD), sanity (randomization), ms/image.

    Writes saliency.json, saliency.md (one row per method and model) and saliency.png into
    --output. Images that cannot be read and rows a method plugin fails on are recorded and the run
    goes on (exit status 1 at the end).
    """
    import sys
    from pathlib import Path

    from xcam.chain.settings import Overrides
    from xcam.commands._common import plugin_manager, resolve_device, split_csv
    from xcam.commands.cam import split_names
    from xcam.core.errors import UsageError
    from xcam.core.imageio import iter_image_files
    from xcam.evaluation.saliency import SaliencyConfig, run_saliency
    from xcam.evaluation.saliency_report import table, write_report

    source = Path(input_path)
    if not source.exists():
        raise UsageError(f"{source}: not found")
    files = iter_image_files(source) if source.is_dir() else [source]
    if not files:
        raise UsageError(f"{source}: no images found (PNG, JPEG, TIFF, BMP or DICOM)")
    if bbox_csv and not Path(bbox_csv).is_file():
        raise UsageError(f"{bbox_csv}: box list not found")
    files = files[:max_images] if max_images else files
    config = SaliencyConfig(
        inputs=[str(f) for f in files], models=models, weights=weights, methods=split_csv(methods) or None,
        profile=profile, overrides=Overrides(layers=cam_layers, aug_smooth=aug_smooth), bbox_csv=bbox_csv,
        targets=tuple(split_names(target_classes)), top_k=top_k, faithfulness=faithfulness,
        percentiles=_ints(road_percentiles, "--road-percentiles"), sanity=sanity, sanity_steps=sanity_steps,
        sanity_images=sanity_images, sanity_threshold=sanity_threshold, seed=seed, batch_size=batch_size,
        backend=backend, device=resolve_device(device), random_init=random_weights, weights_dir=weights_dir,
        accept_changed=accept_changed_weights, fail_fast=fail_fast, max_plugin_failures=max_plugin_failures,
        progress=not quiet,
    )
    result = run_saliency(config, plugin_manager())
    summary = result.summary()
    files_written = write_report(summary, output)
    click.echo(table(summary["rows"]))
    for path, reason in result.unreadable.items():
        click.echo(f"error: {path}: {reason}", err=True)
    for row in summary["rows"]:
        for line in row["errors"][:3]:
            click.echo(f"error: {row['method']} / {row['model']}: {line}", err=True)
        if len(row["errors"]) > 3:
            click.echo(f"error: {row['method']} / {row['model']}: … {len(row['errors']) - 3} more in "
                       f"{files_written['json']}", err=True)
        if row["stopped"]:
            click.echo(f"error: {row['method']} / {row['model']}: {row['stopped']}", err=True)
        sanity_row = row.get("sanity") or {}
        if sanity_row.get("flagged"):
            click.echo(f"warning: {row['method']} / {row['model']}: maps barely change when the model is "
                       f"randomized (mean Spearman {sanity_row['spearman']:.2f} > {sanity_threshold})", err=True)
    for name, path in files_written.items():
        click.echo(f"{name}: {path}")
    if result.failed:
        sys.exit(1)
