"""``xcam bench``: latency, throughput, CAM cost and end-to-end analyze time.

The logic lives in the repository's ``benchmarks/bench.py`` (loaded from the source checkout);
this module only parses options and imports nothing heavy at import time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import click


def load_bench_module() -> ModuleType:
    """``benchmarks/bench.py`` of the source checkout this package is installed from."""
    from xcam.core.errors import XcamError

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    if not path.is_file():
        raise XcamError(f"xcam bench needs the repository's benchmarks/bench.py (not found at {path}); "
                        "run it from a source checkout")
    spec = importlib.util.spec_from_file_location("xcam_benchmarks_bench", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    assert spec is not None and spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


BACKENDS = ("torch", "torch-amp", "torch-bf16", "torch-compile", "onnx", "onnx-int8", "openvino", "openvino-int8",
            "auto")
FORMATS = ("table", "markdown", "json")
SECTIONS = ("throughput", "cams", "analyze")


@click.command("bench")
@click.option("--models", default="densenet121", show_default=True, help="Comma-separated classifier names.")
@click.option("--backends", default="torch,onnx,onnx-int8", show_default=True,
              help=f"Comma-separated: {', '.join(BACKENDS)}.")
@click.option("--devices", default=None, help="Comma-separated: cpu, cuda (default: cpu, plus cuda when available).")
@click.option("--batch-sizes", default="1,16", show_default=True)
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="Image folder (default: $XCAM_TEST_DATA / ../shared/data when present, else generated images).")
@click.option("--output", type=click.Path(dir_okay=False), default="bench.json", show_default=True,
              help="JSON results; the bar chart goes beside it (.png).")
@click.option("--sections", default=",".join(SECTIONS), show_default=True, help="Which parts to run.")
@click.option("--quick", is_flag=True, help="Tiny repeats: a format check (about a minute on an idle 2-core machine once exports are cached).")
@click.option("--real-weights", is_flag=True, help="Use the real weight files instead of seeded random weights.")
@click.option("--torch-threads", type=click.IntRange(1, 1024), default=None,
              help="torch.set_num_threads for the PyTorch rows (default: PyTorch's own choice).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Report on stdout: table (full names when not a terminal), markdown or json.")
def bench(models, backends, devices, batch_sizes, images, output, sections, quick, real_weights, torch_threads,
          fmt) -> None:
    """Benchmark latency and throughput per model × backend × device × batch size, the cost of
    CAMs (one class, all classes), and end-to-end analyze time; prints a report (with the CPU
    model, ISA flags and cores), writes JSON + PNG. The auto backend shows what it chose."""
    from xcam.core.errors import UsageError

    backend_list = _csv(backends) or []
    bad = [b for b in backend_list if b not in BACKENDS]
    if bad:
        raise UsageError(f"unknown backend {bad[0]!r}; valid: {', '.join(BACKENDS)}")
    device_list = _csv(devices)
    if device_list and any(d not in ("cpu", "cuda") for d in device_list):
        raise UsageError(f"unknown device in {devices!r}; valid: cpu, cuda")
    section_list = _csv(sections) or []
    if any(s not in SECTIONS for s in section_list):
        raise UsageError(f"unknown section in {sections!r}; valid: {', '.join(SECTIONS)}")
    try:
        sizes = [int(b) for b in _csv(batch_sizes) or []]
    except ValueError:
        raise UsageError(f"--batch-sizes must be integers, got {batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError("--batch-sizes must be positive integers")
    module = load_bench_module()
    settings = module.BenchSettings(
        models=_csv(models) or ["densenet121"], backends=backend_list, devices=device_list, batch_sizes=sizes,
        images=images, output=output, quick=quick, real_weights=real_weights, sections=section_list,
        torch_threads=torch_threads,
    )
    results = module.run(settings, log=lambda msg: click.echo(msg, err=True))
    module.print_report(results, fmt=fmt)
    click.echo(f"wrote {output} and {results['chart']}", err=fmt == "json")
