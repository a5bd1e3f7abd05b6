"""The one image → findings engine: :class:`Chain`.

decode (a thread pool, overlapped with inference: :meth:`Chain.stream`) → preprocess once per
distinct model input → per model, a batch: probabilities (and in-graph CAMs when the backend
serves the method) → classes to explain (:class:`~xcam.chain.settings.ClassChoice`) → CAMs
(:mod:`xcam.chain.cams`) → per image: maps into the work grid → masks, boxes, peaks
(:mod:`xcam.chain.localize`) → metrics against ground truth → consolidation across models
(ensembler plugin) → :class:`~xcam.chain.results.ImageResult`.

Every command that turns an image into findings calls this: ``cam``, ``analyze``, ``score``,
``evaluate``, ``demo`` and the UI. A failure while computing a batch is retried image by image, so
one bad image (or a plugin that fails on it) fails only its own result.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from xcam.chain.cams import CamPlan, in_graph_cams, normalize, plan, plugin_cams
from xcam.chain.guard import DEFAULT_MAX_CONSECUTIVE, FailureCounter, Guard, PluginFailure, PluginGaveUp
from xcam.chain.localize import Localizer, box_metrics, ground_truth_for
from xcam.chain.models import LoadedModel, LoadOptions, ModelRef, load_models
from xcam.chain.results import Consolidation, Finding, ImageResult, ModelResult, Timings
from xcam.chain.settings import ChainSettings, ClassChoice
from xcam.core.errors import ImageLoadError, UsageError, XcamError
from xcam.core.labels import label_key

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.imageio import XrayImage
    from xcam.core.manager import XcamPluginManager
    from xcam.core.preprocess import Geometry, WorkGrid
    from xcam.core.weights import WeightsStore

Box = tuple[float, float, float, float]
Shape = tuple[int, str]  # (input size, preprocessing kind)
GroundTruth = Sequence[tuple[str, Box]]


def one_line(text: str, limit: int = 500) -> str:
    """Whitespace (newlines included) collapsed into single spaces, capped at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """One line for an exception: an :class:`XcamError`'s own message, else ``Type: message``."""
    if isinstance(exc, ImageLoadError):
        return one_line(exc.problem)
    if isinstance(exc, XcamError):
        return one_line(str(exc))
    if isinstance(exc, MemoryError):
        return "out of memory"
    return one_line(f"{type(exc).__name__}: {exc}")


