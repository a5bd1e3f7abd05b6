"""Explanation quality of CAM methods on a folder (``xcam saliency``): localization, faithfulness,
sanity and cost, one row per (method, model).

For each method (a CAM-method plugin, or every installed one) the chain runs with the run's settings
profile and that method (:func:`xcam.chain.settings.apply_overrides`), so its CAMs, route (in-graph
where the backend serves the method on its layer — the fast path — else the plugin) and timing are
what ``analyze`` would give. Per image the explained classes are the named targets, else the top-k
most probable, plus every class with a ground-truth box. Then, per finding:

* **localization** (with a box list): pointing game and T(IoBB>0.25) by :mod:`xcam.evaluation.protocol`;
* **faithfulness**: ROAD (:mod:`xcam.evaluation.faithfulness`), the CAM taken back to the model's
  input grid, perturbations batched through the classifier backend;
* **sanity**: cascading randomization (:mod:`xcam.evaluation.sanity`) on the first
  ``sanity_images`` images that succeeded.

A plugin that raises or breaks its contract fails only the rows it was computing (the chain's
:class:`~xcam.chain.guard.Guard`); a plugin that fails on ``max_plugin_failures`` images in a row
stops that method, not the run; an unreadable image is recorded and skipped.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from xcam.core.errors import UsageError
from xcam.evaluation.faithfulness import DEFAULT_PERCENTILES, road, to_model_space
from xcam.evaluation.sanity import DEFAULT_STEPS, DEFAULT_THRESHOLD

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.engine import Chain, Prepared
    from xcam.chain.results import ImageResult
    from xcam.chain.settings import ChainSettings

ALL = "all"


@dataclass
class SaliencyConfig:
    """Settings of one run (what ``xcam saliency`` exposes)."""

    inputs: list[str]
    models: str | None = None  # "name[:variant],..." (default: plugins.toml's classifier)
    weights: str | None = None  # the one model's variant or checkpoint
    methods: list[str] | None = None  # CAM-method plugins; ["all"]: every installed one; None: the profile's
    profile: str | None = None
    overrides: Any = None  # xcam.chain.settings.Overrides (CAM layers, masks, boxes; not the method)
    bbox_csv: str | None = None
    targets: tuple[str, ...] = ()
    top_k: int = 1
    faithfulness: bool = True
    percentiles: tuple[int, ...] = DEFAULT_PERCENTILES
    sanity: bool = True
    sanity_steps: int = DEFAULT_STEPS
    sanity_images: int | None = 16
    sanity_threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    batch_size: int = 4
    forward_batch: int = 64
    backend: str = "torch"
    device: str = "cpu"
    random_init: bool = False
    weights_dir: str | None = None
    accept_changed: bool = False
    fail_fast: bool = False
    max_plugin_failures: int | None = None  # None: the chain's default (20); 0: never stop
    progress: bool = True


@dataclass
class Row:
    """What one (method, model) reached; ``errors`` are one line each (image: problem)."""

    method: str
    model: str
    route: str = ""
    images_ok: int = 0
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    records: list[Any] = field(default_factory=list, repr=False)  # protocol.BoxRecord
    road: list[Any] = field(default_factory=list, repr=False)  # faithfulness.RoadScore
    steps: list[dict[str, Any]] = field(default_factory=list)  # sanity, per cascade step
    maps: dict[tuple[int, int], tuple[np.ndarray, Any]] = field(default_factory=dict, repr=False)

    def localization(self) -> dict[str, Any] | None:
        """Class-mean pointing and T(IoBB>0.25) of the evaluated boxes (protocol.py's rows)."""
        from xcam.evaluation.protocol import class_row, mean_row

        evaluated = [r for r in self.records if r.evaluated]
        if not evaluated:
            return None
        by_class: dict[str, list[Any]] = defaultdict(list)
        for r in evaluated:
            by_class[r.label].append(r)
        mean = mean_row({c: class_row(rs) for c, rs in by_class.items()})
        return {"pointing": mean["pointing"], "iobb_0.25": mean["iobb"]["0.25"], "n_boxes": mean["n_boxes"],
                "classes": len(by_class)}

    def faithfulness(self) -> dict[str, Any] | None:
        if not self.road:
            return None
        return {"morf": float(np.mean([s.morf_mean for s in self.road])),
                "lerf": float(np.mean([s.lerf_mean for s in self.road])),
                "combined": float(np.mean([s.combined for s in self.road])), "n": len(self.road)}

    def sanity(self, threshold: float) -> dict[str, Any] | None:
        from xcam.evaluation.sanity import flagged

        if not self.steps:
            return None
        final = self.steps[-1]
        return {"spearman": final["spearman"], "ssim": final["ssim"], "n": final["n"],
                "flagged": flagged(final["spearman"], threshold), "threshold": threshold, "steps": self.steps}

    def ms_per_image(self) -> float | None:
        """The chain's time for this method per image: classification, CAMs, masks and boxes."""
        if not self.images_ok:
            return None
        return 1000.0 * sum(self.seconds[k] for k in ("model", "cam", "mask_box")) / self.images_ok

    def as_dict(self, threshold: float) -> dict[str, Any]:
        n_ok = max(self.images_ok, 1)
        return {
            "method": self.method, "model": self.model, "route": self.route, "images_ok": self.images_ok,
            "images_failed": len(self.errors), "errors": list(self.errors), "stopped": self.stopped,
            "localization": self.localization(), "faithfulness": self.faithfulness(),
            "sanity": self.sanity(threshold), "ms_per_image": self.ms_per_image(),
            "faithfulness_ms_per_image": 1000.0 * self.seconds["faithfulness"] / n_ok if self.road else None,
            "sanity_seconds": self.seconds["sanity"] if self.steps else None,
        }


@dataclass
class SaliencyResult:
    rows: list[Row]
    unreadable: dict[str, str]
    settings: "ChainSettings"
    config: SaliencyConfig
    images: int
    models: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Failed rows and unreadable images (the exit code counts them)."""
        return len(self.unreadable) + sum(len(r.errors) + bool(r.stopped) for r in self.rows)

    def summary(self) -> dict[str, Any]:
        from dataclasses import asdict

        config = {k: v for k, v in asdict(self.config).items() if k not in ("inputs", "overrides")}
        return {
            "images": self.images, "unreadable": dict(self.unreadable), "models": self.models,
            "settings": self.settings.as_dict(), "config": config,
            "rows": [r.as_dict(self.config.sanity_threshold) for r in self.rows],
        }


def resolve_methods(pm: Any, methods: Sequence[str] | None) -> list[str | None]:
    """``None`` → ``[None]`` (the profile's method); ``["all"]`` → every installed CAM-method plugin
    (sorted); names are checked (one line listing the installed ones)."""
    if not methods:
        return [None]
    if any(m.lower() == ALL for m in methods):
        if len(methods) > 1:
            raise UsageError("--methods all cannot be combined with method names")
        return sorted(pm.cam_methods())
    out = []
    for name in methods:
        out.append(pm.cam_method(name).name)
    if len(set(out)) != len(out):
        raise UsageError(f"--methods: a method is listed twice ({', '.join(methods)})")
    return out


def _chain_for(pm: Any, config: SaliencyConfig, settings: "ChainSettings", method: str | None) -> "Chain":
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.settings import ClassChoice, Overrides, apply_overrides
    from xcam.core.weights import WeightsStore

    if method is not None:
        settings = apply_overrides(settings, Overrides(method=method))
    store = WeightsStore.from_env(config.weights_dir, accept_changed=config.accept_changed)
    choice = ClassChoice(targets=tuple(config.targets), top_k=config.top_k, threshold=0.0, ground_truth=True)
    limits: dict[str, Any] = {"fail_fast": config.fail_fast}
    if config.max_plugin_failures is not None:
        limits["max_plugin_failures"] = config.max_plugin_failures or None
    return build_chain(pm, config.models, settings, choice, weights=config.weights, store=store,
                       load=LoadOptions(backend=config.backend, device=config.device,
                                        random_init=config.random_init, seed=config.seed), **limits)


def _record(row: Row, gts: Sequence[Any], result: "ImageResult", findings: Sequence[Any]) -> None:
    """One protocol record per ground-truth box, from this model's own finding of its class."""
    from xcam.core.labels import label_key
    from xcam.evaluation.run import record_of

    own = {label_key(f.pathology): f for f in findings}
    for gt in gts:
        row.records.append(record_of(gt, result, own))


def _faithfulness(row: Row, chain: "Chain", m: int, items: Sequence["Prepared"], results: Sequence["ImageResult"],
                  config: SaliencyConfig, offset: int) -> None:
    """ROAD of every finding of model ``m`` in this batch (one batched scoring for all of them)."""
    model = chain.models[m]
    clf = model.classifier
    shape = (int(clf.input_size), str(clf.preprocessing))
    images, cams, classes, where = [], [], [], []
    for item, result in zip(items, results):
        if result.error is not None:
            continue
        for f in result.results[m].findings:
            images.append(item.inputs[shape])
            cams.append(to_model_space(f.cam, result.grid, shape[0]))
            classes.append(f.class_index)
            where.append(f"{item.path} ({f.pathology})")
    if not images:
        return
    start = time.perf_counter()
    try:
        scores = chain.guard.call("classifier", clf.name, road, clf.logits, images, cams, classes,
                                  config.percentiles, seed=config.seed + offset, forward_batch=config.forward_batch)
    except Exception as exc:  # noqa: BLE001 - this batch's faithfulness only
        if config.fail_fast:
            raise
        from xcam.chain.engine import describe_error

        row.errors.extend(f"{w}: faithfulness: {describe_error(exc)}" for w in where)
        return
    finally:
        row.seconds["faithfulness"] += time.perf_counter() - start
    row.road.extend(scores)


def _run_method(pm: Any, config: SaliencyConfig, settings: "ChainSettings", method: str | None,
                prepared: Sequence["Prepared"], boxes: dict[str, list[Any]], keep: int) -> tuple["Chain", list[Row]]:
    """The chain with ``method`` over every prepared image: localization, ROAD, trained maps kept for
    the sanity check (the first ``keep`` images that succeeded)."""
    from xcam.chain.guard import PluginGaveUp
    from xcam.chain.engine import batched

    chain = _chain_for(pm, config, settings, method)
    rows = [Row(method or chain.settings.cam_for(m.name).method, m.ref.key) for m in chain.models]
    kept = 0
    stopped: str | None = None
    index = {id(item): i for i, item in enumerate(prepared)}
    for start, items in enumerate(batched(prepared, config.batch_size)):
        if stopped is not None:
            for row in rows:
                row.errors.extend(f"{item.path}: not computed ({method} stopped)" for item in items)
            continue
        try:
            results = chain.run(items)
        except PluginGaveUp as exc:
            stopped, results = str(exc), list(exc.done)
            for row in rows:
                row.stopped = stopped
                row.errors.extend(f"{item.path}: not computed ({method} stopped)" for item in items[len(results):])
            items = items[: len(results)]
        for m, row in enumerate(rows):
            if not row.route and any(r.error is None for r in results):
                row.route = chain.plan(chain.models[m]).label  # decided by the batch just run
        for b, (item, result) in enumerate(zip(items, results)):
            if result.error is not None:
                for row in rows:
                    row.errors.append(f"{item.path}: {result.error}")
                continue
            keep_this = kept < keep
            kept += keep_this
            for m, row in enumerate(rows):
                row.images_ok += 1
                for k, v in result.timings.seconds.items():
                    row.seconds[k] += v
                if boxes.get(Path(item.path).name):
                    _record(row, boxes[Path(item.path).name], result, result.results[m].findings)
                if keep_this:
                    for f in result.results[m].findings:
                        row.maps[(index[id(item)], f.class_index)] = (f.cam, result.grid)
        if config.faithfulness:
            for m, row in enumerate(rows):
                _faithfulness(row, chain, m, items, results, config, start * config.batch_size)
    return chain, rows


def _sanity(pm: Any, chain: "Chain", jobs: Sequence[tuple[Row, "Chain", int]], prepared: Sequence["Prepared"],
            config: SaliencyConfig) -> None:
    """Cascading randomization of each model; every method's maps (``jobs``: its row, its chain,
    the model's index) recomputed at every step."""
    import torch

    from xcam.chain.cams import normalize
    from xcam.evaluation import sanity as S

    by_model: dict[int, list[tuple[Row, "Chain"]]] = defaultdict(list)
    for row, row_chain, m in jobs:
        by_model[m].append((row, row_chain))
    for m, members in by_model.items():
        model = chain.models[m]
        clf = model.classifier
        shape = (int(clf.input_size), str(clf.preprocessing))
        indices = sorted({i for row, _ in members for i, _ in row.maps})
        if not indices:
            continue
        net = model.autograd_model()
        device = next(net.parameters()).device
        example = torch.from_numpy(prepared[indices[0]].inputs[shape][None]).to(device)
        steps = S.cascade(net, example, config.sanity_steps)
        for step, work in S.randomized_copies(net, steps, config.seed):
            random_model = S.randomized_model(model, work, pm)
            for row, row_chain in members:
                start = time.perf_counter()
                plan = row_chain.plan(row_chain.models[m])
                ensembler = row_chain.ensembler
                values = []
                for i in indices:
                    pairs = [c for (j, c) in row.maps if j == i]
                    if not pairs:
                        continue
                    item = prepared[i]
                    try:
                        maps = S.model_space_maps(random_model, item.inputs[shape][None], [(0, c) for c in pairs],
                                                  plan, pm, row_chain.guard, ensembler)
                    except Exception as exc:  # noqa: BLE001 - this image's sanity only
                        if config.fail_fast:
                            raise
                        from xcam.chain.engine import describe_error

                        row.errors.append(f"{item.path}: sanity step {step.index}: {describe_error(exc)}")
                        continue
                    for c, model_map in zip(pairs, maps):
                        trained, grid = row.maps[(i, c)]
                        randomized = normalize(grid.from_model(model_map))
                        values.append((S.spearman(trained, randomized), S.ssim(trained, randomized)))
                row.seconds["sanity"] += time.perf_counter() - start
                row.steps.append({
                    "step": step.index, "randomized_down_to": step.label, "layers": len(step.modules),
                    "spearman": float(np.mean([v[0] for v in values])) if values else None,
                    "ssim": float(np.nanmean([v[1] for v in values])) if values else None,
                    "n": len(values),
                })


def run_saliency(config: SaliencyConfig, pm: Any = None) -> SaliencyResult:
    """Every method over the inputs (see the module docs); no files written (see
    :mod:`xcam.evaluation.saliency_report`)."""
    from xcam.chain.engine import prepare
    from xcam.chain.settings import resolve_settings
    from xcam.core.manager import get_plugin_manager
    from xcam.core.nih import read_boxes
    from xcam.core.progress import progress_bar

    pm = pm or get_plugin_manager()
    if not config.inputs:
        raise UsageError("no images to evaluate")
    if not config.percentiles or any(not 0 < int(p) < 100 for p in config.percentiles):
        raise UsageError(f"ROAD percentiles must lie strictly between 0 and 100, not {list(config.percentiles)}")
    settings = resolve_settings(pm, config.profile, config.overrides)
    methods = resolve_methods(pm, config.methods)
    boxes: dict[str, list[Any]] = defaultdict(list)
    if config.bbox_csv:
        for gt in read_boxes(config.bbox_csv):
            boxes[gt.image].append(gt)
    first = _chain_for(pm, config, settings, methods[0])  # loads the models once (cached for the others)
    table = {name: [(g.label, g.box) for g in gts] for name, gts in boxes.items()}
    prepared, unreadable = [], {}
    for path in config.inputs:
        item = prepare(path, first.shapes, False, table.get(Path(path).name, ()))
        if item.error is not None:
            unreadable[str(path)] = item.error
        else:
            prepared.append(item)
    if not prepared:
        raise UsageError(f"no readable image among the {len(config.inputs)} given "
                         f"(first: {next(iter(unreadable.items()))[0]}: {next(iter(unreadable.values()))})")
    # warm-up on one image (the backend's and autograd's first-call costs), so that ms/image compares
    # methods fairly: Grad-CAM where installed (cheap), else the first method
    warm = "gradcam" if "gradcam" in pm.cam_methods() else methods[0]
    _chain_for(pm, config, settings, warm).run(prepared[:1])
    keep = len(prepared) if config.sanity_images is None else int(config.sanity_images)
    keep = keep if config.sanity else 0
    rows: list[Row] = []
    sanity_jobs = []
    chain = first
    with progress_bar(total=len(methods), desc="methods", enabled=config.progress, unit="method") as bar:
        for method in methods:
            chain, method_rows = _run_method(pm, config, settings, method, prepared, boxes, keep)
            rows.extend(method_rows)
            sanity_jobs.extend((row, chain, m) for m, row in enumerate(method_rows))
            bar.update(1)
    if keep:
        _sanity(pm, chain, sanity_jobs, prepared, config)
    for row in rows:
        row.maps.clear()
    models = [{"name": m.ref.key, "weights": m.classifier.variant, "backend": m.classifier.backend,
               "input_size": m.classifier.input_size} for m in chain.models]
    return SaliencyResult(rows, unreadable, settings, config, len(config.inputs), models)
