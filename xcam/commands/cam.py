"""``xcam cam``: class activation maps, masks, boxes and overlays for one image and one model.

Writes under ``OUTPUT/{image_stem}/``: ``{model}_{pathology}_P0.png`` (overlay), ``_P1`` (jet
heatmap), ``_P2`` (its red channel), ``_P3`` (binary mask), ``_cam.npy`` (float16 CAM in the
original grid), ``_PBBox.json``/``.png``, ``_input_image_.png`` and ``metadata.json`` (merged
with the models already recorded there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xcam.commands._common import (
    accept_changed_weights_option,
    device_option,
    plugin_manager,
    resolve_device,
    weights_dir_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.pipeline import Finding


def split_names(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--target-class A --target-class B`` and ``--target-class A,B`` both give ``(A, B)``."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def finding_line(finding: "Finding") -> str:
    """One human line for a finding: probability, top box and metrics."""
    text = f"  {finding.pathology:<28} p={finding.probability:.4f} ({finding.reason})"
    b = finding.box
    text += f"  box x={b.x:.0f} y={b.y:.0f} w={b.width:.0f} h={b.height:.0f}" if b else "  no box (empty mask)"
    if finding.metrics:
        m = finding.metrics
        text += f"  IoU={m['iou']:.3f} IoBB={m['iobb']:.3f}"
    return text


@click.command("cam")
@click.option("--input", "input_path", required=True, type=click.Path(), help="X-ray image (PNG/JPEG/DICOM).")
@click.option("--model", default=None, help="Classifier plugin (default from plugins.toml: densenet121).")
@click.option("--weights", default=None, help="Weight variant (e.g. densenet121-res224-nih, or nih) or a checkpoint path.")
@click.option("--target-class", "target_classes", multiple=True,
              help="Pathology to explain, case-insensitive (repeatable or comma-separated).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Explain the k most probable classes (default 3 when no --target-class).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="With --top-k: only classes with probability >= this.")
@click.option("--method", default=None, help="CAM method (default from plugins.toml: gradcam); see `xcam plugins`.")
@click.option("--mask", "mask_name", default=None, help="Mask extractor (default from plugins.toml: otsu).")
@click.option("--strategy", default=None, help="Bbox strategy (default from plugins.toml: largest).")
@click.option("--aug-smooth", is_flag=True, help="Test-time augmentation smoothing (6x slower).")
@click.option("--eigen-smooth", is_flag=True, help="First principal component of the weighted activations.")
@click.option("--output-dir", type=click.Path(file_okay=False), default="OUTPUT", show_default=True)
@device_option
@weights_dir_option
@accept_changed_weights_option
@click.option("--random-weights", is_flag=True, hidden=True, help="Random-init model (tests, demos).")
def cam(input_path, model, weights, target_classes, top_k, threshold, method, mask_name, strategy, aug_smooth,
        eigen_smooth, output_dir, device, weights_dir, accept_changed_weights, random_weights) -> None:
    """Class activation maps, masks, boxes and overlays for one image."""
    from pathlib import Path

    from xcam.core.errors import UsageError
    from xcam.core.imageio import load_image
    from xcam.core.pipeline import AnalysisSettings, Pipeline, write_outputs
    from xcam.core.weights import WeightsStore

    targets = split_names(target_classes)
    if targets and top_k is not None:
        raise UsageError("use either --target-class or --top-k, not both")
    image = load_image(input_path)  # a bad image fails before the model loads
    pm = plugin_manager()
    settings = AnalysisSettings(
        method=method, mask=mask_name, strategy=strategy, target_classes=targets,
        top_k=None if targets else (top_k or 3), threshold=threshold, ground_truth_classes=False,
        aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
    )
    store = WeightsStore.from_env(weights_dir, accept_changed=accept_changed_weights)
    pipeline = Pipeline(pm, [model or pm.classifier(None).name], settings, weights=weights,
                        device=resolve_device(device), store=store, random_init=random_weights)
    pipeline.load_all()
    analysis = pipeline.analyze(image)
    paths = write_outputs(analysis, output_dir, render=True)
    result = analysis.results[0]
    click.echo(f"{result.model} ({result.weights}), {result.method} on {input_path} ({image.width}x{image.height}):")
    for finding in result.findings:
        click.echo(finding_line(finding))
    if not result.findings:
        click.echo(f"  no class with probability >= {threshold:g}")
    click.echo(f"{len(paths)} files -> {Path(output_dir) / analysis.stem}")