@dataclass
class Prepared:
    """One decoded input, preprocessed for every model input shape (or the reason it failed)."""

    path: str
    width: int = 0
    height: int = 0
    inputs: dict[Shape, np.ndarray] = field(default_factory=dict)  # each [1, S, S] float32
    geometry: "Geometry | None" = None
    image: "XrayImage | None" = None
    ground_truth: list[tuple[str, Box]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def prepare(source: "str | Path | XrayImage", shapes: Sequence[Shape], keep_image: bool = False,
            ground_truth: GroundTruth = ()) -> Prepared:
    """Decode (unless given an image) and preprocess for every shape; failures become ``.error``."""
    from xcam.core.imageio import XrayImage, load_image
    from xcam.core.preprocess import preprocess

    start = time.perf_counter()
    path = source.path if isinstance(source, XrayImage) else str(source)
    gts = [(str(label), tuple(float(v) for v in box)) for label, box in ground_truth]
    try:
        image = source if isinstance(source, XrayImage) else load_image(source)
        item = Prepared(path, image.width, image.height, image=image if keep_image else None, ground_truth=gts)  # type: ignore[arg-type]
        for size, kind in shapes:
            array, geometry = preprocess(image, size, kind)
            item.inputs[(size, kind)] = array
            item.geometry = geometry
    except Exception as exc:  # noqa: BLE001 - a bad file never stops a batch
        item = Prepared(path, ground_truth=gts, error=describe_error(exc))  # type: ignore[arg-type]
    item.seconds = time.perf_counter() - start
    return item


def decode_ahead(sources: Iterable["str | Path"], shapes: Sequence[Shape], pool: cf.Executor, max_inflight: int, *,
                 keep_images: bool = False, ground_truth: Callable[[str], GroundTruth] | None = None,
                 on_queue: Callable[[int], None] | None = None) -> Iterator[Prepared]:
    """:func:`prepare` of every source in ``pool``, yielded in input order, never more than
    ``max_inflight`` submitted and not yet taken (``on_queue`` sees the queue length)."""
    queue: collections.deque[cf.Future[Prepared]] = collections.deque()
    paths = iter(sources)
    exhausted = False
    while True:
        while not exhausted and len(queue) < max_inflight:
            path = next(paths, None)
            if path is None:
                exhausted = True
                break
            gts = ground_truth(str(path)) if ground_truth is not None else ()
            queue.append(pool.submit(prepare, path, tuple(shapes), keep_images, gts))
        if on_queue is not None:
            on_queue(len(queue))
        if not queue:
            return
        yield queue.popleft().result()


def batched(items: Iterable[Prepared], size: int) -> Iterator[list[Prepared]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[Prepared] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Chain:
    """Models loaded once; :meth:`run` turns prepared inputs into :class:`ImageResult` objects.

    ``models``: refs or a ``--models`` string; ``settings``: a resolved profile
    (:func:`xcam.chain.settings.resolve_settings`); ``choice``: which classes get CAMs.
    """

    def __init__(
        self,
        pm: "XcamPluginManager",
        models: Sequence[ModelRef],
        settings: ChainSettings,
        choice: ClassChoice | None = None,
        *,
        load: LoadOptions | None = None,
        store: "WeightsStore | None" = None,
        keep_images: bool = False,
        fail_fast: bool = False,
        max_plugin_failures: int | None = DEFAULT_MAX_CONSECUTIVE,
    ) -> None:
        start = time.perf_counter()
        self.pm, self.settings = pm, settings
        self.choice = choice or ClassChoice()
        self.load_options = load or LoadOptions()
        self.keep_images = keep_images
        self.fail_fast = fail_fast
        self.guard = Guard(pm)
        self.failures = FailureCounter(max_plugin_failures)
        self.models: list[LoadedModel] = load_models(pm, models, self.load_options, store)
        self.localizer = Localizer(pm, settings, self.guard)
        self.ensembler = pm.ensembler(settings.ensembler)
        self._plans: dict[str, CamPlan] = {}
        self.check_targets()
        self.load_seconds = time.perf_counter() - start

    # -- set-up ------------------------------------------------------------------------------
    @property
    def shapes(self) -> tuple[Shape, ...]:
        """The distinct model inputs: each image is preprocessed once per shape."""
        return tuple(dict.fromkeys((int(m.classifier.input_size), str(m.classifier.preprocessing))
                                   for m in self.models))

    @property
    def backends(self) -> list[str]:
        return [m.classifier.backend for m in self.models]

    def with_choice(self, choice: ClassChoice) -> "Chain":
        """The same loaded models and settings with another class choice (cheap)."""
        other = object.__new__(Chain)
        other.__dict__.update(self.__dict__)
        other.choice = choice
        other.check_targets()
        return other

    def check_targets(self) -> None:
        """Every target class must be a label of at least one model (the error lists the valid ones)."""
        if not self.choice.targets:
            return
        known = {label_key(label) for m in self.models for label in m.valid_labels}
        for target in self.choice.targets:
            if label_key(target) not in known:
                names = sorted({label for m in self.models for label in m.valid_labels})
                raise UsageError(f"unknown target class {target!r}; valid: {', '.join(names)}")

    def plan(self, model: LoadedModel) -> CamPlan:
        """How ``model``'s CAMs are made (decided on first need: it may load the PyTorch model)."""
        key = model.ref.key
        if key not in self._plans:
            self._plans[key] = plan(model, self.settings.cam_for(model.name), self.pm)
        return self._plans[key]

    def work_side(self, geometry: "Geometry") -> int:
        size = self.settings.work_size
        if size == "full":
            return geometry.side
        if size == "model":
            return max(int(m.classifier.input_size) for m in self.models)
        return int(size)

    # -- inputs --------------------------------------------------------------------------------
    def prepare(self, source: "str | Path | XrayImage", ground_truth: GroundTruth = ()) -> Prepared:
        return prepare(source, self.shapes, self.keep_images, ground_truth)

    def stream(self, sources: Iterable["str | Path"], *, batch_size: int = 8, workers: int = 2,
               ground_truth: Callable[[str], GroundTruth] | None = None,
               on_result: Callable[[ImageResult], None] | None = None) -> Iterator[ImageResult]:
        """Results in input order: decoding runs ``workers`` threads ahead of inference (at most
        ``2·batch_size + 2·workers`` inputs held at once, :func:`decode_ahead`)."""
        with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="xcam-decode") as pool:
            prepared = decode_ahead(sources, self.shapes, pool, 2 * batch_size + 2 * workers,
                                    keep_images=self.keep_images, ground_truth=ground_truth)
            for batch in batched(prepared, batch_size):
                try:
                    done, stop = self.run(batch), None
                except PluginGaveUp as exc:
                    done, stop = exc.done, exc
                for result in done:
                    if on_result is not None:
                        on_result(result)
                    yield result
                if stop is not None:
                    raise stop

    # -- running -------------------------------------------------------------------------------
    def analyze(self, source: "str | Path | XrayImage", ground_truth: GroundTruth = ()) -> ImageResult:
        """The chain on one image (a path or a decoded image)."""
        return self.run([self.prepare(source, ground_truth)])[0]

    def run(self, items: Sequence[Prepared]) -> list[ImageResult]:
        """Results for ``items`` in order. A batch that fails is retried image by image, so an
        exception (a plugin's included) fails only the images it happens on: their ``error`` names
        the plugin, its distribution and the exception. With ``fail_fast`` the first exception
        propagates; a plugin that fails on ``max_plugin_failures`` images in a row raises
        :class:`~xcam.chain.guard.PluginGaveUp` carrying the results finished before it (``done``,
        in input order: write them; the inputs after them were not computed)."""
        ok = [item for item in items if item.error is None]
        results: dict[int, ImageResult] = {}
        stop = None
        if ok:
            try:
                for item, result in zip(ok, self._run_batch(ok)):
                    results[id(item)] = result
                    self.failures.ok()
            except Exception:  # noqa: BLE001 - retried one by one below
                if self.fail_fast:
                    raise
                for item in ok:
                    try:
                        results[id(item)] = self._run_batch([item])[0]
                        self.failures.ok()
                    except Exception as exc:  # noqa: BLE001 - this image's failure only
                        results[id(item)] = ImageResult(item.path, item.width, item.height, error=describe_error(exc))
                        if isinstance(exc, PluginFailure) and self.failures.failed(exc):
                            stop = item
                            break
        out = []
        for item in items:
            if item.error is not None:
                out.append(ImageResult(item.path, error=item.error))
            elif id(item) in results:
                result = results[id(item)]
                result.timings.seconds["load"] = result.timings.seconds.get("load", 0.0) + item.seconds
                out.append(result)
            if item is stop:
                raise self.failures.give_up(out)
        return out

    def _run_batch(self, items: Sequence[Prepared]) -> list[ImageResult]:
        timings = Timings()
        per_model: list[tuple[LoadedModel, np.ndarray, list[dict[int, np.ndarray]], list[list[tuple[int, str]]]]] = []
        for model in self.models:
            per_model.append(self._model_batch(model, items, timings))
        share = 1.0 / len(items)
        results = []
        for b, item in enumerate(items):
            own = Timings()
            own.add(timings, share)
            with own.stage("mask_box"):
                result = self._image_result(item, b, per_model)
            result.timings = own
            results.append(result)
        return results

    def _model_batch(self, model: LoadedModel, items: Sequence[Prepared], timings: Timings
                     ) -> tuple[LoadedModel, np.ndarray, list[dict[int, np.ndarray]], list[list[tuple[int, str]]]]:
        """Probabilities, the chosen classes and their model-space CAMs for every image of a batch."""
        clf = model.classifier
        shape = (int(clf.input_size), str(clf.preprocessing))
        batch = np.concatenate([item.inputs[shape][None] for item in items]).astype(np.float32, copy=False)
        wants_cams = self._may_select(items)
        cam_plan = self.plan(model) if wants_cams else None
        guard = self.guard
        with timings.stage("model"):
            if cam_plan is not None and cam_plan.in_graph:
                first = in_graph_cams(model, batch, False, None, guard)
                probs = first[0]
            else:
                first = None
                probs = guard.call("classifier", clf.name, clf.predict, batch)
            probs = np.asarray(guard.probabilities(clf.name, probs, len(items), len(clf.labels)), dtype=np.float32)
        picks = [self._select(model, probs[b], item.ground_truth) for b, item in enumerate(items)]
        cams: list[dict[int, np.ndarray]] = [{} for _ in items]
        pairs = [(b, c) for b, chosen in enumerate(picks) for c, _ in chosen]
        if pairs and cam_plan is not None:
            with timings.stage("cam"):
                if cam_plan.in_graph:
                    _, maps = in_graph_cams(model, batch, cam_plan.aug_smooth, first, guard)
                    for b, c in pairs:
                        cams[b][c] = maps[b, c]
                else:
                    reg = self.ensembler
                    maps = plugin_cams(model, batch, pairs, cam_plan, self.pm, reg.combine_cams, guard, reg.name)
                    for (b, c), m in zip(pairs, maps):
                        cams[b][c] = m
        return model, probs, cams, picks

    def _may_select(self, items: Sequence[Prepared]) -> bool:
        c = self.choice
        if c.targets or c.all_classes or c.top_k is None or c.top_k > 0:
            return True
        return c.ground_truth and any(item.ground_truth for item in items)

    def _select(self, model: LoadedModel, probs: np.ndarray, gts: GroundTruth) -> list[tuple[int, str]]:
        """``[(output index, reason)]`` per :class:`ClassChoice` (no duplicates)."""
        clf, c = model.classifier, self.choice
        valid = list(clf.valid_indices)
        chosen: dict[int, str] = {}
        if c.targets:
            keys = [label_key(t) for t in c.targets]  # a model takes the targets it knows
            for key in keys:
                for i in valid:
                    if label_key(clf.labels[i]) == key:
                        chosen.setdefault(i, "target")
        elif c.all_classes:
            chosen = {i: "all" for i in valid}
        else:
            ranked = sorted(valid, key=lambda i: -float(probs[i]))
            positive = [i for i in ranked if float(probs[i]) >= c.threshold]
            if c.top_k is not None:
                positive = positive[: max(int(c.top_k), 0)]
            chosen = {i: ("top-k" if c.top_k is not None else "threshold") for i in positive}
        if c.ground_truth and gts:
            keys = {label_key(label) for label, _ in gts}
            for i in valid:
                if label_key(clf.labels[i]) in keys:
                    chosen.setdefault(i, "ground-truth")
        return list(chosen.items())

    def _image_result(self, item: Prepared, b: int, per_model: Sequence[tuple]) -> ImageResult:
        from xcam.core.preprocess import WorkGrid

        assert item.geometry is not None
        grid = WorkGrid.of(item.geometry, self.work_side(item.geometry))
        result = ImageResult(item.path, item.width, item.height, grid=grid, ground_truth=list(item.ground_truth),
                             image=item.image)
        for model, probs, cams, picks in per_model:
            clf = model.classifier
            cam_plan = self._plans.get(model.ref.key)
            findings = []
            for index, reason in picks[b]:
                if index not in cams[b]:
                    continue
                label = clf.labels[index]
                findings.append(self._finding(label, index, float(probs[b, index]), reason, cams[b][index], grid,
                                              item))
            settings = self.settings.cam_for(model.name)
            result.results.append(ModelResult(
                model=model.ref.key, weights=clf.variant, backend=clf.backend,
                method=cam_plan.label if cam_plan else settings.method,
                layers=cam_plan.layers if cam_plan else (),
                aug_smooth=cam_plan.aug_smooth if cam_plan else settings.aug_smooth,
                mask_extractor=self.localizer.extractor.name, strategy=self.localizer.strategy.name,
                predictions={clf.labels[i]: float(probs[b, i]) for i in clf.valid_indices},
                findings=findings, input_size=int(clf.input_size),
            ))
        self._consolidate(result)
        return result

    def _finding(self, label: str, index: int, prob: float, reason: str, model_map: np.ndarray, grid: "WorkGrid",
                 item: Prepared) -> Finding:
        cam = normalize(grid.from_model(model_map))
        mask, boxes, peak = self.localizer.localize(cam, grid)
        gts = ground_truth_for(label, item.ground_truth)
        metrics = box_metrics(boxes, peak, gts, item.width, item.height)
        return Finding(label, index, prob, reason, cam, mask, boxes, peak, gts, metrics)

    def _consolidate(self, result: ImageResult) -> None:
        """The ensembler's probabilities, and its combined CAM for each pathology that two or more
        models explained."""
        if len(result.results) < 2:
            return
        weights = self.settings.model_weights
        reg, guard = self.ensembler, self.guard
        result.ensembler = reg.name
        result.combined_predictions = dict(guard.call("ensembler", reg.name, reg.combine_probabilities,
                                                      [r.predictions for r in result.results], weights))
        combined = {label_key(k): v for k, v in result.combined_predictions.items()}
        groups: dict[str, list[tuple[int, str, Finding]]] = {}
        for i, r in enumerate(result.results):
            for f in r.findings:
                groups.setdefault(label_key(f.pathology), []).append((i, r.model, f))
        assert result.grid is not None
        for key, members in groups.items():
            if len(members) < 2:
                continue
            label = members[0][2].pathology
            w = [weights[i] for i, _, _ in members] if weights is not None else None
            merged = guard.call("ensembler", reg.name, reg.combine_cams, [f.cam for _, _, f in members], w)
            cam = normalize(guard.combined(reg.name, merged, members[0][2].cam.shape))
            mask, boxes, peak = self.localizer.localize(cam, result.grid)
            gts = ground_truth_for(label, result.ground_truth)
            result.consolidated.append(Consolidation(
                pathology=label, models=[m for _, m, _ in members], probability=combined.get(key),
                ensembler=reg.name, cam=cam, mask=mask, boxes=boxes, peak=peak, ground_truth=gts,
                metrics=box_metrics(boxes, peak, gts, result.width, result.height),
            ))


def build_chain(pm: "XcamPluginManager", models: str | Sequence[str] | Sequence[ModelRef] | None,
                settings: ChainSettings, choice: ClassChoice | None = None, *, weights: str | None = None,
                load: LoadOptions | None = None, store: "WeightsStore | None" = None,
                keep_images: bool = False, fail_fast: bool = False,
                max_plugin_failures: int | None = DEFAULT_MAX_CONSECUTIVE) -> Chain:
    """A :class:`Chain` from a ``--models`` value (default: plugins.toml's classifier) and a
    one-model ``--weights`` variant."""
    from xcam.chain.models import parse_models

    if models and not isinstance(models, str) and all(isinstance(m, ModelRef) for m in models):
        refs = tuple(models)  # type: ignore[arg-type]
    else:
        refs = parse_models(models, pm.classifier(None).name, weights)  # type: ignore[arg-type]
    for ref in refs:
        pm.classifier(ref.name)  # unknown names fail before any model loads
    return Chain(pm, refs, settings, choice, load=load, store=store, keep_images=keep_images, fail_fast=fail_fast,
                 max_plugin_failures=max_plugin_failures)


def with_model_weights(settings: ChainSettings, weights: Sequence[float] | None, n_models: int) -> ChainSettings:
    """``settings`` with ensemble weights, checked against the number of models."""
    if weights is None:
        return settings
    if len(weights) != n_models:
        raise UsageError(f"--model-weights has {len(weights)} values for {n_models} models")
    return replace(settings, model_weights=tuple(float(w) for w in weights))


def ground_truth_lookup(table: Mapping[str, GroundTruth]) -> Callable[[str], GroundTruth]:
    """A ``path → boxes`` function over a ``{file name: boxes}`` table (NIH box lists name files)."""
    return lambda path: table.get(Path(path).name, ())


__all__ = ["Chain", "Prepared", "build_chain", "prepare", "describe_error", "one_line", "ground_truth_lookup",
           "with_model_weights"]
