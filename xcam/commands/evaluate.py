"""``xcam evaluate``: dataset-level localization accuracy (Wang et al. 2017), see docs/evaluation.md."""

from __future__ import annotations

import click

from xcam.commands._common import accept_changed_weights_option, device_option, weights_dir_option

from xcam.evaluation.defaults import (
    DEFAULT_AUG_SMOOTH,
    DEFAULT_ENSEMBLER,
    DEFAULT_MASK,
    DEFAULT_METHOD,
    DEFAULT_STRATEGY,
)


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _layers(text: str | None) -> list[str] | str | None:
    if not text or text == "model":
        return None
    return "auto" if text == "auto" else _csv_list(text)


def _options(pairs: tuple[str, ...], what: str) -> dict[str, object]:
    """``key=value`` strings → dict with numbers parsed."""
    from xcam.core.errors import UsageError

    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{what} {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


@click.command("evaluate")
@click.option("--imgpath", required=True, type=click.Path(), help="Folder with the images (searched recursively).")
@click.option("--bbox-csv", required=True, type=click.Path(), help="BBox_List_2017.csv (or a subset in its layout).")
@click.option("--csvpath", default=None, type=click.Path(), help="Data_Entry_2017.csv: adds per-class AUC.")
@click.option("--models", default="mobilenetv3", show_default=True, help="Classifier plugin(s), comma-separated (an ensemble).")
@click.option("--weights", default=None, help="Weight variant or checkpoint path per model, comma-separated.")
@click.option("--model-weights", default=None, help="Ensemble weight per model, comma-separated numbers.")
@click.option("--method", default=DEFAULT_METHOD, show_default=True, help="CAM method plugin.")
@click.option("--cam-layer", default="auto", show_default=True,
              help="Target layer(s), comma-separated (several are fused); 'model': the model's own; "
                   "'auto': the best measured fusion for known architectures, else the model's own.")
@click.option("--aug-smooth/--no-aug-smooth", default=DEFAULT_AUG_SMOOTH, show_default=True,
              help="Test-time augmentation of each CAM (pytorch-grad-cam's aug_smooth: flips x 3 brightness "
                   "factors, 6 passes; localized better on phantoms).")
@click.option("--mask", default=DEFAULT_MASK, show_default=True, help="Mask extractor plugin.")
@click.option("--mask-option", multiple=True, help="key=value passed to the mask extractor (repeatable).")
@click.option("--strategy", default=DEFAULT_STRATEGY, show_default=True, help="Bounding-box strategy plugin.")
@click.option("--strategy-option", multiple=True, help="key=value passed to the box strategy (repeatable).")
@click.option("--ensembler", default=DEFAULT_ENSEMBLER, show_default=True, help="Combines models (and fused layers).")
@click.option("--output", default="eval", show_default=True, type=click.Path(file_okay=False))
@click.option("--random-weights", is_flag=True, help="Random model weights (smoke tests: the numbers mean nothing).")
@click.option("--montage", type=click.IntRange(0), default=4, show_default=True, help="Best/worst cases shown.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@device_option
@weights_dir_option
@accept_changed_weights_option
def evaluate(imgpath, bbox_csv, csvpath, models, weights, model_weights, method, cam_layer, aug_smooth, mask, mask_option, strategy,
             strategy_option, ensembler, output, random_weights, montage, quiet, device, weights_dir,
             accept_changed_weights) -> None:
    """Localize every box of a BBox_List with CAMs and score it as Wang et al. 2017 did.

    Per class: T(IoBB) accuracy at 0.1–0.9, T(IoU) at 0.1–0.7, average false positives,
    pointing-game hit rate, mean IoU and (with --csvpath) AUC, each beside two baselines that
    use no model (a whole-lung-field box and a centre box). Writes results.json, results.md,
    per_box.csv, accuracy_vs_threshold.png and montage.png into --output.
    """
    from xcam.commands._common import plugin_manager, resolve_device
    from xcam.core.errors import UsageError
    from xcam.evaluation.report import baseline_table
    from xcam.evaluation.run import EvalConfig
    from xcam.evaluation.run import evaluate as run_evaluation

    try:
        ensemble_w = [float(v) for v in _csv_list(model_weights)] if model_weights else None
    except ValueError:
        raise UsageError(f"--model-weights {model_weights!r}: expected comma-separated numbers") from None
    config = EvalConfig(
        imgpath=imgpath, bbox_csv=bbox_csv, csvpath=csvpath, models=_csv_list(models) or ["mobilenetv3"],
        weights=_csv_list(weights) or [None], model_weights=ensemble_w, method=method, mask=mask, strategy=strategy,
        ensembler=ensembler, cam_layers=_layers(cam_layer), aug_smooth=aug_smooth, mask_options=_options(mask_option, "--mask-option"),
        strategy_options=_options(strategy_option, "--strategy-option"), output=output, random_init=random_weights,
        device=resolve_device(device), weights_dir=weights_dir, accept_changed=accept_changed_weights,
        montage=montage, progress=not quiet,
    )
    result = run_evaluation(config, plugin_manager())
    s = result.summary
    click.echo(baseline_table(s))
    mean = s["mean"]
    if mean:
        auc = f", AUC {mean['auc']:.3f}" if mean.get("auc") is not None else ""
        click.echo(f"class mean: pointing {mean['pointing']:.3f}, T(IoBB>0.25) {mean['iobb']['0.25']:.3f}, "
                   f"T(IoU>0.1) {mean['iou']['0.1']:.3f}, mIoU {mean['miou']:.3f}{auc} over {mean['n_boxes']} boxes")
    for reason in s["images"]["unreadable"].values():
        click.echo(f"skipped: {reason}", err=True)
    if s.get("skipped"):
        click.echo(f"not evaluated (no model predicts the class): {s['skipped']}", err=True)
    for name, path in result.files.items():
        click.echo(f"{name}: {path}")
