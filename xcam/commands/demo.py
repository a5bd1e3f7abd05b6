"""``xcam demo``: the whole story offline, on synthetic phantoms, in a few minutes on a laptop CPU.

1. generate phantom radiographs with boxes (NIH format) for training and, from another seed,
   held-out ones;
2. train a small MobileNetV3 with ``xcam train``'s loop — or reuse the checkpoint cached under
   ``$XCAM_HOME/demo/<key>`` where ``key`` hashes every setting below and the xcam version;
3. evaluate it on the held-out phantoms with ``xcam evaluate``'s protocol (beside the baselines);
4. write ``OUT/`` with CAM overlays and boxes per case, the evaluation report and the curves.
"""

from __future__ import annotations

import click

from xcam.commands._common import profile_option

# name -> (train images, held-out images, phantom px, input px, at most epochs, batch, lr); trained
# without augmentation and with sqrt positive weights: what learned fastest in short CPU runs
# (docs/training.md). Training runs on a time budget (BUDGETS, `--budget`): as many epochs as fit.
# The full preset's input is 128 px: on a 2-core AMD EPYC (0.3 s per step at 192 px) 192 px left
# time for one epoch in 100 s (held-out AUC 0.57), 128 px for two (AUC 0.69).
PRESETS: dict[str, tuple[int, int, int, int, int, int, float]] = {
    "full": (4000, 120, 192, 128, 8, 16, 2e-3),
    "fast": (300, 60, 128, 128, 6, 16, 2e-3),
}
BUDGETS: dict[str, str] = {"full": "75s", "fast": "40s"}
"""Default training budget per preset (loading and decoding included): with phantoms (made once,
about 50 s, then cached), evaluation and files the full demo stays within three minutes on a
2-core CPU (measured on an AMD EPYC: first run 2 min 49 s; with 100 s of training it took 203 s)."""
ARCH = "mobilenet_v3_small"
TRAIN_EXTRAS = {"augment": False, "pos_weight": "sqrt", "seed": 0}
SEEDS = (20240, 20241)  # training phantoms, held-out phantoms


def settings_key(preset: str, budget_s: float | None = None) -> str:
    import hashlib
    import json

    from xcam import __version__
    from xcam.train.loop import DEFAULT_CAM_LAYERS

    blob = json.dumps([__version__, preset, PRESETS[preset], ARCH, SEEDS, DEFAULT_CAM_LAYERS[ARCH], TRAIN_EXTRAS,
                       budget_s])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _phantoms(folder, n: int, size: int, seed: int, log) -> None:
    from pathlib import Path

    from xcam.datasets.phantom import generate_phantoms

    folder = Path(folder)
    if (folder / "BBox_List_2017.csv").is_file() and (folder / "Data_Entry_2017.csv").is_file():
        return
    log(f"generating {n} phantoms ({size} px, seed {seed}) in {folder} ...")
    generate_phantoms(folder, n=n, size=size, seed=seed, workers=2)


def render_cases(result, out, limit: int = 12) -> list:
    """``OUT/cases/{image}_{label}.png``: the CAM overlay with the truth and the xcam box (legend on
    each), drawn from the CAMs the evaluation kept: nothing is computed again."""
    from pathlib import Path

    from xcam.core.imageio import load_image
    from xcam.core.render import write_png
    from xcam.evaluation.report import case_image

    written = []
    for r in [r for r in result.records if r.evaluated and r.cam is not None][:limit]:
        image = load_image(result.paths[r.image])
        written.append(write_png(Path(out) / f"{Path(r.image).stem}_{r.label}.png", case_image(r, image)))
    return written


@click.command("demo")
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--fast", is_flag=True, help="Smaller phantoms and a shorter training (about a minute).")
@click.option("--retrain", is_flag=True, help="Ignore the cached checkpoint for these settings.")
@click.option("--budget", default=None, metavar="DURATION",
              help=f"Training time budget (default {BUDGETS['full']}, with --fast {BUDGETS['fast']}): as many "
                   "epochs as fit, the LR schedule planned for them.")
