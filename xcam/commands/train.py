"""``xcam train``: train a MobileNetV3 on NIH ChestX-ray14-format data (see docs/training.md)."""

from __future__ import annotations

import click

ARCH_CHOICES = ("mobilenet_v3_large", "mobilenet_v3_small")


def split_labels(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.replace("|", ",").split(",") if t.strip()]


@click.command("train")
@click.option("--imgpath", required=True, type=click.Path(), help="Folder with the images (searched recursively).")
@click.option("--csvpath", required=True, type=click.Path(), help="Data_Entry_2017.csv (or a file in its layout).")
@click.option("--epochs", type=click.IntRange(1), default=50, show_default=True, help="Epochs (at most, with --budget).")
@click.option("--budget", default=None, metavar="DURATION",
              help="Wall-clock budget, e.g. 120s or 10m: the epochs that fit are planned after the first one "
                   "(the LR schedule follows) and training stops before an epoch that would exceed it.")
@click.option("--batch-size", type=click.IntRange(2), default=16, show_default=True,
              help="Images per training step (≥ 2: BatchNorm; a last batch of one image is left out).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--img-size", type=click.IntRange(32), default=224, show_default=True)
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default="mobilenet_v3_large", show_default=True)
@click.option("--pretrained/--no-pretrained", default=False, show_default=True,
              help="Start from torchvision's ImageNet weights (needs them downloaded once).")
@click.option("--out", default="weights/train_weight_mobilenet", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: best.pt, last.pt, performance.csv, performance.png.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="Fraction of PATIENTS held out for validation.")
@click.option("--labels", default=None, help="Comma-separated classes to learn (default: all findings in the csv).")
@click.option("--cam-layer", default=None, help="CAM target layer written into the checkpoint (default: per arch, 14×14 stage).")
@click.option("--head", type=click.Choice(["mlp", "lse", "pylon"]), default="mlp", show_default=True,
              help="mlp: torchvision's pooled MLP head; lse: one 1×1-conv score map per class, log-sum-exp pooled; "
                   "pylon: a feature-pyramid decoder giving class maps at stride 8 (they are the CAM).")
@click.option("--dilated/--no-dilated", default=False, show_default=True,
              help="Dilate the last stage: final feature map 14×14 instead of 7×7 at 224 px (≈2× compute).")
@click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default="cosine", show_default=True)
@click.option("--pos-weight", type=click.Choice(["none", "sqrt"]), default="none", show_default=True,
              help="BCE weight of positives per class: sqrt(#negatives/#positives) helps rare classes.")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random zoom/shift/rotation.")
@click.option("--preprocessing", type=click.Choice(["xrv", "xrv-equalized"]), default="xrv", show_default=True,
              help="Input scaling, recorded in the checkpoint and applied by every command: xrv "
                   "(torchxrayvision's) or xrv-equalized (histogram equalization first: brightness, contrast "
                   "and gamma no longer change the input).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="NHWC memory layout (same results, about 1.5× faster on CPUs).")
@click.option("--patience", type=click.IntRange(1), default=None, metavar="N",
              help="Early stopping: stop when validation macro AUC has not improved for N epochs (best.pt keeps "
                   "the best; default: train every planned epoch).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/last.pt when it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(imgpath, csvpath, epochs, budget, batch_size, lr, img_size, arch, pretrained, out, workers, seed, val_fraction,
          labels, cam_layer, head, dilated, schedule, pos_weight, augment, preprocessing, channels_last, patience, resume, quiet) -> None:
    """Train a multi-label MobileNetV3 (BCE) with a patient-wise validation split.

    Writes OUT/best.pt (best validation macro AUC; lowest validation loss where no AUC is
    defined) and OUT/last.pt after every epoch, logs OUT/performance.csv and plots
    OUT/performance.png. Running the same command again resumes from OUT/last.pt. Use the result with `--model mobilenetv3 --weights OUT/best.pt`.
    """
    from xcam.commands._common import parse_duration
    from xcam.train.loop import TrainConfig
    from xcam.train.loop import train as run_training

    config = TrainConfig(
        imgpath=imgpath, csvpath=csvpath, out=out, epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size,
        arch=arch, pretrained=pretrained, workers=workers, seed=seed, val_fraction=val_fraction,
        labels=split_labels(labels), cam_layer=cam_layer, head=head, dilated=dilated, schedule=schedule, pos_weight=pos_weight, augment=augment, preprocessing=preprocessing, channels_last=channels_last, patience=patience, resume=resume,
        progress=not quiet, budget_s=parse_duration(budget, "--budget") if budget else None,
    )
    try:
        result = run_training(config, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: {out}/last.pt holds the last finished epoch; run the same command to resume", err=True)
        raise
    click.echo(
        f"{result.summary()}: {result.best_path}\n"
        f"use it with: xcam classify --model mobilenetv3 --weights {result.best_path} --input IMAGE"
    )
