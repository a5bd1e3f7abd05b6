"""One scoring job: inputs → resume filter → engine → writer → summary (shared by both engines).

Resume rule: the writer reports the paths its output already holds; every input path is checked
against that compact set (and added to it) before it is submitted, so an input already in the
output, or listed twice, is never scored again. A row is in the output only once its batch is
durable, so a killed run resumes exactly where its last durable batch ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from xcam.core.errors import UsageError
from xcam.core.imageio import set_dicom_options
from xcam.score.inputs import PathSet, iter_inputs
from xcam.score.progress import Progress, Stopwatch, Summary
from xcam.score.scorer import ScoreOptions, Scorer, default_workers
from xcam.score.writers import open_writer, output_format

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.manager import XcamPluginManager

ENGINES = ("local", "ray")


@dataclass
class JobConfig:
    """A scoring job, as the CLI describes it."""

    input: str
    output: str
    options: ScoreOptions
    batch_size: int = 16
    workers: int | None = None
    resume: bool = True
    engine: str = "local"
    address: str | None = None
    pool: str = "thread"
    progress: bool | None = None
    max_inflight: int | None = None
    writer_options: dict = field(default_factory=dict)


class PendingPaths:
    """Input paths not yet in the output (and not seen before in this run), streamed."""

    def __init__(self, paths: Iterable[str], done: PathSet) -> None:
        self._paths = iter(paths)
        self.done = done
        self.skipped = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        for path in self._paths:
            if self.done.add(path):
                return path
            self.skipped += 1
        raise StopIteration


def run_job(config: JobConfig, paths: Iterable[str] | None = None, scorer: Scorer | None = None,
            pm: "XcamPluginManager | None" = None) -> Summary:
    """Run a job to the end and return its summary (``paths``/``scorer`` override the defaults: tests)."""
    if config.engine not in ENGINES:
        raise UsageError(f"--engine {config.engine}: use one of {', '.join(ENGINES)}")
    output_format(config.output)
    source = iter_inputs(config.input) if paths is None else paths
    started_ray = False
    if config.engine == "ray":
        from xcam.score.ray_engine import import_ray

        import_ray()  # fail fast, before loading any model
    scorer = scorer or Scorer(config.options, pm=pm)
    writer = open_writer(config.output, scorer.schema, **config.writer_options)
    state = writer.open(resume=config.resume)
    summary = Summary(config.output, config.engine, scorer.backends,
                      previous_ok=state.ok, previous_failed=state.failed)
    pending = PendingPaths(source, state.done)
    count = (lambda: iter_inputs(config.input)) if paths is None else None
    progress = Progress(config.progress, count=count, already_done=state.ok + state.failed)
    clock = Stopwatch()
    dicom = config.options.dicom  # --dicom-voi: this process's decoding threads, worker processes and Ray tasks
    previous_dicom = set_dicom_options(dicom)
    try:
        if config.engine == "local":
            from xcam.score.local import run_local

            run_local(pending, scorer, writer.write, batch_size=config.batch_size,
                      workers=config.workers or default_workers(), pool=config.pool,
                      max_inflight=config.max_inflight, on_batch=progress.update, dicom=dicom)
        else:
            from xcam.score.ray_engine import run_ray, start_ray

            started_ray = start_ray(config.address)
            run_ray(pending, config.options, scorer.shapes, writer.write, batch_size=config.batch_size,
                    workers=config.workers, on_batch=progress.update)
    finally:  # every written batch is already durable; close commits Parquet's journal
        set_dicom_options(previous_dicom)
        writer.close()
        progress.close()
        summary.new_ok, summary.new_failed = progress.ok, progress.failed
        summary.skipped = pending.skipped
        summary.wall_s = clock.elapsed()
        if started_ray:
            import ray

            ray.shutdown()
    return summary