@profile_option
def demo(out: str, fast: bool, retrain: bool, budget: str | None, profile: str | None) -> None:
    """Offline demo: phantoms → train → evaluate → CAM overlays and tables (no network, no downloads)."""
    import shutil
    import time
    from pathlib import Path

    from xcam.commands._common import parse_duration, plugin_manager
    from xcam.core.weights import xcam_home
    from xcam.evaluation.report import baseline_table, bootstrap_note
    from xcam.evaluation.run import EvalConfig, evaluate
    from xcam.train.loop import TrainConfig, train

    def log(message: str) -> None:
        click.echo(message, err=True)

    t0 = time.perf_counter()
    preset = "fast" if fast else "full"
    n_train, n_test, px, size, epochs, batch, lr = PRESETS[preset]
    budget_s = parse_duration(budget or BUDGETS[preset], "--budget")
    cache = xcam_home() / "demo" / f"{preset}-{settings_key(preset, budget_s)}"
    if retrain and (cache / "run").exists():
        shutil.rmtree(cache / "run")
    _phantoms(cache / "train", n_train, px, SEEDS[0], log)
    _phantoms(cache / "heldout", n_test, px, SEEDS[1], log)
    config = TrainConfig(
        imgpath=str(cache / "train" / "images"), csvpath=str(cache / "train" / "Data_Entry_2017.csv"),
        out=str(cache / "run"), epochs=epochs, batch_size=batch, lr=lr, img_size=size, arch=ARCH,
        progress=True, budget_s=budget_s, **TRAIN_EXTRAS,
    )
    t_train = time.perf_counter()
    result = train(config, log=log)
    train_s = time.perf_counter() - t_train
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(EvalConfig(
        imgpath=str(cache / "heldout" / "images"), bbox_csv=str(cache / "heldout" / "BBox_List_2017.csv"),
        csvpath=str(cache / "heldout" / "Data_Entry_2017.csv"), models=[f"mobilenetv3:{result.best_path}"],
        profile=profile, output=str(out_dir / "evaluation"), progress=True,
    ), plugin_manager())
    cases = render_cases(evaluation, out_dir / "cases")
    for name in ("performance.png", "performance.csv"):
        shutil.copy2(result.out / name, out_dir / name)
    mean = evaluation.summary["mean"]
    lines = [
        "# xcam demo (synthetic phantoms)", "",
        f"Model: MobileNetV3-small trained {result.last_epoch} epochs (time budget {budget_s:.0f} s) on {n_train} "
        f"phantoms ({size} px input), "
        f"checkpoint `{result.best_path}`; evaluated on {n_test} held-out phantoms (seed {SEEDS[1]}).", "",
        f"Held-out macro AUC {mean.get('auc') or float('nan'):.3f}; class-mean pointing-game hit rate "
        f"{mean['pointing']:.3f}; T(IoBB>0.25) {mean['iobb']['0.25']:.3f}.", "",
        baseline_table(evaluation.summary), "",
        *([bootstrap_note(evaluation.summary["bootstrap"]), ""] if evaluation.summary.get("bootstrap") else []),
        "Files: `cases/*.png` (CAM overlay, ground truth green, xcam box magenta), `evaluation/results.md` (full table), "
        "`evaluation/montage.png` (best and worst), `performance.png` (training curves).",
    ]
    (out_dir / "index.md").write_text("\n".join(lines) + "\n")
    click.echo(baseline_table(evaluation.summary))
    click.echo(
        f"held-out macro AUC {mean.get('auc') or float('nan'):.3f}, pointing {mean['pointing']:.3f}, "
        f"T(IoBB>0.25) {mean['iobb']['0.25']:.3f} after {result.last_epoch} epochs "
        f"({time.perf_counter() - t0:.0f} s in all, training {train_s:.0f} s of a {budget_s:.0f} s budget)\n"
        f"look at: {out_dir / 'index.md'}, {out_dir / 'cases'} ({len(cases)} overlays), "
        f"{out_dir / 'evaluation' / 'montage.png'}, {out_dir / 'evaluation' / 'results.md'}"
    )
