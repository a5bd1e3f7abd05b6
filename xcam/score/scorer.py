"""The scoring function shared by the local and the Ray engine: the chain, turned into rows.

Decoding is :func:`xcam.chain.engine.prepare` (any failure → ``.error``, never an exception);
:class:`Scorer` builds one :class:`xcam.chain.engine.Chain` (the models, loaded once per process;
settings from ``--profile`` with the command line's explicit options over it) and turns its
:class:`~xcam.chain.results.ImageResult` objects into output rows (:mod:`xcam.score.schema`).
Both engines call exactly these two, so they write the same rows, and the boxes are those of
``xcam analyze`` for the same model and settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from xcam.chain.engine import Prepared, prepare
from xcam.chain.models import ModelRef
from xcam.core.errors import UsageError
from xcam.core.imageio import DicomReadOptions
from xcam.score.schema import BOXES, CAMS, ENSEMBLE, ModelColumns, Row, Schema, union_labels

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.engine import Chain
    from xcam.chain.results import Consolidation, Finding, ImageResult
    from xcam.chain.settings import ChainSettings, ClassChoice
    from xcam.core.manager import XcamPluginManager

Shape = tuple[int, str]  # (input size, preprocessing kind)
CAM_CLASSES = ("positive", "all")

__all__ = ["ScoreOptions", "Scorer", "Prepared", "prepare", "parse_models", "resolve_backend", "runtime_available",
           "default_workers", "Shape"]


def parse_models(text: str | None, default: str) -> tuple[ModelRef, ...]:
    """``"densenet121,mobilenetv3:runs/best.pt"`` → refs (:func:`xcam.chain.models.parse_models`);
    a name used twice gets the prefix ``name@variant``."""
    from xcam.chain.models import parse_models as chain_parse

    if not [e for e in (text or default or "").split(",") if e.strip()]:
        raise UsageError("--models: give at least one classifier name")
    return chain_parse(text, default)


@dataclass(frozen=True)
class ScoreOptions:
    """Everything a worker needs to rebuild the scorer (picklable: sent to Ray actors)."""

    models: tuple[ModelRef, ...]
    backend: str = "torch"
    device: str = "cpu"
    random_weights: bool = False
    seed: int = 0
    weights_dir: str | None = None
    accept_changed_weights: bool = False
    config_path: str | None = None
    profile: str | None = None  # chain settings profile (None: plugins.toml's, else "default")
    cam_method: str | None = None  # explicit overrides of the profile (None: keep the profile's)
    mask: str | None = None
    strategy: str | None = None
    ensembler: str | None = None
    threshold: float = 0.5
    with_cams: bool = False
    cam_classes: str = "positive"
    boxes: bool = False
    threads: int | None = None  # inference threads per model (None: the backend's default, all cores)
    max_plugin_failures: int | None = None  # stop when one plugin fails on this many images in a row (None: 20; 0: never)
    fail_fast: bool = False  # the first exception a plugin raises stops the job
    dicom: DicomReadOptions = field(default_factory=DicomReadOptions)  # --dicom-voi, sent to every decoding worker

    @property
    def localizes(self) -> bool:
        return self.with_cams or self.boxes

    def class_choice(self) -> "ClassChoice":
        """Which classes get a CAM: none without ``--with-cams``/``--boxes``; ``all`` → every
        valid label; ``positive`` → probability ≥ ``threshold``. Never ground-truth classes."""
        from xcam.chain.settings import ClassChoice

        if not self.localizes:
            return ClassChoice.none()
        if self.cam_classes == "all":
            return ClassChoice(all_classes=True, ground_truth=False)
        if self.cam_classes != "positive":
            raise UsageError(f"--cam-classes {self.cam_classes}: use one of {', '.join(CAM_CLASSES)}")
        return ClassChoice(threshold=self.threshold, ground_truth=False)

    def load_options(self) -> Any:  # -> LoadOptions
        from xcam.chain.models import LoadOptions

        return LoadOptions(backend=resolve_backend(self.backend), device=self.device, random_init=self.random_weights,
                           seed=self.seed, threads=self.threads)


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


def chain_settings(pm: "XcamPluginManager", options: ScoreOptions) -> "ChainSettings":
    """The profile's settings with the command line's explicit options over it (unknown plugin
    names fail here, before any model loads)."""
    from xcam.chain.settings import Overrides, resolve_settings

    return resolve_settings(pm, options.profile, Overrides(method=options.cam_method, mask=options.mask,
                                                           strategy=options.strategy, ensembler=options.ensembler))


def _r(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


class Scorer:
    """One :class:`~xcam.chain.engine.Chain`; :meth:`score` turns prepared inputs into rows."""

    def __init__(self, options: ScoreOptions, pm: "XcamPluginManager | None" = None) -> None:
        from xcam.chain.engine import build_chain
        from xcam.core.weights import WeightsStore

        self.options = options
        self.pm = pm or plugin_manager_for(options)
        if options.threads:
            import torch

            torch.set_num_threads(int(options.threads))
        self.settings = chain_settings(self.pm, options)
        store = WeightsStore.from_env(options.weights_dir, accept_changed=options.accept_changed_weights)
        limit: dict[str, Any] = {"fail_fast": options.fail_fast}
        if options.max_plugin_failures is not None:
            limit["max_plugin_failures"] = options.max_plugin_failures or None
        self.chain: Chain = build_chain(self.pm, options.models, self.settings, options.class_choice(),
                                        load=options.load_options(), store=store, **limit)
        self.models = self.chain.models
        extra = (BOXES,) if options.boxes else (CAMS,) if options.with_cams else ()
        labels = [tuple(m.valid_labels) for m in self.models]
        self.schema = Schema(
            models=tuple(ModelColumns(m.ref.key, ls) for m, ls in zip(self.models, labels)),
            ensemble_labels=union_labels(labels) if len(self.models) > 1 else (),
            extra=extra,
        )

    @property
    def shapes(self) -> tuple[Shape, ...]:
        """The distinct model input shapes: each input is preprocessed once per shape."""
        return self.chain.shapes

    @property
    def backends(self) -> list[str]:
        return self.chain.backends

    def score(self, items: Sequence[Prepared]) -> list[Row]:
        """Rows for ``items``, in order. An item that failed to decode, or whose chain result
        failed (the chain retries a failing batch image by image), becomes an error row. A plugin
        that fails on ``max_plugin_failures`` images in a row raises
        :class:`~xcam.chain.guard.PluginGaveUp` with the rows finished before it (``rows``): the job
        writes them and stops (a rerun resumes after them)."""
        from xcam.chain.guard import PluginGaveUp

        try:
            results = self.chain.run(items)
        except PluginGaveUp as stop:  # the rows finished before the stop travel with it, to be written
            stop.rows = [self.row(item.path, result) for item, result in zip(items, stop.done)]  # type: ignore[attr-defined]
            raise
        return [self.row(item.path, result) for item, result in zip(items, results)]

    def row(self, path: str, result: "ImageResult") -> Row:
        """The output row of one chain result (``path``: the input as enumerated, the resume key)."""
        if result.error is not None:
            return self.schema.error_row(path, result.error)
        extra: dict[str, Any] = {}
        if self.schema.extra:
            entries = self.entries(result)
            extra = {name: entries for name in self.schema.extra}
        return self.schema.ok_row(path, [r.predictions for r in result.results], result.combined_predictions, extra)

    def entries(self, result: "ImageResult") -> list[dict[str, Any]]:
        """Boxes (or CAM peaks) of one image in original pixels: per model, then the ensemble's
        (a pathology that two or more models explained, their CAMs combined by the ensembler)."""
        out: list[dict[str, Any]] = []
        for r in result.results:
            for f in r.findings:
                out += self._describe(r.model, f)
        for c in result.consolidated:
            out += self._describe(ENSEMBLE, c)
        return out

    def _describe(self, model: str, item: "Finding | Consolidation") -> list[dict[str, Any]]:
        prob = item.probability
        base = {"model": model, "label": item.pathology, "probability": None if prob is None else _r(prob, 4)}
        if not self.options.boxes:
            peak = item.peak
            value = float(item.cam.max()) if item.cam.size else 0.0
            if peak is None:  # a flat CAM has no peak
                return [dict(base, peak_x=None, peak_y=None, peak=_r(value, 4))]
            return [dict(base, peak_x=int(peak[0]), peak_y=int(peak[1]), peak=_r(value, 4))]
        return [dict(base, x=_r(b.x), y=_r(b.y), width=_r(b.width), height=_r(b.height), score=_r(b.score, 4))
                for b in item.boxes]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
