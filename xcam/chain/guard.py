"""Plugins are other people's code: every call the chain makes into a plugin goes through here.

An exception raised inside a plugin (classifier forward, CAM method, mask extractor, bbox
strategy, ensembler) becomes a :class:`PluginFailure` naming the plugin, the distribution it came
from and the exception, in one line; a result that breaks the plugin contract (wrong shape, NaN or
infinity, a CAM outside [0, 1], a mask of the wrong size, a box outside the grid) becomes one too,
naming the contract. The chain turns a failure into an error on the images it was computing, never
a crash later on. :class:`FailureCounter` stops a job early when one plugin fails on every call.
The checks themselves are :mod:`xcam.core.contracts`, the contract :mod:`xcam.testing` offers
plugin authors too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from xcam.core.contracts import box_problem, cam_problem, mask_problem, probabilities_problem
from xcam.core.errors import XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.manager import XcamPluginManager
    from xcam.core.types import ScoredBox

T = TypeVar("T")

KINDS: dict[str, str] = {
    "classifier": "classifiers",
    "cam method": "cam_methods",
    "mask extractor": "mask_extractors",
    "bbox strategy": "bbox_strategies",
    "ensembler": "ensemblers",
}
"""A plugin kind as users read it → the hook whose registrations name it."""

DEFAULT_MAX_CONSECUTIVE = 20
"""A plugin that fails on this many images in a row stops the job (``--max-plugin-failures``)."""


class PluginFailure(XcamError):
    """A plugin raised, or returned something that breaks its contract."""

    def __init__(self, kind: str, name: str, source: str, problem: str) -> None:
        self.kind, self.name, self.source, self.problem = kind, name, source, problem
        super().__init__(f"{kind} {name!r} ({source}): {problem}")


class PluginGaveUp(XcamError):
    """One plugin failed on too many images in a row: the job stops (what was written stays valid).

    ``done`` holds the results of the batch that were finished before the stop (in input order), so
    a job can write them before it ends; the inputs after them were not computed."""

    def __init__(self, message: str, done: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.done = list(done)


def provenance(pm: "XcamPluginManager", kind: str, name: str) -> str:
    """``"distribution version"`` of the plugin that registered ``name`` (``"xcam"`` for built-ins)."""
    hook = KINDS[kind]
    for info in pm.infos.values():
        if name in info.registrations.get(hook, ()):
            if info.source == "builtin":
                return "built-in"
            return info.distribution if info.version in ("", "?") else f"{info.distribution} {info.version}"
    return "unknown source"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Guard:
    """Calls into plugins for one chain: exceptions and contract breaks become :class:`PluginFailure`."""

    def __init__(self, pm: "XcamPluginManager") -> None:
        self.pm = pm
        self._sources: dict[tuple[str, str], str] = {}

    def failure(self, kind: str, name: str, problem: str) -> PluginFailure:
        key = (kind, name)
        if key not in self._sources:
            self._sources[key] = provenance(self.pm, kind, name)
        return PluginFailure(kind, name, self._sources[key], problem)

    def call(self, kind: str, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; any exception (not a :class:`PluginFailure`) becomes one."""
        try:
            return fn(*args, **kwargs)
        except PluginFailure:
            raise
        except MemoryError as exc:
            raise self.failure(kind, name, "out of memory") from exc
        except Exception as exc:  # noqa: BLE001 - other people's code: anything may come out
            raise self.failure(kind, name, _one_line(exc)) from exc

    # -- contracts (the checks of xcam.core.contracts) ------------------------------------------------
    def _broke(self, kind: str, name: str, problem: str | None) -> None:
        if problem:
            raise self.failure(kind, name, f"broke the contract: {problem}")

    def cams(self, name: str, maps: Any, count: int) -> np.ndarray:
        """A CAM method's output: ``[count, h, w]``, finite, in [0, 1] (a little rounding allowed)."""
        self._broke("cam method", name, cam_problem(maps, count))
        return np.asarray(maps, dtype=np.float32)

    def combined(self, name: str, cam: Any, shape: tuple[int, ...]) -> np.ndarray:
        """An ensembler's combined CAM: the inputs' shape, finite, in [0, 1]."""
        problem = cam_problem(np.asarray(cam)[None] if np.ndim(cam) == 2 else cam, 1)
        if not problem and tuple(np.shape(cam)) != tuple(shape):
            problem = f"combined CAM of shape {tuple(np.shape(cam))} for inputs of shape {tuple(shape)}"
        self._broke("ensembler", name, problem)
        return np.asarray(cam, dtype=np.float32)

    def mask(self, name: str, mask: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A mask extractor's output: a 2-D array of the CAM's shape."""
        self._broke("mask extractor", name, mask_problem(mask, shape))
        return np.asarray(mask).astype(bool, copy=False)

    def boxes(self, name: str, boxes: Any, shape: tuple[int, int]) -> list["ScoredBox"]:
        """A bbox strategy's output: boxes with finite coordinates inside the ``(rows, cols)`` grid."""
        from xcam.core.types import ScoredBox

        try:
            items = list(boxes)
        except TypeError:
            raise self.failure("bbox strategy", name,
                               f"broke the contract: returned {type(boxes).__name__}, not a list of boxes") from None
        for b in items:
            if not isinstance(b, ScoredBox):
                self._broke("bbox strategy", name, f"returned {type(b).__name__}, not ScoredBox")
            self._broke("bbox strategy", name, box_problem(b, shape))
        return items

    def probabilities(self, name: str, probs: Any, count: int, classes: int) -> np.ndarray:
        """A classifier's output: ``[count, classes]`` finite values."""
        self._broke("classifier", name, probabilities_problem(probs, count, classes))
        return np.asarray(probs)


class FailureCounter:
    """Consecutive images failed by the same plugin; stops the job after ``limit`` in a row."""

    def __init__(self, limit: int | None = DEFAULT_MAX_CONSECUTIVE) -> None:
        self.limit = limit
        self.last: PluginFailure | None = None
        self.streak = 0

    def ok(self) -> None:
        self.last, self.streak = None, 0

    def failed(self, failure: PluginFailure) -> bool:
        """Count a failure; ``True`` when the limit is reached (see :meth:`give_up`)."""
        same = self.last is not None and (self.last.kind, self.last.name) == (failure.kind, failure.name)
        self.streak = self.streak + 1 if same else 1
        self.last = failure
        return bool(self.limit and self.streak >= self.limit)

    def give_up(self, done: Sequence[Any] = ()) -> PluginGaveUp:
        failure = self.last
        assert failure is not None
        return PluginGaveUp(f"stopping: {failure.kind} {failure.name!r} ({failure.source}) failed on "
                            f"{self.streak} images in a row (last: {failure.problem})", done)


def plugin_names(failures: Sequence[PluginFailure]) -> list[str]:
    return sorted({f"{f.kind} {f.name}" for f in failures})
