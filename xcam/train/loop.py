"""The training loop behind ``xcam train``: multi-label BCE, patient-wise validation, resumable.

* Every epoch ends with ``last.pt`` (and ``best.pt`` when validation macro AUC improved, or the
  validation loss where no class has both outcomes in validation) written
  atomically, then a row in ``performance.csv`` and the curves in ``performance.png``. A run that
  is interrupted (Ctrl-C, kill) loses at most the epoch in progress; running the same command again
  resumes from ``last.pt``.
* Deterministic given ``seed``: each epoch reseeds torch's global RNG, the shuffling generator and
  the augmentation generator from ``(seed, epoch)``, so ``1 epoch + resume to 2`` gives the same
  weights as ``2 epochs`` straight (the RNG state is saved as well, for inspection).
* Validation runs in eval mode (BatchNorm running statistics): see DESIGN.md "Training on a CPU".
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from xcam.core.errors import UsageError, XcamError
from xcam.core.cards import training_metadata
from xcam.train import checkpoint as ckpt
from xcam.train.data import XrayDataset, cache_fits, patient_split, read_label_table

DEFAULT_CAM_LAYERS: dict[str, str] = {
    # a 14×14 block (at 224 px) of the stride-16 stage: see docs/training.md "CAM layer"
    "mobilenet_v3_small": "net.features.5",
    "mobilenet_v3_large": "net.features.12",
}
LAST_FEATURE_BLOCKS: dict[str, str] = {"mobilenet_v3_small": "net.features.12", "mobilenet_v3_large": "net.features.16"}


def default_cam_layer(arch: str, head: str) -> str:
    """The CAM layer written into a new checkpoint: with the LSE head the last block (Grad-CAM there
    is the class score map itself), with the PYLON head its class-map convolution, otherwise a 14×14
    block of the stride-16 stage."""
    if head == "pylon":
        from xcam.nets.pylon import CLASS_MAP_LAYER

        return CLASS_MAP_LAYER
    return (LAST_FEATURE_BLOCKS if head == "lse" else DEFAULT_CAM_LAYERS)[arch]


@dataclass
class TrainConfig:
    """Settings of one training run (what ``xcam train`` exposes)."""

    imgpath: str
    csvpath: str
    out: str = "weights/train_weight_mobilenet"
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    img_size: int = 224
    arch: str = "mobilenet_v3_large"
    pretrained: bool = False
    workers: int = 0
    seed: int = 0
    val_fraction: float = 0.2
    labels: list[str] | None = None
    cam_layer: str | None = None
    head: str = "mlp"  # mlp (torchvision's) | lse (1×1 conv class score maps, LSE-pooled)
    dilated: bool = False  # last stage dilated: final map 14×14 instead of 7×7 at 224 px
    weight_decay: float = 1e-4
    augment: bool = True
    schedule: str = "cosine"  # cosine (with 1 warm-up epoch) | onecycle | constant
    pos_weight: str = "none"  # none | sqrt: BCE positive weight sqrt(#neg / #pos) per class (rare classes learn sooner)
    resume: bool = True
    cache: bool | None = None  # None: cache decoded inputs in memory when they fit
    progress: bool = True
    budget_s: float | None = None  # wall-clock budget: epochs planned from the first epoch's time (≤ epochs)
    preprocessing: str = "xrv"  # or "xrv-equalized": histogram equalization first (xcam.core.preprocess)
    channels_last: bool = True  # NHWC tensors: 1.5× the training images/s of MobileNetV3 on a 2-core CPU
    patience: int | None = None  # early stopping: stop after this many epochs without a better validation AUC


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_val_auc: float  # NaN when the validation AUC is undefined (then the best epoch is by validation loss)
    last_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    planned_epochs: int | None = None  # with a time budget: the epochs it allowed
    best_val_loss: float = math.nan  # the validation loss of the best epoch
    selected_by: str = "val_auc"  # "val_auc", or "val_loss" when no validation AUC is defined

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    def summary(self) -> str:
        """One line: the best epoch and the metric that chose it (never a loss shown as an AUC)."""
        if self.selected_by == "val_loss":
            return (f"best epoch {self.best_epoch} by validation loss {self.best_val_loss:.4f} "
                    f"(validation AUC undefined: {AUC_UNDEFINED})")
        return f"best validation macro AUC {self.best_val_auc:.4f} at epoch {self.best_epoch}"


AUC_UNDEFINED = "no class has both positive and negative validation images"
"""Why the validation macro AUC is NaN; the best epoch is then the one of lowest validation loss."""


# -- pieces ------------------------------------------------------------------------------------
def auc_scores(targets: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Per-class ROC AUC (scikit-learn) and their macro mean; a class with one outcome only is NaN."""
    from sklearn.metrics import roc_auc_score

    per: dict[str, float] = {}
    for j, label in enumerate(labels):
        y = targets[:, j]
        per[label] = float(roc_auc_score(y, scores[:, j])) if 0 < y.sum() < len(y) else math.nan
    valid = [v for v in per.values() if not math.isnan(v)]
    return (float(np.mean(valid)) if valid else math.nan), per


