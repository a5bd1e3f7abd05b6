"""``xcam export``: a classifier to ONNX (FP32, optionally INT8) with a parity report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import click

from xcam.commands._common import (
    accept_changed_weights_option,
    plugin_manager,
    weights_dir_option,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _report_lines(result: dict) -> list[str]:
    lines = [f"exported: {result['path']} ({result['size_mb']:.1f} MB, {result['status']})"]
    parity = result.get("parity") or {}
    if parity:
        cams = f", cams {parity['max_abs_cams']:.2e}" if "max_abs_cams" in parity else ""
        lines.append(f"parity vs PyTorch on {parity['source']}: max |Δ| probabilities "
                     f"{parity['max_abs_probabilities']:.2e}, logits {parity['max_abs_logits']:.2e}{cams}")
    entry = result.get("int8_selection")
    if entry:
        lines += _selection_lines(entry)
    if result.get("int8_path"):
        q = result.get("int8_vs_fp32") or {}
        lines.append(f"int8 kept: {result['int8_path']} ({result['int8_size_mb']:.1f} MB, {result['int8_runtime']}; "
                     f"held out |Δp| p95 {q.get('p95_abs_probabilities', float('nan')):.4f}, "
                     f"max {q.get('max_abs_probabilities', float('nan')):.4f}, "
                     f"mean {q.get('mean_abs_probabilities', float('nan')):.4f})")
    elif entry:
        lines.append("int8: none kept (no INT8 candidate was both within budget and faster than onnx FP32 here)")
    return lines


def _selection_lines(entry: dict) -> list[str]:
    """The measured candidates as a fixed-width table, then what ``--backend auto`` runs."""
    cpu, budget = entry["cpu"], entry["budget"]
    sizes = [str(b) for b in entry["batch_sizes"]]
    bound = ", ".join(f"{k} ≤ {v:g}" for k, v in budget.items() if v is not None) or "none"
    lines = [f"int8 chosen by measurement on {cpu['model']} ({', '.join(cpu['isa']) or 'ISA unknown'}; "
             f"{cpu['cores']} cores); held out: {entry['held_out']}; budget |Δp| {bound}",
             f"  {'backend':<14} {'preset':<28} " + " ".join(f"{'×b' + b:>7}" for b in sizes)
             + f" {'p95|Δp|':>8} {'max|Δp|':>8} {'mean|Δp|':>8}  verdict"]
    for r in entry["candidates"]:
        acc = r.get("accuracy") or {}
        speed = " ".join(f"{r['speedup'][b]:>6.2f}×" if b in r["speedup"] else f"{'-':>7}" for b in sizes)
        nums = " ".join(f"{acc[k]:>8.4f}" if k in acc else f"{'-':>8}"
                        for k in ("p95_abs_probabilities", "max_abs_probabilities", "mean_abs_probabilities"))
        lines.append(f"  {r['backend']:<14} {r['preset']:<28} {speed} {nums}  {r['verdict']}")
    lines.append(f"--backend auto on this CPU: {entry['reason']}")
    return lines


def _ints(value: str | None, what: str) -> list[int]:
    from xcam.core.errors import UsageError

    try:
        out = [int(v) for v in (value or "").split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise UsageError(f"{what} must be positive integers, got {value!r}")
    return out


def _readable_batch(folder: str, n: int, size: int, preprocessing: str) -> tuple["np.ndarray", str]:
    """The first ``n`` readable images under ``folder`` as a batch and its description; each
    unreadable file is skipped with a one-line warning, and none readable is a :class:`UsageError`."""
    import numpy as np

    from xcam.core.errors import ImageLoadError, UsageError
    from xcam.export.samples import image_files, load_batch

    files = image_files(folder)
    arrays = []
    for file in files:
        try:
            arrays.append(load_batch([file], size, preprocessing))
        except ImageLoadError as exc:
            click.echo(f"warning: --parity-images: skipped {exc}", err=True)
            continue
        if len(arrays) == n:
            break
    if not arrays:
        problem = f"none of its {len(files)} image files is readable" if files else "no image files found"
        raise UsageError(f"--parity-images {folder}: {problem}")
    return np.concatenate(arrays), f"{len(arrays)} images from {folder}"


@click.command("export")
@click.option("--model", default=None, help="Classifier plugin (default from plugins.toml: densenet121).")
@click.option("--weights", default=None, help="Weight variant or checkpoint path.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the file here (default: only the cache under $XCAM_HOME/onnx).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="Also make a static INT8 model.")
@click.option("--calibration", type=click.Path(file_okay=False), default=None,
              help="Folder of calibration images for --quantize int8.")
@click.option("--calibration-count", type=click.IntRange(1, 10_000), default=32, show_default=True)
@click.option("--quant-preset", default="all", show_default=True,
              help="INT8 configurations to measure, comma-separated, or 'all' (see docs/fast-path.md): "
                   "default, qoperator, qdq-s8s8-all, ...")
@click.option("--runtimes", default="auto", show_default=True,
              help="Runtimes to measure INT8 on: onnxruntime, openvino (auto: those installed).")
@click.option("--budget-p95", type=click.FloatRange(0, 1), default=0.03, show_default=True,
              help="Accuracy budget: 95th percentile of |Δ probability| vs FP32 on held-out images.")
@click.option("--budget-max", type=click.FloatRange(0, 1), default=None, help="Also bound the max |Δ probability|.")
@click.option("--held-out", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Held-out images (those after the calibration ones in --calibration) for the accuracy budget.")
@click.option("--tune-batch-sizes", default="1,16", show_default=True,
              help="Batch sizes at which INT8 must beat FP32 (every one).")
@click.option("--tune-rounds", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Interleaved timing rounds per batch size (3× for batch 1).")
@click.option("--time-all", is_flag=True, help="Also time the candidates outside the accuracy budget.")
@click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True)
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True)
@click.option("--no-cams", is_flag=True, help="Leave the all-class Grad-CAM output out of the graph.")
@click.option("--random-weights", is_flag=True, help="Random weights (tests and demos; never cached).")
@click.option("--parity-images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Images for the parity report (default: $XCAM_TEST_DATA if present, else generated).")
@click.option("--force", is_flag=True, help="Export again even when a cached file exists.")
@weights_dir_option
@accept_changed_weights_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export(model, weights, output, quantize, calibration, calibration_count, quant_preset, runtimes, budget_p95,
           budget_max, held_out, tune_batch_sizes, tune_rounds, time_all, opset, exporter, no_cams, random_weights,
           parity_images, force, weights_dir, accept_changed_weights, as_json) -> None:
    """Export a classifier to ONNX with logits, calibrated probabilities and (for GAP→linear heads)
    the Grad-CAM of every class, then report parity against PyTorch.

    With --quantize int8: every INT8 configuration on every installed runtime is measured on
    this CPU; the fastest within the accuracy budget that beats ONNX Runtime FP32 at every
    --tune-batch-sizes is kept, and what --backend auto will run here is recorded."""
    from xcam.core.errors import UsageError

    if quantize and not calibration:
        raise UsageError("--quantize int8 needs --calibration DIR (a folder of representative images)")
    from xcam.export.quantize import PRESETS, RUNTIMES

    presets = (list(PRESETS) if quant_preset.strip() == "all"
               else [p.strip() for p in quant_preset.split(",") if p.strip()])
    bad = [p for p in presets if p not in PRESETS]
    if bad or not presets:
        raise UsageError(f"unknown --quant-preset {(bad or [quant_preset])[0]!r}; valid: all, {', '.join(PRESETS)}")
    runtime_list = None if runtimes.strip() == "auto" else [r.strip() for r in runtimes.split(",") if r.strip()]
    if runtime_list is not None and (not runtime_list or any(r not in RUNTIMES for r in runtime_list)):
        raise UsageError(f"unknown --runtimes {runtimes!r}; valid: auto, {', '.join(RUNTIMES)}")
    if runtime_list is not None and "onnxruntime" not in runtime_list:
        runtime_list.insert(0, "onnxruntime")  # the reference every candidate is measured against
    batch_sizes = _ints(tune_batch_sizes, "--tune-batch-sizes")
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
    batch, source = (_readable_batch(parity_images, 4, size, prep) if parity_images
                     else sample_batch(4, size, prep, None))
    torch_model = artifact.model or registration.build(variant, store=store, options=options)
    result["parity"] = parity_report(torch_model, path, batch, source)
    if quantize:
        from xcam.export.quantize import Budget, calibration_batch
        from xcam.export.tuning import tune_int8

        if runtime_list and "openvino" in runtime_list:
            from xcam.export.openvino_runtime import openvino_available

            if not openvino_available():
                raise UsageError("--runtimes openvino: openvino is not installed (pip install 'xcam[openvino]')")
        calib = calibration_batch(calibration, size, prep, calibration_count)
        held, held_source = sample_batch(held_out, size, prep, calibration, offset=calibration_count)
        log = None if as_json else (lambda msg: click.echo(f"xcam: {msg}", err=True))
        selection, entry = tune_int8(path, calib, held, presets=presets, runtimes=runtime_list,
                                     budget=Budget(p95=budget_p95, max=budget_max), batch_sizes=batch_sizes,
                                     rounds=tune_rounds, calibration_source=f"{len(calib)} images from {calibration}",
                                     held_source=held_source, time_all=time_all, log=log)
        result["int8_selection"] = entry
        if selection.int8 is not None:
            int8 = path.parent / selection.int8.file
            result.update(int8_path=str(int8), int8_size_mb=int8.stat().st_size / 1e6,
                          int8_runtime=selection.int8.runtime, int8_vs_fp32=selection.int8.accuracy)
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
