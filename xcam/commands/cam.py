"""``xcam cam``: class activation maps, masks, boxes and overlays for one image and one model.

The chain (:mod:`xcam.chain`) with the settings of ``--profile`` (options given here override it);
files under ``OUTPUT/{image_stem}/`` as :mod:`xcam.chain.outputs` lays them out: ``_P0`` overlay,
``_P1`` heatmap, ``_P2`` red channel, ``_P3`` mask, ``_cam.npy``, ``_PBBox.json/.png``,
``_input_image_.png``, ``metadata.json`` and ``analysis.json``; with ``--dicom-out DIR`` (DICOM
inputs) also a DICOM Segmentation, a Structured Report and CAM overlays (docs/dicom.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from xcam.commands._common import (
    accept_changed_weights_option,
    cam_options,
    device_option,
    dicom_out_option,
    dicom_voi_option,
    plugin_manager,
    profile_option,
    resolve_device,
    weights_dir_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.results import Finding


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
@profile_option
@cam_options
@click.option("--output-dir", type=click.Path(file_okay=False), default="OUTPUT", show_default=True)
@dicom_out_option
@dicom_voi_option
@device_option
@weights_dir_option
@accept_changed_weights_option
@click.option("--random-weights", is_flag=True, hidden=True, help="Random-init model (tests, demos).")
def cam(input_path, model, weights, target_classes, top_k, threshold, profile, method, cam_layers, aug_smooth,
        eigen_smooth, mask_name, mask_option, strategy, strategy_option, output_dir, dicom_out, device, weights_dir,
        accept_changed_weights, random_weights) -> None:
    """Class activation maps, masks, boxes and overlays for one image."""
    from pathlib import Path

    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.outputs import write_result
    from xcam.chain.settings import ClassChoice
    from xcam.commands._common import settings_from_options
    from xcam.core.errors import UsageError
    from xcam.core.imageio import load_image
    from xcam.core.weights import WeightsStore

    targets = split_names(target_classes)
    if targets and top_k is not None:
        raise UsageError("use either --target-class or --top-k, not both")
    image = load_image(input_path)  # a bad image fails before the model loads
    if dicom_out:
        from xcam.interop.dicom import check_source

        check_source(input_path)  # a non-DICOM input fails here, before anything is written
    pm = plugin_manager()
    settings = settings_from_options(profile, method, cam_layers, aug_smooth, eigen_smooth, mask_name, mask_option,
                                     strategy, strategy_option)
    choice = ClassChoice(targets=targets, top_k=None if targets else (top_k or 3), threshold=threshold,
                         ground_truth=False)
    store = WeightsStore.from_env(weights_dir, accept_changed=accept_changed_weights)
    chain = build_chain(pm, model, settings, choice, weights=weights, store=store, keep_images=True,
                        load=LoadOptions(backend="torch", device=resolve_device(device), random_init=random_weights))
    result = chain.analyze(image)
    if result.error is not None:
        raise UsageError(f"{input_path}: {result.error}")
    paths = write_result(result, output_dir, settings=settings.as_dict())
    r = result.results[0]
    click.echo(f"{r.model} ({r.weights}), {r.method} on {input_path} ({image.width}x{image.height}):")
    for finding in r.findings:
        click.echo(finding_line(finding))
    if not r.findings:
        click.echo(f"  no class with probability >= {threshold:g}")
    click.echo(f"{len(paths)} files -> {Path(output_dir) / result.stem}")
    if dicom_out:
        from xcam.interop.dicom import weights_digests, write_dicom

        written = write_dicom(result, dicom_out, digests=weights_digests(chain.models))
        click.echo(f"{len(written)} DICOM files ({', '.join(p.name for p in written)}) -> {dicom_out}")