def build_model(config: TrainConfig, labels: Sequence[str]) -> nn.Module:
    """The MobileNetV3 to train; ``--pretrained`` without a cached download fails in one line."""
    from xcam.nets.mobilenet import ARCHS, HEADS, MobileNetV3

    if config.arch not in ARCHS:
        raise UsageError(f"unknown --arch {config.arch!r}; valid: {', '.join(ARCHS)}")
    if config.head not in HEADS:
        raise UsageError(f"unknown --head {config.head!r}; valid: {', '.join(HEADS)}")
    cam_layer = config.cam_layer or default_cam_layer(config.arch, config.head)
    try:
        # torch.hub prints "Downloading: ..." to stdout; the outcome is reported below in one line
        with contextlib.redirect_stdout(io.StringIO()):
            model = MobileNetV3(labels, config.arch, config.img_size, config.preprocessing, cam_layer, pretrained=config.pretrained,
                                head=config.head, dilated=config.dilated)
    except Exception as exc:
        if not config.pretrained:
            raise
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise XcamError(
            f"--pretrained needs torchvision's ImageNet weights for {config.arch}, which could not be loaded "
            f"({type(exc).__name__}: {reason}); train from scratch with --no-pretrained, or put the file in "
            f"$TORCH_HOME/hub/checkpoints on a machine with network access"
        ) from None
    try:
        model.get_submodule(cam_layer)
    except AttributeError:
        raise UsageError(f"--cam-layer {cam_layer!r} is not a module of {config.arch}") from None
    return model


def train_batches(n_images: int, batch_size: int) -> tuple[int, bool]:
    """Training batches per epoch and whether the last one is dropped: a final batch of a single
    image is left out (BatchNorm cannot train on one image; it is one image per epoch)."""
    drop_last = n_images % batch_size == 1
    return n_images // batch_size + (0 if drop_last or n_images % batch_size == 0 else 1), drop_last


