"""``xcam evaluate``: dataset-level localization accuracy (Wang et al. 2017), see docs/evaluation.md.

The chain with the settings of ``--profile`` (the default profile is the one measured to localize
best), so what it reports is what ``analyze``, ``score`` and the UI produce.
"""

from __future__ import annotations

import click

from xcam.commands._common import (
    MODEL_BACKENDS,
    accept_changed_weights_option,
    cam_options,
    device_option,
    dicom_voi_option,
    pick_renamed,
    plugin_failure_options,
    profile_option,
    weights_dir_option,
)


@click.command("evaluate")
@click.option("--imgpath", default=None, type=click.Path(), help="Folder with the images (searched recursively).")
@click.option("--bbox-csv", default=None, type=click.Path(), help="BBox_List_2017.csv (or a subset in its layout).")
@click.option("--csvpath", default=None, type=click.Path(), help="Data_Entry_2017.csv: adds per-class AUC.")
@click.option("--models", default="mobilenetv3", show_default=True, metavar="M[:WEIGHTS],...",
              help="Classifier plugin(s), comma-separated, each optionally name:variant-or-checkpoint (an ensemble).")
@click.option("--weights", default=None,
              help="Weight variant or checkpoint per model, comma-separated (same as name:weights in --models).")
@click.option("--model-weights", default=None, metavar="W1,W2,...", help="Ensemble weight per model.")
@profile_option
@cam_options
@click.option("--cam-layer", "cam_layer_old", default=None, hidden=True)
@click.option("--ensembler", default=None, help="Combines models (and fused layers); default: the profile's.")
@click.option("--backend", type=click.Choice(MODEL_BACKENDS), default="torch", show_default=True)
@click.option("--output", default="eval", show_default=True, type=click.Path(file_okay=False),
              help="Results folder (with --compare, default: eval/compare_<A>_vs_<B>).")
