"""``xcam score``: high-throughput batch scoring that loses nothing (local or Ray).

Imports nothing heavy at import time: torch, Ray and pyarrow load when the command runs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import click

from xcam.commands._common import (
    MODEL_BACKENDS,
    accept_changed_weights_option,
    device_option,
    dicom_voi_option,
    plugin_failure_options,
    profile_option,
    weights_dir_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.imageio import DicomReadOptions


def _check_not_empty(spec: str) -> None:
    """A one-line :class:`UsageError` when ``--input`` names nothing usable or matches no image
    (a finished run's inputs still match: resuming it is not an error)."""
    from xcam.core.errors import UsageError
    from xcam.score.inputs import iter_inputs

    if next(iter(iter_inputs(spec)), None) is None:
        raise UsageError(f"--input {spec!r}: no images found")


@click.command("score")
@click.option("--input", "input_", required=True, metavar="DIR|GLOB|LIST.csv",
              help="A folder (recursively), a glob pattern (quote it) or a list file (.csv column 'path', or .txt).")
@click.option("--output", required=True, type=click.Path(dir_okay=True), metavar="results.(csv|parquet|jsonl)",
              help="Results; the format follows the suffix (.parquet is a directory of parts).")
@click.option("--models", default=None, metavar="M[:WEIGHTS],...",
              help="Classifiers, comma-separated (default from plugins.toml). Several → ensemble columns too.")
@click.option("--backend", type=click.Choice(MODEL_BACKENDS), default="auto", show_default=True,
              help="auto: ONNX Runtime when available, else PyTorch.")
@device_option
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability at which a finding counts as positive (CAM classes, boxes).")
@click.option("--with-cams", is_flag=True, help="Compute CAMs (a 'cams' column with each CAM's peak).")
@click.option("--cam-classes", type=click.Choice(["positive", "all"]), default="positive", show_default=True)
@click.option("--boxes", is_flag=True, help="Boxes per positive finding, in original pixels ('boxes' JSON column).")
@click.option("--coco", "coco_file", default=None, type=click.Path(dir_okay=False), metavar="FILE.json",
              help="With --boxes: also write the boxes as COCO results (score: class probability) and "
                   "FILE.dataset.json (images, categories), read from the whole --output at the end.")
@profile_option
@click.option("--cam-method", default=None, help="CAM method plugin (default: the profile's; see `xcam config`).")
@click.option("--mask", "mask_name", default=None, help="Mask extractor plugin for --boxes (default: the profile's).")
@click.option("--strategy", default=None, help="Bbox strategy plugin for --boxes (default: the profile's).")
@click.option("--ensembler", default=None, help="Ensembler plugin for several models (default: the profile's).")
@plugin_failure_options
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="local: decoding threads (default: CPU count); ray: model actors (default: from cluster CPUs).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Skip inputs already in --output (default) or start the output over.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (default: start a local Ray instance).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--pool", type=click.Choice(["thread", "process"]), default="thread", hidden=True)
@click.option("--random-weights", is_flag=True, hidden=True, help="Random-init models (tests, benchmarks).")
@weights_dir_option
@accept_changed_weights_option
@dicom_voi_option(expose=True)
@click.pass_context
def score(ctx: click.Context, input_: str, output: str, models: str | None, backend: str, device: str,
          batch_size: int, threshold: float, with_cams: bool, cam_classes: str, boxes: bool, coco_file: str | None,
          profile: str | None,
          cam_method: str | None, mask_name: str | None, strategy: str | None, ensembler: str | None,
          fail_fast: bool, max_plugin_failures: int | None, workers: int | None, resume: bool, engine: str, address: str | None,
          progress: bool | None, as_json: bool, pool: str, random_weights: bool, weights_dir: str | None,
          accept_changed_weights: bool, dicom_voi: "DicomReadOptions") -> None:
    """Score every image of a folder, glob or list into one results file, one row per image.

    A killed run leaves a readable file; running the same command again resumes it (no input is
    lost or scored twice). Unreadable inputs become error rows; the exit code is 1 when any failed.
    CAMs and boxes come from the same chain as `xcam analyze` (settings: --profile, then the
    options given here).
    """
    from xcam.commands._common import plugin_manager, resolve_device
    from xcam.score.job import JobConfig, run_job
    from xcam.score.scorer import ScoreOptions, parse_models
    from xcam.score.writers import output_format

    from xcam.evaluation.preflight import check_output_dir, check_output_file

    _check_not_empty(input_)
    if output_format(output) == "parquet":  # a folder of part files
        check_output_dir(output, "--output")
    else:
        check_output_file(output, "--output")
    if coco_file:
        check_output_file(coco_file, "--coco")
    if address and engine != "ray":
        raise click.UsageError("--address needs --engine ray")
    if coco_file and not boxes:
        raise click.UsageError("--coco needs --boxes")
    pm = plugin_manager(ctx)
    root = ctx.find_root().obj or {}
    absolute = lambda p: os.path.abspath(p) if p else None
    options = ScoreOptions(
        models=parse_models(models, pm.config.defaults["classifier"]),
        backend=backend, device=resolve_device(device), random_weights=random_weights,
        weights_dir=absolute(weights_dir), accept_changed_weights=accept_changed_weights,
        config_path=absolute(root.get("config")), ensembler=ensembler, threshold=threshold,
        with_cams=with_cams or boxes, cam_classes=cam_classes, boxes=boxes, profile=profile, cam_method=cam_method,
        mask=mask_name, strategy=strategy, max_plugin_failures=max_plugin_failures, fail_fast=fail_fast,
        dicom=dicom_voi,
    )
    config = JobConfig(input=input_, output=output, options=options, batch_size=batch_size, workers=workers,
                       resume=resume, engine=engine, address=address, pool=pool, progress=progress)
    summary = run_job(config, pm=pm)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(summary.text(), err=False)
    if coco_file:
        from xcam.score.coco import write_coco

        results, dataset, n = write_coco(output, coco_file)
        click.echo(f"COCO: {n} boxes -> {results} (data set: {dataset})", err=as_json)
    if summary.failed:
        sys.exit(1)
