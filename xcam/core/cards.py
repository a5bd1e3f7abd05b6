"""Model cards: what a set of weights is, where it came from and what it may be used for.

A card is a plain JSON-able dict (:func:`build_card`) rendered as Markdown by :func:`card_markdown`.
It is made from what the classifier registration and its :class:`~xcam.core.variants.WeightVariant`
declare (labels, input size, preprocessing, training data, file name and URL), the facts the
built-in variants do not carry (:data:`WEIGHT_FACTS`: license, source, citation, calibration), the
local file (path and sha256, when present), the training metadata an ``xcam train`` checkpoint
carries (:func:`training_metadata`), and evaluation results measured by xcam (``xcam evaluate``'s
``results.json`` and ``coco_ap.json``). ``xcam models --card`` prints it, ``xcam export`` stores it
in the ONNX file's ``metadata_props`` (key ``xcam.card``). Nothing here imports torch unless a
checkpoint has to be read.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel
    from xcam.core.types import ClassifierRegistration
    from xcam.core.variants import WeightVariant
    from xcam.core.weights import WeightsStore

CARD_FORMAT = 1

_XRV_SOURCE = "torchxrayvision (https://github.com/mlmed/torchxrayvision), weights from its v1 release"
_XRV_LICENSE = "Apache-2.0 (torchxrayvision, code and released weights)"
_XRV_CITATION = ("Cohen et al., TorchXRayVision: A library of chest X-ray datasets and models, MIDL 2022 "
                 "(arXiv:2111.00595); Cohen et al., On the limits of cross-domain generalization in automated "
                 "X-ray prediction, MIDL 2020 (arXiv:2002.02497)")
_XRV_CALIBRATION = "sigmoid, then torchxrayvision's operating-point normalisation (each label's threshold maps to 0.5)"
_DATA_TERMS = ("the training data sets keep their own terms of use (e.g. MIMIC-CXR needs credentialed PhysioNet "
               "access, CheXpert a Stanford research use agreement); check them before any use beyond research")


def _xrv(training_data: str) -> dict[str, str]:
    return {"license": _XRV_LICENSE, "source": _XRV_SOURCE, "citation": _XRV_CITATION,
            "calibration": _XRV_CALIBRATION, "training_data": training_data, "data_terms": _DATA_TERMS}


WEIGHT_FACTS: dict[str, dict[str, str]] = {
    "densenet121-res224-all": _xrv("NIH ChestX-ray14, PadChest, CheXpert, MIMIC-CXR (CheXpert labels), "
                                   "NIH images with Google's labels, OpenI, RSNA Pneumonia Challenge (Kaggle)"),
    "densenet121-res224-nih": _xrv("NIH ChestX-ray14"),
    "densenet121-res224-pc": _xrv("PadChest"),
    "densenet121-res224-chex": _xrv("CheXpert (Stanford)"),
    "densenet121-res224-rsna": _xrv("RSNA Pneumonia Challenge (Kaggle)"),
    "densenet121-res224-mimic_nb": _xrv("MIMIC-CXR (NegBio labels)"),
    "densenet121-res224-mimic_ch": _xrv("MIMIC-CXR (CheXpert labels)"),
    "resnet50-res512-all": _xrv("PadChest, NIH ChestX-ray14, RSNA Pneumonia, SIIM-ACR Pneumothorax, VinDr-CXR "
                                "(512 px)"),
    "jfhealthcare-chexpert": {
        "license": "Apache-2.0 (JF Healthcare, https://github.com/jfhealthcare/Chexpert; as packaged by "
                   "torchxrayvision)",
        "source": "JF Healthcare CheXpert baseline, weights re-hosted in torchxrayvision's v1 release",
        "citation": "Ye et al., Weakly Supervised Lesion Localization With Probabilistic-CAM Pooling, "
                    "arXiv:2005.14480 (2020)",
        "calibration": "sigmoid",
        "training_data": "CheXpert (Stanford)",
        "data_terms": _DATA_TERMS,
    },
    "mobilenetv3-nih": {
        "license": "yours: weights you train with `xcam train` (xcam itself is Apache-2.0)",
        "source": "xcam train",
        "citation": "",
        "calibration": "sigmoid",
        "training_data": "what you trained it on (NIH ChestX-ray14 format); see the training section",
        "data_terms": "",
    },
}
"""Facts about the built-in weight variants that their registrations do not carry, by variant name."""

PREPROCESSING: dict[str, str] = {
    "xrv": "grey in [0, 1] (DICOM MONOCHROME1 inverted), padded to a square with its darkest value (never cropped), "
           "resized to S×S, scaled as torchxrayvision does: (2·x − 1)·1024, one channel",
    "xrv-equalized": "grey in [0, 1] (DICOM MONOCHROME1 inverted), padded to a square with its darkest value, resized "
                     "to S×S, histogram-equalized (256 bins), then (2·x − 1)·1024, one channel",
    "unit": "grey in [0, 1], padded to a square (never cropped), resized to S×S, one channel",
    "imagenet-grey": "grey in [0, 1], padded to a square, resized to S×S, (x − 0.449) / 0.226, one channel",
}

INTENDED_USE = ("Research on chest X-ray classification and weakly supervised localization (class activation maps, "
                "boxes); teaching and benchmarking. Not a medical device: not for diagnosis, triage or any "
                "clinical decision.")

COMMON_LIMITATIONS = (
    "Boxes come from class activation maps of an image classifier (weak supervision): they show where the "
    "evidence is, not a delineated lesion; their accuracy is measured by `xcam evaluate`, not guaranteed.",
    "Probabilities are not calibrated to any particular population; performance drops on hospitals, scanners, "
    "views (lateral, portable AP) and patient groups unlike the training data.",
    "Single frontal radiographs only; no prior studies, no clinical context.",
)


# -- helpers --------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    from xcam.core.weights import sha256_of

    return sha256_of(path)


def dataset_fingerprint(names: Sequence[str], targets: Any, labels: Sequence[str]) -> str:
    """sha256 of a labelled data set: label names, then each image name with its multi-hot row
    (order-independent: rows sorted by name). Two runs on the same images and labels match."""
    import numpy as np

    rows = np.asarray(targets).reshape(len(names), -1) if len(names) else np.zeros((0, len(labels)))
    digest = hashlib.sha256(json.dumps(list(labels)).encode())
    for name, row in sorted(zip(names, rows.tolist()), key=lambda item: item[0]):
        digest.update(f"\n{name}:{''.join('1' if v >= 0.5 else '0' for v in row)}".encode())
    return digest.hexdigest()


def training_metadata(*, names: Sequence[str], targets: Any, labels: Sequence[str], epoch: int, planned_epochs: int,
                      best_val_auc: float, best_epoch: int, val_auc: float, history: Sequence[Mapping[str, Any]],
                      train_images: int, val_images: int, config: Mapping[str, Any] | None = None,
                      argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What a training checkpoint carries for its card (key ``card`` of the checkpoint dict)."""
    import math

    from xcam import __version__

    def finite(v: Any) -> float | None:
        return float(v) if v is not None and math.isfinite(float(v)) else None

    best_row = next((r for r in history if int(r.get("epoch", -1)) == int(best_epoch)), None)
    per_class = {k[len("val_auc_"):]: finite(v) for k, v in (best_row or {}).items() if k.startswith("val_auc_")}
    cfg = dict(config or {})
    return {
        "card_format": CARD_FORMAT, "xcam_version": __version__,
        "dataset_fingerprint": dataset_fingerprint(names, targets, labels), "labels": list(labels),
        "images": {"train": int(train_images), "validation": int(val_images), "total": len(names)},
        "data": {"imgpath": cfg.get("imgpath"), "csvpath": cfg.get("csvpath")},
        "epochs": int(epoch), "planned_epochs": int(planned_epochs), "best_epoch": int(best_epoch),
        "best_val_auc": finite(best_val_auc), "val_auc": finite(val_auc), "best_val_auc_per_class": per_class,
        "command_line": shlex.join(list(argv if argv is not None else sys.argv)),
    }