@click.option("--coco", "coco_file", default=None, type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Write the predicted boxes as COCO results (score: class probability) and print COCO AP.")
@click.option("--coco-gt", "coco_gt", default=None, type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Write the ground truth as a COCO data set (default with --coco: FILE.dataset.json); "
                   "prints COCO AP.")
@click.option("--random-weights", is_flag=True, help="Random model weights (smoke tests: the numbers mean nothing).")
@click.option("--montage", type=click.IntRange(0), default=4, show_default=True, help="Best/worst cases shown.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--bootstrap", type=click.IntRange(0), default=1000, show_default=True, metavar="N",
              help="Bootstrap resamples (of patients or images) for the 95% intervals; 0: none.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), default=None, metavar="A.json B.json",
              help="Paired difference B − A of two results.json (same boxes) with 95% intervals; no images needed.")
@plugin_failure_options
@device_option
@weights_dir_option
@accept_changed_weights_option
@dicom_voi_option
def evaluate(imgpath, bbox_csv, csvpath, models, weights, model_weights, profile, method, cam_layers, aug_smooth,
             eigen_smooth, mask_name, mask_option, strategy, strategy_option, cam_layer_old, ensembler, backend,
             output, coco_file, coco_gt, random_weights, montage, quiet, bootstrap, bootstrap_seed, compare,
             fail_fast, max_plugin_failures, device, weights_dir,
             accept_changed_weights) -> None:
    """Localize every box of a BBox_List with CAMs and score it as Wang et al. 2017 did.

    Per class: T(IoBB) accuracy at 0.1–0.9, T(IoU) at 0.1–0.7, average false positives,
    pointing-game hit rate, mean IoU and (with --csvpath) AUC, each beside two baselines that
    use no model (a whole-lung-field box and a centre box). Writes results.json, results.md,
    per_box.csv, accuracy_vs_threshold.png and montage.png into --output; every number with its
    95% bootstrap interval. --compare A/results.json B/results.json: is B better than A?
    """
    from xcam.chain.settings import Overrides
    from xcam.commands._common import parse_key_values, plugin_manager, resolve_device, split_csv
    from xcam.core.errors import UsageError
    from xcam.evaluation.preflight import check_output_dir, check_output_file, parse_model_weights
    from xcam.evaluation.report import baseline_table, with_interval
    from xcam.evaluation.run import EvalConfig
    from xcam.evaluation.run import evaluate as run_evaluation

    if compare:
        from xcam.evaluation.compare import compare_files, default_output, markdown, write_comparison

        compared = compare_files(*compare, resamples=bootstrap, seed=bootstrap_seed)
        click.echo(markdown(compared, headline_only=True))
        if click.get_current_context().get_parameter_source("output") is click.core.ParameterSource.DEFAULT:
            output = default_output(*compare, root=output)
        for name, path in write_comparison(compared, output).items():
            click.echo(f"{name}: {path}")
        return
    if not imgpath or not bbox_csv:
        raise UsageError("--imgpath and --bbox-csv are required (or --compare A/results.json B/results.json)")
    cam_layers = pick_renamed(cam_layers, cam_layer_old, "--cam-layers", "--cam-layer")
    names = split_csv(models) or ["mobilenetv3"]
    variants = split_csv(weights)
    if variants:
        if len(variants) == 1 and len(names) > 1:
            variants = variants * len(names)
        if len(variants) != len(names):
            raise UsageError(f"{len(variants)} --weights for {len(names)} --models (give one per model, comma-separated)")
        names = [n if ":" in n else f"{n}:{v}" for n, v in zip(names, variants)]
    ensemble_w = parse_model_weights(model_weights, len(names))  # before any model loads
    if output:  # outputs that cannot be created fail before any work
        check_output_dir(output, "--output")
    for option, path in (("--coco", coco_file), ("--coco-gt", coco_gt)):
        if path:
            check_output_file(path, option)
    overrides = Overrides(method=method, layers=cam_layers, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                          mask=mask_name, mask_options=parse_key_values(mask_option, "--mask-option"),
                          strategy=strategy, strategy_options=parse_key_values(strategy_option, "--strategy-option"),
                          ensembler=ensembler)
    config = EvalConfig(
        imgpath=imgpath, bbox_csv=bbox_csv, csvpath=csvpath, models=names, model_weights=ensemble_w,
        profile=profile, overrides=overrides, output=output, random_init=random_weights,
        device=resolve_device(device), backend=backend, weights_dir=weights_dir,
        accept_changed=accept_changed_weights, montage=montage, progress=not quiet, fail_fast=fail_fast,
        max_plugin_failures=max_plugin_failures, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed,
    )
    result = run_evaluation(config, plugin_manager())
    s = result.summary
    click.echo(baseline_table(s))
    mean = s["mean"]
    if mean:
        auc = f", AUC {mean['auc']:.3f}" if mean.get("auc") is not None else ""
        click.echo(f"class mean: pointing {with_interval(mean, 'pointing')}, "
                   f"T(IoBB>0.25) {with_interval(mean, 'iobb', '0.25')}, "
                   f"T(IoU>0.1) {with_interval(mean, 'iou', '0.1')}, "
                   f"mIoU {with_interval(mean, 'miou')}{auc} over {mean['n_boxes']} boxes")
    for reason in s["images"]["unreadable"].values():
        click.echo(f"skipped: {reason}", err=True)
    for problem in s["boxes"]["excluded"]:
        click.echo(f"error: {problem}", err=True)
    if s.get("skipped"):
        click.echo(f"not evaluated (no model predicts the class): {s['skipped']}", err=True)
    for name, path in result.files.items():
        click.echo(f"{name}: {path}")
    if coco_file or coco_gt:
        from pathlib import Path

        from xcam.core.jsonio import write_json
        from xcam.interop.coco import from_box_records

        coco, classes = from_box_records(result.records)
        if coco_file:
            written = coco.write(coco_file, coco_gt)
            click.echo(f"coco: {written[0]}\ncoco_gt: {written[1]}")
        else:
            click.echo(f"coco_gt: {write_json(coco_gt, coco.dataset())}")
        scores = coco.evaluate(classes)
        if output:
            write_json(Path(output) / "coco_ap.json", scores.as_dict())
        click.echo(scores.line())
    failed = False
    if s["boxes"]["excluded"]:
        click.echo(f"error: {len(s['boxes']['excluded'])} of {s['boxes']['in_csv']} boxes of {bbox_csv} lie outside "
                   "their image (not scored)", err=True)
        failed = True
    if s["images"]["unreadable"]:
        click.echo(f"error: {len(s['images']['unreadable'])} image(s) could not be read (their boxes are not scored; "
                   "listed above and in results.json)", err=True)
        failed = True
    if failed:  # as score, analyze and classify: the report is written, the exit status says it is incomplete
        raise SystemExit(1)
