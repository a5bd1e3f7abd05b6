"""The single-machine streaming engine.

A pool (threads by default: OpenCV and NumPy release the GIL while decoding and resizing)
decodes and preprocesses ahead of the model (:func:`xcam.chain.engine.prepare`) through a
bounded, order-keeping queue of futures; the calling thread runs the chain batch by batch
(:meth:`xcam.score.scorer.Scorer.score`) and writes each batch durably before the next.
At most ``max_inflight`` inputs are held at once, however many inputs stream in.
Decoding threads share this process's DICOM reading (``--dicom-voi``); worker processes do not,
so the pool hands them the same :class:`~xcam.core.imageio.DicomReadOptions` when they start.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from xcam.chain.engine import Prepared, decode_ahead
from xcam.chain.guard import PluginGaveUp
from xcam.core.imageio import DicomReadOptions, dicom_options, set_dicom_options
from xcam.score.schema import OK, Row
from xcam.score.scorer import Shape

if TYPE_CHECKING:  # pragma: no cover
    from xcam.score.scorer import Scorer

POOLS = ("thread", "process")


@dataclass
class EngineStats:
    """Counts of one engine run (``peak_inflight``: most inputs held at once)."""

    ok: int = 0
    failed: int = 0
    batches: int = 0
    peak_inflight: int = 0


def make_pool(kind: str, workers: int, dicom: DicomReadOptions | None = None) -> cf.Executor:
    """A decoding pool of ``workers`` threads or processes; processes read DICOM as ``dicom`` says
    (default: as this process does now), since a process-wide setting does not reach them."""
    if kind == "process":
        # forkserver: never fork a process that already runs torch/OpenMP threads
        return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                      initializer=set_dicom_options, initargs=(dicom or dicom_options(),))
    if kind != "thread":
        raise ValueError(f"unknown pool {kind!r}; use one of {POOLS}")
    return cf.ThreadPoolExecutor(workers, thread_name_prefix="xcam-decode")


def prepared_stream(
    paths: Iterator[str], shapes: Sequence[Shape], pool: cf.Executor, max_inflight: int, stats: EngineStats
) -> Iterator[Prepared]:
    """Prepared inputs in input order, never more than ``max_inflight`` submitted and not yet taken
    (the chain's :func:`~xcam.chain.engine.decode_ahead`, with the peak recorded in ``stats``)."""
    def peak(length: int) -> None:
        stats.peak_inflight = max(stats.peak_inflight, length)

    return decode_ahead(paths, shapes, pool, max_inflight, on_queue=peak)


def run_local(
    paths: Iterator[str],
    scorer: "Scorer",
    write: Callable[[Sequence[Row]], None],
    *,
    batch_size: int = 16,
    workers: int = 2,
    pool: str = "thread",
    max_inflight: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    dicom: DicomReadOptions | None = None,
) -> EngineStats:
    """Score every path: decode ahead in ``pool``, infer in batches, ``write`` each batch
    (``dicom``: how worker processes read DICOM; default: as this process does)."""
    stats = EngineStats()
    inflight = max_inflight or 2 * batch_size + 2 * workers
    with make_pool(pool, workers, dicom) as executor:
        batch: list[Prepared] = []
        stream = prepared_stream(paths, scorer.shapes, executor, inflight, stats)
        while True:
            item = next(stream, None)
            if item is not None:
                batch.append(item)
            if batch and (item is None or len(batch) >= batch_size):
                try:
                    rows, stop = scorer.score(batch), None
                except PluginGaveUp as exc:  # write what was finished, then stop the job
                    rows, stop = getattr(exc, "rows", []), exc
                write(rows)
                ok = sum(1 for r in rows if r["status"] == OK)
                stats.ok += ok
                stats.failed += len(rows) - ok
                stats.batches += 1
                if on_batch is not None:
                    on_batch(ok, len(rows) - ok)
                if stop is not None:
                    raise stop
                batch = []
            if item is None:
                return stats