def read_checkpoint_card(path: Path) -> dict[str, Any] | None:
    """The ``card`` an ``xcam train`` checkpoint carries (``None`` for another file). Loaded with
    ``torch.load(weights_only=True)``: nothing is unpickled freely."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain-data checkpoint (xrv's pickled modules): no card
        return None
    if not isinstance(obj, dict) or "model_state" not in obj:
        return None
    card = obj.get("card")
    out = dict(card) if isinstance(card, dict) else {}
    for key in ("arch", "img_size", "head", "cam_layer", "labels"):
        if key in obj and key not in out:
            out[key] = obj[key]
    for key, source in (("best_val_auc", "best_val_auc"), ("best_epoch", "best_epoch"), ("epochs", "epoch")):
        if source in obj and key not in out:
            out[key] = obj[source]
    return out


def evaluation_metrics(path: str | Path) -> dict[str, Any]:
    """The headline numbers of an ``xcam evaluate`` ``results.json`` (and ``coco_ap.json`` beside it)."""
    from xcam.core.jsonio import read_json

    p = Path(path)
    data = read_json(p)
    summary = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(summary, dict) or "mean" not in summary:
        raise UsageError(f"{p}: not an xcam evaluate results.json (no summary)")
    mean = summary.get("mean") or {}
    out: dict[str, Any] = {
        "source": str(p), "models": summary.get("models", []),
        "images": (summary.get("images") or {}).get("found"), "boxes": mean.get("n_boxes"),
        "class_mean": {"pointing_game": mean.get("pointing"), "T(IoBB>0.25)": (mean.get("iobb") or {}).get("0.25"),
                       "T(IoU>0.1)": (mean.get("iou") or {}).get("0.1"), "mIoU": mean.get("miou"),
                       "AUC": mean.get("auc")},
    }
    coco = p.with_name("coco_ap.json")
    if coco.is_file():
        stats = (read_json(coco) or {}).get("stats") or {}
        out["coco"] = {k: stats.get(k) for k in ("AP", "AP50", "AP75", "AR100")}
    return out


def _evaluates(metrics: Mapping[str, Any], model: str, variant: "WeightVariant") -> bool:
    models = metrics.get("models") or []
    if len(models) != 1:
        return False
    m = models[0]
    name = str(m.get("name", "")).split(":", 1)[0]
    return name == model and str(m.get("weights")) in (variant.name, variant.filename)


# -- building ---------------------------------------------------------------------------------------
def resolve_variant(registration: "ClassifierRegistration", variant: str | None) -> "WeightVariant":
    """A variant by name or checkpoint path; ``demo`` names the checkpoint ``xcam demo`` trained."""
    if variant == "demo":
        from xcam.core.demo_assets import DEMO_COMMAND, find_demo

        assets = find_demo()
        if assets is None:
            raise UsageError(f"no demo checkpoint yet: run `{DEMO_COMMAND}` first")
        variant = str(assets.checkpoint)
    return registration.variant(variant)


DEMO_RESULTS = Path("demo") / "evaluation" / "results.json"
"""Where ``make demo`` (``xcam demo --out demo``) leaves its evaluation, relative to the working folder."""


def build_card(registration: "ClassifierRegistration", variant: str | None = None, *,
               store: "WeightsStore | None" = None, evaluations: Iterable[str | Path] = (),
               found_evaluations: Iterable[str | Path] = (),
               weights_path: str | Path | None = None, weights_sha256: str | None = None,
               hash_file: bool = True, lookup: bool = True) -> dict[str, Any]:
    """The card of one classifier's weights (JSON-able).

    ``weights_path``/``weights_sha256`` describe a file already loaded (export); otherwise the file
    is looked up in ``store`` (``lookup``; off for a random-weight model) and hashed
    (``hash_file``).
    ``evaluations`` are ``results.json`` files of ``xcam evaluate`` for these weights (one for other
    weights is refused); ``found_evaluations`` are candidates (e.g. :data:`DEMO_RESULTS`) used only
    when they evaluate these weights.
    """
    from xcam import __version__
    from xcam.core.weights import WeightsStore

    chosen = resolve_variant(registration, variant)
    labels_all = list(registration.variant_labels(chosen))
    is_checkpoint = chosen.name == chosen.filename and Path(chosen.filename).is_absolute()
    self_trained = registration.default.url is None  # weights you make yourself (mobilenetv3)
    facts = dict(WEIGHT_FACTS.get(chosen.name) or (WEIGHT_FACTS.get(registration.default.name, {})
                                                   if is_checkpoint and self_trained else {}))
    local: Path | None
    if weights_path is not None:
        local = Path(weights_path)
    elif is_checkpoint:
        local = Path(chosen.filename)
    else:
        local = (store or WeightsStore.from_env()).find(chosen) if lookup else None
    sha = weights_sha256 or (_sha256(local) if hash_file and local is not None and local.is_file() else None)
    training = read_checkpoint_card(local) if local is not None and local.is_file() and (
        is_checkpoint or registration.name == "mobilenetv3") else None
    if is_checkpoint and self_trained and training is None and weights_path is None and local is not None:
        raise UsageError(f"{local}: not an `xcam train` checkpoint (it must load with torch.load(weights_only=True) "
                         f"as a dict holding 'model_state'): no card for it")
    labels = [label for label in (training or {}).get("labels", labels_all) if label]
    size = int((training or {}).get("img_size") or registration.input_size)
    limitations = list(COMMON_LIMITATIONS)
    untrained = sum(1 for label in labels_all if not label)
    if untrained and not training:
        limitations.append(f"{untrained} of the {len(labels_all)} outputs were not trained for these weights; xcam "
                           "hides them.")
    if registration.name == "resnet50":
        limitations.append("Lung Lesion and Enlarged Cardiomediastinum have no operating point in torchxrayvision "
                           "(their probability is not calibrated); xcam shows 16 of the 18 outputs.")
    if training is not None or registration.name == "mobilenetv3":
        limitations.append("Trained with `xcam train`: only as good as its data and epochs (the demo model is "
                           "trained on synthetic phantoms and says nothing about real radiographs).")
    if training and training.get("dataset_fingerprint"):
        data = training.get("data") or {}
        facts["training_data"] = (f"{(training.get('images') or {}).get('total', '?')} images listed in "
                                  f"{data.get('csvpath') or 'a label table'} (fingerprint "
                                  f"{str(training['dataset_fingerprint'])[:16]}…)")
    metrics: dict[str, Any] = {}
    if training:
        metrics["training"] = {k: training.get(k) for k in ("best_val_auc", "best_epoch", "epochs",
                                                              "best_val_auc_per_class") if k in training}
    measured = []
    for path in evaluations:
        found = evaluation_metrics(path)
        if not _evaluates(found, registration.name, chosen):
            names = ", ".join(f"{m.get('name')} ({m.get('weights')})" for m in found.get("models", [])) or "no model"
            raise UsageError(f"{path}: evaluates {names}, not {registration.name} ({chosen.name})")
        measured.append(found)
    for path in found_evaluations:
        if Path(path).is_file():
            try:
                found = evaluation_metrics(path)
            except XcamError:
                continue
            if _evaluates(found, registration.name, chosen) and all(m["source"] != found["source"] for m in measured):
                measured.append(found)
    if measured:
        metrics["evaluations"] = measured
    return {
        "card_format": CARD_FORMAT, "xcam_version": __version__,
        "model": registration.name, "variant": Path(chosen.name).name if is_checkpoint else chosen.name,
        "description": registration.description if is_checkpoint else (chosen.description or registration.description),
        "labels": labels,
        "outputs": len(training["labels"]) if training and training.get("labels") else len(labels_all),
        "input": {"size": size, "channels": 1, "preprocessing": registration.preprocessing,
                  "description": PREPROCESSING.get(registration.preprocessing, registration.preprocessing).replace(
                      "S×S", f"{size}×{size}")},
        "calibration": facts.get("calibration", "not declared"),
        "cam": {"target_layer": (training or {}).get("cam_layer") or registration.target_layer,
                "exact_one_pass_gradcam": bool(registration.gap_linear_head)},
        "training_data": facts.get("training_data") or chosen.training_data or "not declared by the plugin",
        "data_terms": facts.get("data_terms", ""),
        "license": facts.get("license", "not declared by the plugin"),
        "source": facts.get("source", ""), "citation": facts.get("citation", ""),
        "file": {"name": Path(chosen.filename).name, "url": chosen.url,
                 "path": str(local) if local is not None and local.is_file() else None,
                 "sha256": sha, "published_sha256": chosen.sha256},
        "intended_use": INTENDED_USE,
        "limitations": limitations,
        "training": training,
        "metrics": metrics,
    }


def card_for_model(model: "XCamModel", registration: "ClassifierRegistration | None" = None) -> dict[str, Any]:
    """The card of a built model (what ``xcam export`` stores): from its registration when the
    plugin manager knows it, else from what the model itself says."""
    if registration is None:
        try:
            from xcam.core.manager import get_plugin_manager

            registration = get_plugin_manager().classifiers().get(model.name)
        except Exception:  # noqa: BLE001 - a broken configuration must not stop an export
            registration = None
    if registration is not None:
        try:
            variant = model.variant or None
            if variant and variant not in {v.name for v in registration.variants} and not Path(variant).is_file():
                variant = None
            card = build_card(registration, variant, weights_path=model.weights_path,
                              weights_sha256=model.weights_sha256 or None, hash_file=False, lookup=False)
            if model.weights_path is None:
                card["file"]["path"] = "(random initialisation)"
            return card
        except XcamError:
            pass
    from xcam import __version__

    return {
        "card_format": CARD_FORMAT, "xcam_version": __version__, "model": model.name, "variant": model.variant,
        "labels": [label for label in model.labels if label], "outputs": len(model.labels),
        "input": {"size": model.input_size, "channels": 1, "preprocessing": model.preprocessing,
                  "description": PREPROCESSING.get(model.preprocessing, model.preprocessing)},
        "training_data": "not declared", "license": "not declared",
        "file": {"path": model.weights_path, "sha256": model.weights_sha256},
        "intended_use": INTENDED_USE, "limitations": list(COMMON_LIMITATIONS), "metrics": {},
    }


# -- rendering --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown."""
    f, inp = card.get("file") or {}, card.get("input") or {}
    lines = [f"# Model card: {card['model']} ({card.get('variant') or 'default'})", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    lines += [
        "| | |", "|---|---|",
        f"| labels ({len(card.get('labels', []))} of {card.get('outputs')} outputs) | {', '.join(card.get('labels', []))} |",
        f"| input | {inp.get('size')}×{inp.get('size')} px, {inp.get('channels', 1)} channel, "
        f"preprocessing `{inp.get('preprocessing')}` |",
        f"| calibration | {card.get('calibration', '—')} |",
        f"| CAM target layer | `{(card.get('cam') or {}).get('target_layer', '—')}` |",
        f"| training data | {card.get('training_data')} |",
        f"| license | {card.get('license')} |",
        f"| file | `{f.get('name') or f.get('path')}`" + (f" ({f['url']})" if f.get("url") else "") + " |",
        f"| local copy | {f.get('path') or 'not present'} |",
        f"| sha256 | {f.get('sha256') or '— (file not present)'} |",
        f"| xcam | {card.get('xcam_version')} |",
        "",
        "## Preprocessing", "", str(inp.get("description", "")), "",
        "## Intended use", "", str(card.get("intended_use", "")), "",
        "## Known limitations", "",
        *[f"- {item}" for item in card.get("limitations", [])],
    ]
    if card.get("data_terms"):
        lines.append(f"- Data: {card['data_terms']}.")
    if card.get("source") or card.get("citation"):
        lines += ["", "## Source", ""]
        lines += [f"- {card['source']}"] if card.get("source") else []
        lines += [f"- {card['citation']}"] if card.get("citation") else []
    training = card.get("training")
    if training:
        lines += ["", "## Training (from the checkpoint)", "",
                  f"- data set fingerprint (sha256 of image names and labels): `{training.get('dataset_fingerprint', '—')}`",
                  f"- images: {training.get('images', '—')}",
                  f"- epochs: {training.get('epochs', '—')} (best {training.get('best_epoch', '—')})",
                  f"- best validation macro AUC: {_fmt(training.get('best_val_auc'))}",
                  f"- command line: `{training.get('command_line', '—')}`"]
    metrics = card.get("metrics") or {}
    lines += ["", "## Metrics measured by xcam", ""]
    if not metrics:
        lines.append("None recorded: run `xcam evaluate` on data with boxes and pass its results.json with "
                     "`--metrics`.")
    for ev in metrics.get("evaluations", []):
        m = ev["class_mean"]
        lines.append(f"- `{ev['source']}` ({ev.get('images')} images, {ev.get('boxes')} boxes): pointing game "
                     f"{_fmt(m['pointing_game'])}, T(IoBB>0.25) {_fmt(m['T(IoBB>0.25)'])}, T(IoU>0.1) "
                     f"{_fmt(m['T(IoU>0.1)'])}, mIoU {_fmt(m['mIoU'])}, AUC {_fmt(m['AUC'])}"
                     + (f"; COCO AP {_fmt(ev['coco']['AP'])}, AP50 {_fmt(ev['coco']['AP50'])}" if ev.get("coco") else ""))
    if metrics.get("training"):
        lines.append(f"- validation during training: best macro AUC {_fmt(metrics['training'].get('best_val_auc'))} "
                     f"at epoch {metrics['training'].get('best_epoch', '—')}")
    return "\n".join(lines) + "\n"


def write_card(card: Mapping[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write ``output`` as Markdown and JSON: ``card.md`` → ``card.md`` + ``card.json`` (any
    other suffix: both suffixes added to the stem)."""
    from xcam.core.jsonio import write_json

    out = Path(output)
    stem = out.with_suffix("") if out.suffix.lower() in (".md", ".json") else out
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(card_markdown(card))
    write_json(js, card)
    return md, js