def check_out_writable(out: Path) -> None:
    """Fail in one line, before any data is read, when ``out`` cannot be created or written to
    (creates the folder, writes and removes a probe file, then removes the folders it created)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    created = [p for p in (out, *out.parents) if not p.exists()]
    probe = out / f".xcam-write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"--out {out}: cannot create or write to this folder ({reason})") from None
    finally:
        for folder in created:  # innermost first; the run creates it again when it saves
            with contextlib.suppress(OSError):
                folder.rmdir()


class EpochPlan:
    """How many epochs the run trains: ``epochs``, or with a time budget as many as fit, decided
    after the first epoch from its measured duration (the LR schedule follows the plan)."""

    def __init__(self, epochs: int, budget_s: float | None = None) -> None:
        self.max_epochs = self.epochs = int(epochs)
        self.budget_s = budget_s

    CALIBRATION_STEPS = 12
    """With a budget, the plan is made after this many training steps of the first epoch (the
    first step, slow to start, is left out), so the LR schedule fits the budget from the start."""

    def calibrate(self, step_seconds: float, steps_per_epoch: int, validation_steps: float) -> int:
        """Plan from the measured seconds per training step: an epoch is ``steps_per_epoch``
        steps plus validation (``validation_steps`` step-equivalents of forward passes)."""
        return self.after_first_epoch(step_seconds * (steps_per_epoch + validation_steps))

    def after_first_epoch(self, seconds: float) -> int:
        """Plan from the first epoch's duration: ``floor(budget / seconds)`` epochs, at least 1."""
        if self.budget_s is not None:
            self.epochs = max(1, min(self.max_epochs, int(self.budget_s // max(seconds, 1e-6))))
        return self.epochs

    def another_fits(self, elapsed: float, per_epoch: float, done: int) -> bool:
        """Whether epoch ``done + 1`` is planned and (with a budget) fits in the time left."""
        if done >= self.epochs:
            return False
        if done == 0:  # at least one epoch, whatever the budget
            return True
        return self.budget_s is None or elapsed + per_epoch <= self.budget_s * 1.05


def lr_lambda(schedule: str, steps_per_epoch: int, epochs: int | EpochPlan) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``s`` (a pure function of the step and the
    plan, so it resumes). With an :class:`EpochPlan` the schedule stretches to the planned epochs."""
    plan = epochs if isinstance(epochs, EpochPlan) else EpochPlan(epochs)
    def total_steps() -> int:
        return max(steps_per_epoch * plan.epochs, 1)

    def warm_steps() -> int:  # one epoch, at most a quarter of the run (follows the plan)
        return max(min(steps_per_epoch, total_steps() // 4), 1) if schedule == "cosine" else 0

    def cosine(step: int) -> float:
        warm = warm_steps()
        if step < warm:
            return (step + 1) / warm
        t = min((step - warm) / max(total_steps() - warm, 1), 1.0)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    def onecycle(step: int) -> float:  # 30 % up from lr/25, then cosine down to lr/1e4
        total = total_steps()
        up = max(int(0.3 * total), 1)
        if step < up:
            return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * step / up))
        t = min((step - up) / max(total - up, 1), 1.0)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))

    table = {"cosine": cosine, "onecycle": onecycle, "constant": lambda step: 1.0}
    if schedule not in table:
        raise UsageError(f"unknown schedule {schedule!r}; valid: {', '.join(table)}")
    return table[schedule]


def positive_weights(targets: np.ndarray, rule: str) -> torch.Tensor | None:
    """BCE ``pos_weight`` per class: ``none`` or ``sqrt`` = √(#negatives / #positives), clipped to [1, 10]."""
    if rule == "none":
        return None
    if rule != "sqrt":
        raise UsageError(f"unknown pos-weight rule {rule!r}; valid: none, sqrt")
    pos = targets.sum(axis=0)
    ratio = (len(targets) - pos) / np.maximum(pos, 1.0)
    return torch.tensor(np.clip(np.sqrt(ratio), 1.0, 10.0), dtype=torch.float32)


def augment_batch(x: torch.Tensor, generator: torch.Generator, scale: float = 0.1, shift: float = 0.08,
                  degrees: float = 5.0) -> torch.Tensor:
    """Random affine per image (zoom ±scale, shift ±shift of the width, rotation ±degrees), border padding."""
    import torch.nn.functional as F

    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator) * 2 - 1
    s = 1.0 + scale * u[:, 0]
    a = math.radians(degrees) * u[:, 1]
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    theta = torch.stack([
        torch.stack([cos, -sin, 2 * shift * u[:, 2]], 1),
        torch.stack([sin, cos, 2 * shift * u[:, 3]], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, loss_fn: nn.Module,
                    layout: torch.memory_format = torch.contiguous_format) -> tuple[float, np.ndarray, np.ndarray]:
    """Eval-mode loss, targets and sigmoid scores over a loader (inputs in ``layout``)."""
    model.eval()
    losses, ys, ps = [], [], []
    for x, y in loader:
        logits = model(x.contiguous(memory_format=layout))
        losses.append(float(loss_fn(logits, y)) * len(x))
        ys.append(y.numpy())
        ps.append(torch.sigmoid(logits).numpy())
    n = sum(len(y) for y in ys)
    return sum(losses) / max(n, 1), np.concatenate(ys), np.concatenate(ps)


# -- performance.csv -------------------------------------------------------------------------------
def performance_columns(labels: Sequence[str]) -> list[str]:
    return ["epoch", "train_loss", "val_loss", "train_auc", "val_auc", *[f"val_auc_{c}" for c in labels], "lr", "seconds"]


def write_performance(rows: Sequence[dict[str, Any]], out: Path, labels: Sequence[str]) -> None:
    """Rewrite ``performance.csv`` (atomically) and ``performance.png`` from the history rows."""
    from xcam.train.plots import plot_performance

    path = out / "performance.csv"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=performance_columns(labels))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)
    plot_performance(rows, out / "performance.png", labels)


# -- the loop ----------------------------------------------------------------------------------------
def _compatible(saved: dict[str, Any], config: TrainConfig, labels: Sequence[str], path: Path) -> None:
    for key, now in (("arch", config.arch), ("img_size", config.img_size), ("labels", list(labels)),
                     ("head", config.head), ("dilated", config.dilated), ("preprocessing", config.preprocessing)):
        if saved.get(key, {"head": "mlp", "dilated": False, "preprocessing": "xrv"}.get(key)) != now:
            raise UsageError(
                f"{path} was trained with {key}={saved.get(key)!r}, not {now!r}: use the same settings "
                f"to resume, another --out, or --no-resume to start over"
            )


def train(config: TrainConfig, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) and return where the best checkpoint is. ``on_epoch_end(epoch, row)`` runs
    after each epoch has been saved (tests use it to simulate an interruption)."""
    started = time.perf_counter()  # a time budget counts reading, model building and decoding too
    if config.epochs < 1 or config.batch_size < 2 or config.img_size < 32:
        raise UsageError("--epochs must be ≥ 1, --batch-size ≥ 2 (BatchNorm trains on 2 images or more) "
                         "and --img-size ≥ 32")
    out = Path(config.out)
    check_out_writable(out)
    table = read_label_table(config.csvpath, config.imgpath, config.labels)
    labels = table.labels
    _seed_everything(config.seed)
    model = build_model(config, labels)  # fails fast on --pretrained without network
    train_idx, val_idx = patient_split(table.patients, config.val_fraction, config.seed)
    if len(val_idx) == 0 or len(train_idx) < 2:
        raise UsageError(f"{config.csvpath}: the patient-wise split left {len(train_idx)} training and {len(val_idx)} "
                         f"validation image(s); training needs at least 2 and validation 1: use more images "
                         f"or another --val-fraction")
    cache = cache_fits(len(table), config.img_size) if config.cache is None else config.cache
    train_set = XrayDataset(table.subset(train_idx), config.img_size, config.preprocessing, cache)
    val_set = XrayDataset(table.subset(val_idx), config.img_size, config.preprocessing, cache)
    log(f"{len(table)} images ({table.missing} listed but missing), {len(np.unique(table.patients))} patients → "
        f"{len(train_set)} train / {len(val_set)} validation images, labels: {', '.join(labels)}")

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _run(config, model, table, train_set, val_set, out, cache, on_epoch_end, log, started)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _run(config: TrainConfig, model: nn.Module, table, train_set: XrayDataset, val_set: XrayDataset, out: Path,
         cache: bool, on_epoch_end, log, started: float | None = None) -> TrainResult:
    from torch.utils.data import DataLoader

    from xcam.core.progress import progress_bar

    labels = table.labels
    steps_per_epoch, drop_last = train_batches(len(train_set), config.batch_size)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    plan = EpochPlan(config.epochs, config.budget_s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.schedule, steps_per_epoch, plan))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=positive_weights(train_set.table.targets, config.pos_weight))
    history: list[dict[str, Any]] = []
    # best_score: the validation macro AUC, or minus the validation loss where the AUC is undefined
    start, best_score, best_epoch = 1, -math.inf, 0

    last_path = out / "last.pt"
    if config.resume and last_path.is_file():
        saved = ckpt.load(last_path)
        _compatible(saved, config, labels, last_path)
        model.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer_state"])
        scheduler.load_state_dict(saved["scheduler_state"])
        ckpt.set_rng_state(saved["rng"])
        history = list(saved.get("history", []))
        start = int(saved["epoch"]) + 1
        plan.epochs = int(saved.get("planned_epochs") or config.epochs)
        best_score = float(saved.get("best_score", saved.get("best_val_auc", -math.inf)))
        best_epoch = int(saved.get("best_epoch", 0))
        log(f"resuming from {last_path} (epoch {start - 1} done)")
        if start > plan.epochs or _out_of_patience(config.patience, start - 1, best_epoch):
            stopped = " and stopped early" if start <= plan.epochs else ""
            log(f"already trained to epoch {start - 1} (of {plan.epochs}){stopped}; best: {out / 'best.pt'}")
            return _result(out, best_epoch, start - 1, history, plan.epochs)
    out.mkdir(parents=True, exist_ok=True)
    if cache and start <= config.epochs:
        train_set.preload(config.progress, "decode train")
        val_set.preload(config.progress, "decode val")

    val_loader = DataLoader(val_set, batch_size=max(config.batch_size, 32), shuffle=False, num_workers=config.workers)
    clock = time.perf_counter()
    if plan.budget_s is not None and started is not None:  # what the set-up took is not left for epochs
        plan.budget_s = max(plan.budget_s - (clock - started), 0.0)
    spent = sum(float(r.get("seconds", 0.0)) for r in history)  # earlier sessions of a resumed run
    epoch = start - 1
    while (not _out_of_patience(config.patience, epoch, best_epoch)
           and plan.another_fits(spent + time.perf_counter() - clock, _mean_epoch(history), epoch)):
        epoch += 1
        t0 = time.perf_counter()
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        np.random.seed(epoch_seed % 2**32)
        shuffle = torch.Generator().manual_seed(epoch_seed)
        aug = torch.Generator().manual_seed(epoch_seed + 1)
        loader = DataLoader(
            train_set, batch_size=config.batch_size, shuffle=True, generator=shuffle, drop_last=drop_last,
            num_workers=config.workers, worker_init_fn=_worker_init if config.workers else None,
            persistent_workers=False,
        )
        model.train()
        total, seen, ys, ps = 0.0, 0, [], []
        bar = progress_bar(len(loader), f"epoch {epoch}/{plan.epochs}", enabled=config.progress, unit="batch")
        calibrate = epoch == 1 and config.budget_s is not None and start == 1
        for step, (x, y) in enumerate(loader):
            if calibrate and step == 1:
                calibration_start = time.perf_counter()
            if calibrate and step == 1 + EpochPlan.CALIBRATION_STEPS:
                per_step = (time.perf_counter() - calibration_start) / EpochPlan.CALIBRATION_STEPS
                validation = 0.35 * len(val_set) / config.batch_size  # forward only: about a third of a step
                planned = plan.calibrate(per_step, steps_per_epoch, validation)
                log(f"time budget {config.budget_s:.0f} s ({plan.budget_s:.0f} s left after loading), about "
                    f"{per_step * (steps_per_epoch + validation):.0f} s "
                    f"per epoch: {planned} epoch{'s' if planned != 1 else ''} (of at most {config.epochs}); "
                    f"the LR schedule follows")
            if config.augment:
                x = augment_batch(x, aug)
            logits = model(x.contiguous(memory_format=layout))
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
            ys.append(y.numpy())
            ps.append(torch.sigmoid(logits.detach()).numpy())
            bar.set_postfix(loss=f"{total / seen:.4f}")
            bar.update(1)
        bar.close()
        train_auc, _ = auc_scores(np.concatenate(ys), np.concatenate(ps), labels)
        val_loss, vy, vp = evaluate_loader(model, val_loader, loss_fn, layout)
        val_auc, per_class = auc_scores(vy, vp, labels)
        row: dict[str, Any] = {
            "epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss,
            "train_auc": train_auc, "val_auc": val_auc,
            **{f"val_auc_{c}": v for c, v in per_class.items()},
            "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if epoch == 1 and config.budget_s is not None:
            before = plan.epochs
            planned = plan.after_first_epoch(row["seconds"])  # the measured epoch corrects the estimate
            if planned != before or steps_per_epoch <= EpochPlan.CALIBRATION_STEPS + 1:
                log(f"time budget {config.budget_s:.0f} s, {row['seconds']:.1f} s per epoch: {planned} epoch"
                    f"{'s' if planned != 1 else ''} (of at most {config.epochs}); the LR schedule follows")
        score = val_auc if not math.isnan(val_auc) else -val_loss
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
        best_auc = float(next((r for r in history if int(r["epoch"]) == best_epoch), {}).get("val_auc", math.nan))
        state = dict(model.checkpoint_object())  # model_state, labels, arch, img_size, preprocessing, cam_layer
        state.update({
            "format": FORMAT_VERSION_TAG, "epoch": epoch, "metrics": row, "history": history,
            "best_val_auc": best_auc, "best_score": best_score, "best_epoch": best_epoch,
            "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
            "rng": ckpt.rng_state(), "config": asdict(config), "planned_epochs": plan.epochs,
            "card": training_metadata(  # for `xcam models --card` and the ONNX export's card
                names=table.names, targets=table.targets, labels=labels, epoch=epoch, planned_epochs=plan.epochs,
                best_val_auc=best_auc, best_epoch=best_epoch, val_auc=val_auc, history=history,
                train_images=len(train_set), val_images=len(val_set), config=asdict(config)),
        })
        ckpt.save_atomic(state, last_path)
        ckpt.trust(last_path)
        if improved:
            ckpt.save_atomic(state, out / "best.pt")
            ckpt.trust(out / "best.pt")
        write_performance(history, out, labels)
        auc_text = f"{val_auc:.4f}" if not math.isnan(val_auc) else "undefined"
        best_text = (" (best)" if not math.isnan(val_auc) else " (best: lowest val loss)") if improved else ""
        log(f"epoch {epoch}/{plan.epochs}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
            f"val macro AUC {auc_text}{best_text}, {row['seconds']:.1f} s")
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    result = _result(out, best_epoch, epoch, history, plan.epochs)
    if epoch < plan.epochs and _out_of_patience(config.patience, epoch, best_epoch):
        metric = "validation AUC" if result.selected_by == "val_auc" else "validation loss"
        log(f"stopped early after epoch {epoch} of {plan.epochs}: no better {metric} for {config.patience} "
            f"epochs (best: epoch {best_epoch})")
    elif epoch < plan.epochs and config.budget_s is not None:
        log(f"stopped after epoch {epoch} of {plan.epochs}: the next one would exceed the {config.budget_s:.0f} s budget")
    return result


def _result(out: Path, best_epoch: int, last_epoch: int, history: list[dict[str, Any]],
            planned_epochs: int | None = None) -> TrainResult:
    """The run's outcome, its best numbers read from the history row of the best epoch."""
    row = next((r for r in history if int(r.get("epoch", -1)) == best_epoch), {})
    auc, loss = float(row.get("val_auc", math.nan)), float(row.get("val_loss", math.nan))
    return TrainResult(out, best_epoch, auc, last_epoch, history, planned_epochs, best_val_loss=loss,
                       selected_by="val_auc" if not math.isnan(auc) else "val_loss")


def _out_of_patience(patience: int | None, epoch: int, best_epoch: int) -> bool:
    """Early stopping: ``patience`` epochs have passed since the best one (never before the first)."""
    return bool(patience) and epoch > 0 and epoch - best_epoch >= int(patience)


def _mean_epoch(history: Sequence[dict[str, Any]]) -> float:
    """Mean seconds per epoch so far (0 before the first)."""
    seconds = [float(r.get("seconds", 0.0)) for r in history]
    return sum(seconds) / len(seconds) if seconds else 0.0


FORMAT_VERSION_TAG = f"xcam-train-{ckpt.FORMAT_VERSION}"
