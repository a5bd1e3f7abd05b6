"""``xcam classify``: probabilities for one or more images, as a table or JSON."""

from __future__ import annotations

import json
import sys
import traceback

import click

from xcam.commands._common import (
    MODEL_BACKENDS,
    accept_changed_weights_option,
    device_option,
    dicom_voi_option,
    plugin_manager,
    resolve_device,
    weights_dir_option,
)

RULE = "=" * 60
THIN = "-" * 60


def format_report(path: str, model: str, variant: str, predictions: dict[str, float], threshold: float) -> str:
    """The human-readable table of ``xcam classify``."""
    ordered = sorted(predictions.items(), key=lambda kv: kv[1], reverse=True)
    lines = [RULE, "X-RAY CLASSIFICATION RESULTS", RULE, f"Image: {path}", f"Model: {model} ({variant})",
             "All Predictions (sorted by probability):", THIN]
    for label, prob in ordered:
        verdict = "POSITIVE" if prob >= threshold else "negative"
        lines.append(f"{label:<30}: {prob:.4f} ({verdict})")
    positives = [(label, prob) for label, prob in ordered if prob >= threshold]
    lines.append(f"Positive Findings (>={threshold:g}):")
    lines += [f"  • {label}: {prob:.4f}" for label, prob in positives] or ["  (none)"]
    return "\n".join(lines)


@click.command("classify")
@click.option("--input", "inputs", multiple=True, required=True, type=click.Path(), help="Image file (repeatable).")
@click.option("--model", default=None, help="Classifier plugin (default from plugins.toml: densenet121).")
@click.option("--weights", default=None, help="Weight variant (e.g. densenet121-res224-nih, or nih) or a checkpoint path.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--backend", type=click.Choice(MODEL_BACKENDS), default="torch", show_default=True)
@device_option
@weights_dir_option
@accept_changed_weights_option
@dicom_voi_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def classify(inputs, model, weights, threshold, backend, device, weights_dir, accept_changed_weights, as_json) -> None:
    """Classify chest X-rays and print all probabilities, sorted, with the positive findings."""
    from xcam.core.errors import XcamError
    from xcam.core.imageio import load_image
    from xcam.export.backends import load_classifier
    from xcam.core.preprocess import preprocess
    from xcam.core.weights import WeightsStore

    pm = plugin_manager()
    store = WeightsStore.from_env(weights_dir, accept_changed=accept_changed_weights)
    clf = load_classifier(pm, model, weights, backend=backend, device=resolve_device(device), store=store)
    results, failures = [], 0
    for path in inputs:
        try:
            image = load_image(path)
        except XcamError as exc:
            if (click.get_current_context().obj or {}).get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            failures += 1
            results.append({"image": path, "status": "error", "error": str(exc)})
            continue
        batch, _ = preprocess(image, clf.input_size, clf.preprocessing)
        probs = clf.predict(batch[None])[0]
        predictions = {clf.labels[i]: float(probs[i]) for i in clf.valid_indices}
        results.append({
            "image": path, "status": "ok", "model": clf.name, "weights": clf.variant, "backend": clf.backend,
            "width": image.width, "height": image.height, "threshold": threshold, "predictions": predictions,
            "positive": sorted([k for k, v in predictions.items() if v >= threshold], key=lambda k: -predictions[k]),
        })
        if not as_json:
            click.echo(format_report(path, clf.name, clf.variant, predictions, threshold))
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
    if failures:
        sys.exit(1)
