"""``xcam phantom``: synthetic chest radiographs with lesion boxes, in NIH ChestX-ray14 format."""

from __future__ import annotations

import time

import click

from xcam.datasets.phantom_styles import style_names


MAX_SIZE = 4096
"""The largest ``--size`` (a 4096² image takes about 1 GB and 10 s to render per worker)."""


def _at_least(minimum: int, at_most: int | None = None):
    """A click callback that rejects values below ``minimum`` (or above ``at_most``) with a one-line message."""

    def check(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value < minimum:
            raise click.BadParameter(f"must be at least {minimum} (got {value})", ctx=ctx, param=param)
        if at_most is not None and value > at_most:
            raise click.BadParameter(f"must be at most {at_most} (got {value})", ctx=ctx, param=param)
        return value

    return check


@click.command("phantom")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write images/, Data_Entry_2017.csv and BBox_List_2017.csv into.")
@click.option("--n", "n", type=int, default=1000, show_default=True, callback=_at_least(1),
              help="Number of images.")
@click.option("--size", type=int, default=1024, show_default=True, callback=_at_least(64, MAX_SIZE),
              help=f"Image width and height in pixels (64 to {MAX_SIZE}).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same files).")
@click.option("--workers", type=int, default=1, show_default=True, callback=_at_least(1),
              help="Processes to render with (the output does not depend on it).")
@click.option("--style", type=click.Choice(style_names()), default="classic", show_default=True,
              help="Look of the set: classic (the original), varied (new renderings mixed in, wide "
                   "acquisition variation), portable (AP bedside: low contrast, wires, ECG leads), alt "
                   "(renderings varied never draws). Recorded in phantom_style.json.")
def phantom(out_dir: str, n: int, size: int, seed: int, workers: int, style: str) -> None:
    """Generate synthetic PA chest radiographs with lesion boxes, in NIH ChestX-ray14 format.

    Draws body, lungs, heart, mediastinum, ribs, clavicles, spine, vessels and diaphragm, and
    lesions (Nodule, Mass, Cardiomegaly, Effusion, Pneumothorax, Atelectasis, Infiltration) with
    tight boxes; about a third of the images show no finding. Styles other than classic add
    other renderings of the lesions, acquisition variation and distractors (ECG leads, lines,
    pacemakers, markers, text), listed in phantom_objects.csv and never in the box list.
    """
    from xcam.datasets.phantom import generate_phantoms

    start = time.perf_counter()
    result = generate_phantoms(out_dir, n=n, size=size, seed=seed, workers=workers, style=style)
    click.echo(f"{result.summary()} ({time.perf_counter() - start:.1f} s)")
