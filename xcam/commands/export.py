"""``xcam export``: a classifier to ONNX (FP32, optionally INT8) with a parity report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from xcam.commands._common import (
    accept_changed_weights_option,
    plugin_manager,
    weights_dir_option,
)


def _report_lines(result: dict) -> list[str]:
    lines = [f"exported: {result['path']} ({result['size_mb']:.1f} MB, {result['status']})"]
    if result.get("int8_path"):
        lines.append(f"int8:     {result['int8_path']} ({result['int8_size_mb']:.1f} MB)")
    parity = result.get("parity") or {}
    if parity:
        cams = f", cams {parity['max_abs_cams']:.2e}" if "max_abs_cams" in parity else ""
        lines.append(f"parity vs PyTorch on {parity['source']}: max |Δ| probabilities "
                     f"{parity['max_abs_probabilities']:.2e}, logits {parity['max_abs_logits']:.2e}{cams}")
    q = result.get("int8_vs_fp32") or {}
    if q:
        lines.append(f"int8 vs fp32 on {q['source']} (held out): max |Δ| probabilities {q['max_abs_probabilities']:.4f}, "
                     f"mean {q['mean_abs_probabilities']:.4f}; cams {q.get('max_abs_cams', float('nan')):.4f}")
    return lines


def _int8_deviation(fp32: Path, int8: Path, batch, source: str) -> dict:
    import numpy as np

    from xcam.core.cam_math import normalize_cams
    from xcam.export.runtime import OnnxClassifier

    a, b = OnnxClassifier.from_path(fp32, "cpu").run(batch), OnnxClassifier.from_path(int8, "cpu").run(batch)
    d = np.abs(a["probabilities"] - b["probabilities"])
    out = {"source": source, "max_abs_probabilities": float(d.max()), "mean_abs_probabilities": float(d.mean())}
    if "cams" in a and "cams" in b:
        out["max_abs_cams"] = float(np.abs(normalize_cams(a["cams"]) - normalize_cams(b["cams"])).max())
    return out


@click.command("export")
@click.option("--model", default=None, help="Classifier plugin (default from plugins.toml: densenet121).")
@click.option("--weights", default=None, help="Weight variant or checkpoint path.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the file here (default: only the cache under $XCAM_HOME/onnx).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also make a static INT8 model.")
@click.option("--calibration", type=click.Path(file_okay=False), default=None,
              help="Folder of calibration images for --quantize int8.")
@click.option("--calibration-count", type=click.IntRange(1, 10_000), default=32, show_default=True)
@click.option("--quant-preset", default="default", show_default=True,
              help="INT8 configuration (see docs/fast-path.md): default, qoperator, qdq-s8s8-all, ...")
@click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True)
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True)
@click.option("--no-cams", is_flag=True, help="Leave the all-class Grad-CAM output out of the graph.")
@click.option("--random-weights", is_flag=True, help="Random weights (tests and demos; never cached).")
@click.option("--parity-images", type=click.Path(file_okay=False), default=None,
              help="Images for the parity report (default: $XCAM_TEST_DATA if present, else generated).")
@click.option("--force", is_flag=True, help="Export again even when a cached file exists.")
@weights_dir_option
@accept_changed_weights_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export(model, weights, output, quantize, calibration, calibration_count, quant_preset, opset, exporter, no_cams,
           random_weights, parity_images, force, weights_dir, accept_changed_weights, as_json) -> None:
    """Export a classifier to ONNX with logits, calibrated probabilities and (for GAP→linear heads)
    the Grad-CAM of every class, then report parity against PyTorch."""
    from xcam.core.errors import UsageError

    if quantize and not calibration:
        raise UsageError("--quantize int8 needs --calibration DIR (a folder of representative images)")
    from xcam.export.quantize import PRESETS

    if quant_preset not in PRESETS:
        raise UsageError(f"unknown --quant-preset {quant_preset!r}; valid: {', '.join(PRESETS)}")
    from xcam.core.weights import WeightsStore
    from xcam.export.onnx_export import ensure_export
    from xcam.export.parity import parity_report
    from xcam.export.samples import sample_batch

    pm = plugin_manager()
    registration = pm.classifier(model)
    options = pm.config.plugin_options(registration.name)
    variant = weights or options.get("weights")
    store = WeightsStore.from_env(weights_dir, accept_changed=accept_changed_weights)
    if random_weights and not output:
        output = f"{registration.name}-random.onnx"  # the temporary export is removed at exit
    if force and not random_weights:
        _drop_cached(registration, variant, store, options, opset, not no_cams)
    artifact = ensure_export(registration, variant, store=store, random_init=random_weights, options=options,
                             opset=opset, exporter=exporter, with_cams=not no_cams)
    path = artifact.path
    result: dict = {"model": registration.name, "variant": artifact.metadata.get("variant"), "path": str(path),
                    "status": f"exported with {artifact.exporter} in {artifact.seconds:.1f}s" if artifact.created
                    else "reused from cache", "metadata": artifact.metadata}
    size = int(artifact.metadata.get("input_size", registration.input_size))
    prep = artifact.metadata.get("preprocessing", "xrv")
    batch, source = sample_batch(4, size, prep, parity_images)
    torch_model = artifact.model or registration.build(variant, store=store, options=options)
    result["parity"] = parity_report(torch_model, path, batch, source)
    if quantize:
        from xcam.export.quantize import calibration_batch, ensure_int8

        calib = calibration_batch(calibration, size, prep, calibration_count)
        int8 = ensure_int8(path, calib, PRESETS[quant_preset])
        held, held_source = sample_batch(16, size, prep, calibration, offset=calibration_count)
        result.update(int8_path=str(int8), int8_size_mb=int8.stat().st_size / 1e6,
                      int8_vs_fp32=_int8_deviation(path, int8, held, held_source))
        if output:
            copy = Path(output).with_name(Path(output).stem + "-int8.onnx")
            shutil.copyfile(int8, copy)
            result["int8_path"] = str(copy)
    if output:
        shutil.copyfile(path, output)
        result["path"] = str(output)
    result["size_mb"] = Path(result["path"]).stat().st_size / 1e6
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo("\n".join(_report_lines(result)))


def _drop_cached(registration, variant, store, options, opset, with_cams) -> None:
    from xcam.export.onnx_export import cache_stem, onnx_cache_dir

    v = registration.variant(variant)
    digest = store.verify(store.resolve(v), v)
    stem = cache_stem(registration.name, v, digest, opset, options) + ("" if with_cams else "-nocam")
    for file in onnx_cache_dir().glob(f"{stem}*.onnx"):
        file.unlink()
