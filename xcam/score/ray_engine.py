"""The Ray Data engine: the same :func:`~xcam.chain.engine.prepare` and
:class:`~xcam.score.scorer.Scorer` (one chain per actor), run as a streaming Ray Data pipeline.

The driver streams the pending paths (already filtered by the resume rule) in windows of
``window`` paths; each window is a dataset ``from_items → map_batches(prepare) →
map_batches(ScoreActor)`` (a callable class: one model session per actor, ``concurrency``
actors), and its result batches stream back to the driver, which writes them with the same
writer as the local engine. Images must be readable at the same path on every node.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from xcam.chain.engine import Prepared, prepare
from xcam.core.errors import XcamError
from xcam.core.imageio import DicomReadOptions, set_dicom_options
from xcam.score.local import EngineStats
from xcam.score.schema import OK, Row
from xcam.score.scorer import ScoreOptions, Scorer, Shape

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

RAY_MISSING = "the Ray engine needs Ray Data: pip install 'xcam[ray]'"


def import_ray() -> Any:
    """``ray`` (with ``ray.data``), or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise XcamError(RAY_MISSING) from None
    return ray


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (a cluster) or start a local instance; ``True`` when we started it."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    for handler in logging.getLogger("ray.data").handlers:  # Ray Data's chatter → its log file only
        if "File" not in type(handler).__name__:
            handler.setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # xcam's own bar reports progress
    ctx.enable_operator_progress_bars = False
    return started


def prepare_batch(batch: dict[str, np.ndarray], shapes: Sequence[Shape], base: str = "",
                  dicom: DicomReadOptions | None = None) -> dict[str, np.ndarray]:
    """Ray stage 1: decode + preprocess a batch of paths into columns (zeros for failed inputs).

    Relative paths are read relative to ``base`` (the driver's working directory) but keep
    their original spelling in the ``path`` column (the resume key). DICOM is read as ``dicom``
    says (the driver's ``--dicom-voi``: a Ray worker never saw the command line)."""
    paths = [str(p) for p in batch["path"]]
    set_dicom_options(dicom or DicomReadOptions())  # this worker process reads DICOM as the driver does
    items = [prepare(os.path.join(base, p), shapes) for p in paths]
    out: dict[str, np.ndarray] = {
        "path": np.array(paths, dtype=object),
        "error": np.array([i.error or "" for i in items], dtype=object),
        "width": np.array([i.width for i in items], dtype=np.int64),
        "height": np.array([i.height for i in items], dtype=np.int64),
    }
    for name in ("pad_x", "pad_y"):  # the padding (original pixels) rebuilds the geometry on the actor
        out[name] = np.array([getattr(i.geometry, name) if i.geometry is not None else 0 for i in items],
                             dtype=np.int64)
    for k, (size, kind) in enumerate(shapes):
        zeros = np.zeros((1, size, size), dtype=np.float32)
        out[f"x{k}"] = np.stack([i.inputs.get((size, kind), zeros) for i in items])
    return out


def unpack_batch(batch: dict[str, np.ndarray], shapes: Sequence[Shape]) -> list[Prepared]:
    """The inverse of :func:`prepare_batch`: chain inputs (geometry included) from the columns."""
    from xcam.core.preprocess import Geometry

    items = []
    for j, path in enumerate(batch["path"]):
        error = str(batch["error"][j]) or None
        width, height = int(batch["width"][j]), int(batch["height"][j])
        if error:
            items.append(Prepared(str(path), error=error))
            continue
        inputs = {shape: np.asarray(batch[f"x{k}"][j], dtype=np.float32) for k, shape in enumerate(shapes)}
        geometry = Geometry(width, height, int(shapes[-1][0]), int(batch["pad_x"][j]), int(batch["pad_y"][j]))
        items.append(Prepared(str(path), width, height, inputs=inputs, geometry=geometry))
    return items


class ScoreActor:
    """Ray stage 2: one :class:`Scorer` (its chain: the models loaded once) per actor, a batch of
    rows per call."""

    def __init__(self, options: ScoreOptions) -> None:
        self.scorer = Scorer(options)
        self.shapes = self.scorer.shapes
        self.arrow = self.scorer.schema.arrow_schema()

    def __call__(self, batch: dict[str, np.ndarray]) -> "pa.Table":
        import pyarrow as pa

        rows = self.scorer.score(unpack_batch(batch, self.shapes))
        return pa.Table.from_pylist(rows, schema=self.arrow)


def _windows(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    while True:
        chunk = list(itertools.islice(paths, size))
        if not chunk:
            return
        yield chunk


def run_ray(
    paths: Iterator[str],
    options: ScoreOptions,
    shapes: Sequence[Shape],
    write: Callable[[Sequence[Row]], None],
    *,
    batch_size: int = 16,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    window: int = 20000,
    on_batch: Callable[[int, int], None] | None = None,
) -> EngineStats:
    """Score ``paths`` on the connected Ray cluster (see :func:`start_ray`)."""
    ray = import_ray()
    stats = EngineStats()
    if workers is None:  # half the cluster's CPUs reserved by model actors, the rest for decoding
        workers = max(1, int(float(ray.cluster_resources().get("CPU", 1)) // (2 * cpus_per_worker)))
    if options.threads is None:  # each actor infers with 2 threads (decoding is several times cheaper)
        options = dataclasses.replace(options, threads=max(1, round(2 * cpus_per_worker)))
    for chunk in _windows(paths, window):
        blocks = max(1, min(len(chunk) // batch_size, 1000))
        ds = ray.data.from_items([{"path": p} for p in chunk], override_num_blocks=blocks)
        ds = ds.map_batches(prepare_batch, fn_kwargs={"shapes": tuple(shapes), "base": os.getcwd(),
                                                      "dicom": options.dicom},
                            batch_size=batch_size, batch_format="numpy", num_cpus=0.5)
        ds = ds.map_batches(ScoreActor, fn_constructor_args=(options,), batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = table.to_pylist()
            write(rows)
            ok = sum(1 for r in rows if r["status"] == OK)
            stats.ok += ok
            stats.failed += len(rows) - ok
            stats.batches += 1
            stats.peak_inflight = max(stats.peak_inflight, len(chunk))
            if on_batch is not None:
                on_batch(ok, len(rows) - ok)
    return stats
