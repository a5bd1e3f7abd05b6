"""The scoring function shared by the local and the Ray engine.

:func:`prepare` decodes and preprocesses one path (any failure → an error message, never an
exception); :class:`Scorer` loads the models once and turns a batch of prepared inputs into
output rows (:mod:`xcam.score.schema`). Both engines call exactly these two, so they write the
same rows.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from xcam.core.errors import ImageLoadError, UsageError, XcamError
from xcam.score.schema import BOXES, CAMS, ModelColumns, Row, Schema, one_line, union_labels

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.inference import Classifier
    from xcam.core.manager import XcamPluginManager

Shape = tuple[int, str]  # (input size, preprocessing kind)


@dataclass(frozen=True)
class ModelSpec:
    """One ``--models`` entry: ``name`` or ``name:variant``; ``prefix`` names its columns."""

    name: str
    variant: str | None = None
    prefix: str = ""


def parse_models(text: str | None, default: str) -> tuple[ModelSpec, ...]:
    """``"densenet121,mobilenetv3:runs/best.pt"`` → specs; a name used twice gets ``name@variant``."""
    entries = [e.strip() for e in (text or default).split(",") if e.strip()]
    if not entries:
        raise UsageError("--models: give at least one classifier name")
    parsed = []
    for entry in entries:
        name, _, variant = entry.partition(":")
        parsed.append((name.strip(), variant.strip() or None))
    if len(set(parsed)) != len(parsed):
        raise UsageError(f"--models: a model is listed twice ({text})")
    names = [n for n, _ in parsed]
    return tuple(
        ModelSpec(n, v, n if names.count(n) == 1 else f"{n}@{v or 'default'}") for n, v in parsed
    )


@dataclass(frozen=True)
class ScoreOptions:
    """Everything a worker needs to rebuild the scorer (picklable: sent to Ray actors)."""

    models: tuple[ModelSpec, ...]
    backend: str = "torch"
    device: str = "cpu"
    random_weights: bool = False
    seed: int = 0
    weights_dir: str | None = None
    accept_changed_weights: bool = False
    config_path: str | None = None
    ensembler: str | None = None
    threshold: float = 0.5
    with_cams: bool = False
    cam_classes: str = "positive"
    boxes: bool = False
    cam_method: str | None = None
    mask_extractor: str | None = None
    bbox_strategy: str | None = None
    threads: int | None = None  # inference threads per model (None: the backend's default, all cores)


@dataclass
class Prepared:
    """One decoded, preprocessed input (or the reason it could not be)."""

    path: str
    error: str | None = None
    width: int = 0
    height: int = 0
    pad_x: int = 0
    pad_y: int = 0
    inputs: dict[Shape, np.ndarray] = field(default_factory=dict)  # each [1, S, S] float32


def prepare(path: str, shapes: Sequence[Shape]) -> Prepared:
    """Decode ``path`` and preprocess it for every model input shape; errors become ``.error``."""
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import preprocess

    try:
        image = load_image(path)
        item = Prepared(path, width=image.width, height=image.height)
        for size, kind in shapes:
            array, geometry = preprocess(image, size, kind)
            item.inputs[(size, kind)] = array
            item.pad_x, item.pad_y = geometry.pad_x, geometry.pad_y
        return item
    except ImageLoadError as exc:
        return Prepared(path, error=one_line(exc.problem))
    except XcamError as exc:
        return Prepared(path, error=one_line(str(exc)))
    except MemoryError:
        return Prepared(path, error="out of memory while decoding")
    except Exception as exc:  # a bad file must never stop the job
        return Prepared(path, error=one_line(f"{type(exc).__name__}: {exc}"))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Random-init models get the same weights in every process (resume, Ray actors)."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def runtime_available() -> bool:
    """Whether the ONNX runtime module (``xcam.export.runtime``) is part of this install."""
    import importlib.util

    try:
        return importlib.util.find_spec("xcam.export.runtime") is not None
    except ModuleNotFoundError:  # pragma: no cover
        return False


def resolve_backend(backend: str) -> str:
    """``auto`` falls back to ``torch`` without the ONNX runtime module; ``onnx`` then fails clearly."""
    if backend in ("auto", "onnx") and not runtime_available():
        if backend == "auto":
            return "torch"
        raise UsageError("--backend onnx needs xcam.export.runtime, which this install lacks; use --backend torch")
    return backend


def plugin_manager_for(options: ScoreOptions) -> "XcamPluginManager":
    from xcam.core.config import load_config
    from xcam.core.manager import get_plugin_manager

    return get_plugin_manager(load_config(options.config_path))


def _with_threads(clf: "Classifier", threads: int, device: str) -> "Classifier":
    """An ONNX Runtime classifier reopened with ``threads`` intra-op threads (its sessions use
    every core by default: several Ray actors on one node would oversubscribe it)."""
    reopen = getattr(type(clf), "from_path", None)
    path = getattr(clf, "path", None)
    if reopen is None or path is None:
        return clf  # PyTorch: torch.set_num_threads already applies
    return reopen(path, device=device, kind=getattr(clf, "kind", None), threads=threads)


@dataclass
class LoadedModel:
    spec: ModelSpec
    clf: "Classifier"
    shape: Shape
    labels: tuple[str, ...]  # valid labels, in output order
    cam_clf: Any = None  # the PyTorch classifier CAM methods run on (ONNX fast paths aside)


class Scorer:
    """Models loaded once; :meth:`score` turns prepared inputs into rows."""

    def __init__(self, options: ScoreOptions, pm: "XcamPluginManager | None" = None) -> None:
        from xcam.core.inference import load_classifier
        from xcam.core.weights import WeightsStore

        self.options = options
        self.pm = pm or plugin_manager_for(options)
        if options.threads:
            import torch

            torch.set_num_threads(int(options.threads))
        self.backend = resolve_backend(options.backend)
        store = WeightsStore.from_env(options.weights_dir, accept_changed=options.accept_changed_weights)
        seed = options.seed if options.random_weights else None
        self.models: list[LoadedModel] = []
        for spec in options.models:
            with _seeded(seed):
                clf = load_classifier(self.pm, spec.name, spec.variant, backend=self.backend, device=options.device,
                                      store=store, random_init=options.random_weights)
            if options.threads:
                clf = _with_threads(clf, int(options.threads), options.device)
            labels = tuple(clf.labels[i] for i in clf.valid_indices)
            model = LoadedModel(spec, clf, (int(clf.input_size), str(clf.preprocessing)), labels)
            if options.with_cams or options.boxes:
                model.cam_clf = clf
                if getattr(clf, "model", None) is None:  # ONNX backend: CAM methods need the torch model
                    with _seeded(seed):
                        model.cam_clf = load_classifier(self.pm, spec.name, spec.variant, backend="torch",
                                                        device=options.device, store=store,
                                                        random_init=options.random_weights)
            self.models.append(model)
        self.ensembler = self.pm.ensembler(options.ensembler) if len(self.models) > 1 else None
        extra = (BOXES,) if options.boxes else (CAMS,) if options.with_cams else ()
        self.schema = Schema(
            models=tuple(ModelColumns(m.spec.prefix, m.labels) for m in self.models),
            ensemble_labels=union_labels(m.labels for m in self.models) if self.ensembler else (),
            extra=extra,
        )
        self.localizer = None
        if options.with_cams or options.boxes:
            from xcam.score.localize import Localizer

            self.localizer = Localizer(self.pm, options)

    @property
    def shapes(self) -> tuple[Shape, ...]:
        """The distinct model input shapes: each input is preprocessed once per shape."""
        return tuple(dict.fromkeys(m.shape for m in self.models))

    @property
    def backends(self) -> list[str]:
        return [m.clf.backend for m in self.models]

    def score(self, items: Sequence[Prepared]) -> list[Row]:
        """Rows for ``items``, in order (error rows for items that failed to prepare)."""
        ok = [i for i, item in enumerate(items) if item.error is None]
        per_model: list[list[dict[str, float]]] = []  # [model][k] → {label: probability}
        cams: list[list[Any]] = []  # [model][k] → {class index: CAM}
        for model in self.models:
            if not ok:
                per_model.append([])
                continue
            batch = np.stack([items[i].inputs[model.shape] for i in ok]).astype(np.float32, copy=False)
            probs = np.asarray(model.clf.predict(batch), dtype=np.float32)
            index = {label: i for i, label in zip(model.clf.valid_indices, model.labels)}
            per_model.append([{label: float(p[j]) for label, j in index.items()} for p in probs])
            if self.localizer is not None:
                cams.append(self.localizer.cams(model, batch, probs))
        rows: list[Row] = []
        position = {i: k for k, i in enumerate(ok)}
        for i, item in enumerate(items):
            if item.error is not None:
                rows.append(self.schema.error_row(item.path, item.error))
                continue
            k = position[i]
            probs_k = [model_probs[k] for model_probs in per_model]
            ensemble = self.ensembler.combine_probabilities(probs_k) if self.ensembler else None
            extra: dict[str, Any] = {}
            if self.localizer is not None:
                entries = self.localizer.entries(item, self.models, probs_k, [c[k] for c in cams],
                                                 self.ensembler, ensemble)
                extra = {name: entries for name in self.schema.extra}
            rows.append(self.schema.ok_row(item.path, probs_k, ensemble, extra))
        return rows


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
