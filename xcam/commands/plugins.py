"""``xcam plugins`` and ``xcam models``: what is installed (never imports torch)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from xcam.commands._common import plugin_manager, weights_dir_option

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.weights import WeightsStore


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins: name, hooks, version, source, status."""
    infos = plugin_manager().plugin_infos()
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    click.echo(f"{'NAME':<18} {'VERSION':<9} {'SOURCE':<34} {'STATUS':<8} HOOKS / REGISTRATIONS")
    for info in infos:
        status = "ok" if info.status == "ok" else info.status.split(":")[0]
        regs = "; ".join(f"{hook}: {', '.join(names)}" for hook, names in info.registrations.items())
        click.echo(f"{info.name:<18} {info.version:<9} {info.source:<34} {status:<8} {regs or ', '.join(info.hooks)}")
        if info.status not in ("ok", "disabled"):
            click.echo(f"{'':<18} ↳ {info.status}")


@click.command("models")
@weights_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--card", "card", default=None, metavar="NAME[:VARIANT]",
              help="Print the model card of these weights (VARIANT: a variant, a checkpoint path, or 'demo').")
@click.option("--output", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="With --card: write PATH.md and PATH.json.")
@click.option("--metrics", "metrics", multiple=True, type=click.Path(dir_okay=False), metavar="results.json",
              help="With --card: an `xcam evaluate` results.json of these weights to report (repeatable).")
def models(weights_dir: str | None, as_json: bool, card: str | None, output: str | None,
           metrics: tuple[str, ...]) -> None:
    """List classifiers with weight variants, labels, input size and whether weights are local;
    or, with --card, the model card of one set of weights."""
    from xcam.core.weights import WeightsStore

    store = WeightsStore.from_env(weights_dir)
    if card is None and (output or metrics):
        raise click.UsageError("--output and --metrics need --card")
    if card is not None:
        show_card(card, store, output, metrics, as_json)
        return
    rows = []
    for reg in plugin_manager().classifiers().values():
        for variant in reg.variants:
            local = store.find(variant)
            labels = [label for label in reg.variant_labels(variant) if label]
            rows.append({
                "classifier": reg.name, "variant": variant.name, "default": variant.name == reg.default.name,
                "input_size": reg.input_size, "labels": labels, "training_data": variant.training_data,
                "file": variant.filename, "url": variant.url, "local": str(local) if local else None,
                "target_layer": reg.target_layer,
            })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        where = f"present: {row['local']}" if row["local"] else "not downloaded"
        click.echo(f"{mark} {row['classifier']:<13} {row['variant']:<28} {row['input_size']:>4}px "
                   f"{len(row['labels']):>2} labels  {where}")
        click.echo(f"    labels: {', '.join(row['labels'])}")
        if row["training_data"]:
            click.echo(f"    trained on: {row['training_data']}")
    click.echo("(* = default variant)")


def show_card(ref: str, store: "WeightsStore", output: str | None, metrics: tuple[str, ...], as_json: bool) -> None:
    """``xcam models --card``: build, print and (``--output``) write a card."""
    from xcam.core.cards import DEMO_RESULTS, build_card, card_markdown, write_card

    name, _, variant = ref.partition(":")
    registration = plugin_manager().classifier(name)
    data = build_card(registration, variant or None, store=store, evaluations=metrics,
                      found_evaluations=[DEMO_RESULTS])
    click.echo(json.dumps(data, indent=2) if as_json else card_markdown(data), nl=as_json)
    if output:
        md, js = write_card(data, output)
        click.echo(f"card: {md}, {js}", err=True)
