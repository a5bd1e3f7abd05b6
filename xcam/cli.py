"""The ``xcam`` command line.

Commands live in ``xcam.commands.<module>`` and are imported only when invoked, so
``xcam --help`` and ``xcam plugins`` never import torch. Errors derived from
:class:`xcam.core.errors.XcamError` print as one line; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import importlib
import sys

import click

from xcam import __version__

# command name -> (module under xcam.commands, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "classify": ("classify", "classify", "Classify chest X-rays and print the probabilities."),
    "plugins": ("plugins", "plugins", "List installed plugins (name, hooks, version, source, status)."),
    "config": ("config", "config", "Show the effective settings (config file, profile, plugins)."),
    "models": ("plugins", "models", "List classifiers, weight variants, labels and local weights."),
    "cam": ("cam", "cam", "Class activation maps, masks and overlays for one image."),
    "bbox": ("bbox", "bbox", "Boxes from a binary mask, with metrics against ground truth."),
    "consolidate": ("consolidate", "consolidate", "Combine several models' masks into one box."),
    "ensemble": ("ensemble", "ensemble", "Combine several models' probabilities and CAMs."),
    "analyze": ("analyze", "analyze", "Whole chain: classify, CAMs, masks, boxes, consolidation, metrics."),
    "export": ("export", "export", "Export a classifier to ONNX (optionally INT8) with a parity report."),
    "bench": ("bench", "bench", "Benchmark latency and throughput per model, backend and device."),
    "train": ("train", "train", "Train a MobileNetV3 classifier on data in NIH ChestX-ray14 format."),
    "phantom": ("phantom", "phantom", "Generate synthetic chest radiographs with boxes in NIH format."),
    "evaluate": ("evaluate", "evaluate", "Dataset-level localization evaluation (Wang et al. 2017 protocol)."),
    "demo": ("demo", "demo", "Offline demo: phantoms, train, evaluate, render (no network needed)."),
    "score": ("score", "score", "High-throughput batch scoring of image folders (local or Ray)."),
    "saliency": ("saliency", "saliency", "Compare CAM methods: localization, faithfulness (ROAD), sanity, speed."),
    "ui": ("ui", "ui", "Start the Streamlit web UI."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        module = importlib.import_module(f"xcam.commands.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xcam")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="plugins.toml to use.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, config: str | None) -> None:
    """xcam: chest X-ray classification and weakly supervised localization."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["config"] = config


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors unless --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="xcam", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        from xcam.core.errors import XcamError

        if isinstance(exc, XcamError):
            click.echo(f"error: {exc}", err=True)
        else:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {message} (run with --debug for details)", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
