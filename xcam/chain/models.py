"""The chain's models: ``--models`` entries, loading once per process, the CAM model on demand.

A :class:`LoadedModel` is a classifier on the requested backend plus, built only when a CAM
method needs autograd that the backend lacks (ONNX Runtime), the same weights on PyTorch.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.inference import Classifier
    from xcam.core.manager import XcamPluginManager
    from xcam.core.model import XCamModel
    from xcam.core.weights import WeightsStore


@dataclass(frozen=True)
class ModelRef:
    """One ``--models`` entry: ``name`` or ``name:variant`` (a weight variant or a checkpoint path);
    ``prefix`` names its columns and files (``name``, or ``name@variant`` when a name repeats)."""

    name: str
    variant: str | None = None
    prefix: str = ""

    @property
    def key(self) -> str:
        return self.prefix or self.name


def parse_models(text: str | Sequence[str] | None, default: str, variant: str | None = None) -> tuple[ModelRef, ...]:
    """``"densenet121,mobilenetv3:runs/best.pt"`` → refs. ``variant`` (the ``--weights`` of a
    one-model command) applies to a single entry given without one."""
    entries = [e.strip() for e in (text.split(",") if isinstance(text, str) else (text or [])) if e.strip()]
    entries = entries or [default]
    parsed = []
    for entry in entries:
        name, _, given = entry.partition(":")
        parsed.append((name.strip(), given.strip() or None))
    if variant:
        if len(parsed) != 1:
            raise UsageError("--weights names one weight variant or checkpoint; with several models write "
                             "--models name:variant,...")
        parsed = [(parsed[0][0], parsed[0][1] or variant)]
    if len(set(parsed)) != len(parsed):
        raise UsageError(f"--models: a model is listed twice ({', '.join(entries)})")
    names = [n for n, _ in parsed]
    return tuple(ModelRef(n, v, n if names.count(n) == 1 else f"{n}@{v or 'default'}") for n, v in parsed)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Random-init models get the same weights in every process (resume, Ray actors, tests)."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class LoadOptions:
    """Where and how models are loaded (picklable: sent to Ray actors)."""

    backend: str = "torch"
    device: str = "cpu"
    random_init: bool = False
    seed: int = 0  # for random-init models
    threads: int | None = None  # ONNX Runtime intra-op threads (None: all cores)


_CACHE: dict[tuple, "Classifier"] = {}


def _cached(pm: "XcamPluginManager", ref: ModelRef, backend: str, options: LoadOptions,
            store: "WeightsStore | None") -> "Classifier":
    from xcam.export.backends import load_classifier

    reg = pm.classifier(ref.name)
    variant = ref.variant
    stamp = Path(variant).stat().st_mtime_ns if variant and Path(variant).is_file() else None  # retrained files
    key = (reg.name, variant, stamp, backend, options.device, options.random_init, options.seed, options.threads,
           repr(store), json.dumps(pm.config.plugin_options(reg.name), sort_keys=True, default=str))
    if key not in _CACHE:
        with seeded(options.seed if options.random_init else None):
            clf = load_classifier(pm, reg.name, variant, backend=backend, device=options.device, store=store,
                                  random_init=options.random_init, threads=options.threads)
        _CACHE[key] = clf
    return _CACHE[key]


def clear_model_cache() -> None:
    """Forget the models loaded so far (tests, changed weights)."""
    _CACHE.clear()


@dataclass
class LoadedModel:
    """A classifier and, on first need, the PyTorch model its CAM plugins run on."""

    ref: ModelRef
    classifier: "Classifier"
    _pm: "XcamPluginManager" = field(repr=False)
    _options: LoadOptions = field(repr=False)
    _store: "WeightsStore | None" = field(default=None, repr=False)
    _autograd: "XCamModel | None" = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.classifier.name

    @property
    def valid_labels(self) -> list[str]:
        return [self.classifier.labels[i] for i in self.classifier.valid_indices]

    def autograd_model(self) -> "XCamModel":
        """The PyTorch model for CAM plugins: the backend's own, else the same weights built on
        PyTorch now (once)."""
        own = self.classifier.autograd_model
        if own is not None:
            return own
        if self._autograd is None:
            try:
                torch_clf = _cached(self._pm, self.ref, "torch", self._options, self._store)
            except XcamError as exc:
                raise XcamError(f"{self.ref.name}: the CAM method needs the PyTorch model, which failed to load "
                                f"({exc})") from None
            self._autograd = torch_clf.autograd_model
        return self._autograd

    @property
    def autograd_loaded(self) -> bool:
        return self.classifier.autograd_model is not None or self._autograd is not None


def load_models(pm: "XcamPluginManager", refs: Sequence[ModelRef], options: LoadOptions,
                store: "WeightsStore | None" = None) -> list[LoadedModel]:
    """Load every model (cached for the process)."""
    if not refs:
        raise UsageError("no model given")
    return [LoadedModel(ref, _cached(pm, ref, options.backend, options, store), pm, options, store) for ref in refs]
