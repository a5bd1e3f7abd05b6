"""Progress bar (tqdm: images/s and ETA) and the run's summary.

The total is unknown while inputs stream, so a background thread counts them (a second, cheap
enumeration) and sets the bar's total when it is done; until then the bar shows count and rate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable


class Progress:
    """A tqdm bar on stderr; ``enabled=None`` shows it only on a terminal."""

    def __init__(self, enabled: bool | None = None, count: Callable[[], Iterable[Any]] | None = None,
                 already_done: int = 0) -> None:
        from tqdm import tqdm

        self.ok = 0
        self.failed = 0
        self._bar = tqdm(total=None, unit="img", dynamic_ncols=True, smoothing=0.1, mininterval=0.5,
                         disable=(None if enabled is None else not enabled), desc="scoring")
        self._already_done = already_done
        if count is not None and not self._bar.disable:
            threading.Thread(target=self._count, args=(count,), daemon=True, name="xcam-count").start()

    def _count(self, count: Callable[[], Iterable[Any]]) -> None:
        try:
            n = sum(1 for _ in count())
        except Exception:  # counting is cosmetic: never fail the job for it
            return
        self._bar.total = max(n - self._already_done, self._bar.n)
        self._bar.refresh()

    def update(self, ok: int, failed: int) -> None:
        self.ok += ok
        self.failed += failed
        self._bar.update(ok + failed)
        if failed or self.failed:
            self._bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        if self._bar.total is not None and self._bar.n < self._bar.total:
            self._bar.total = self._bar.n
        self._bar.close()


@dataclass
class Summary:
    """What a run did, and what the output holds in total."""

    output: str
    engine: str
    backends: list[str]
    new_ok: int = 0
    new_failed: int = 0
    skipped: int = 0
    previous_ok: int = 0
    previous_failed: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.previous_ok + self.new_ok

    @property
    def failed(self) -> int:
        return self.previous_failed + self.new_failed

    @property
    def scored(self) -> int:
        return self.new_ok + self.new_failed

    @property
    def images_per_s(self) -> float:
        return self.scored / self.wall_s if self.wall_s > 0 else 0.0

    def text(self) -> str:
        line = (f"scored {self.scored} images in {self.wall_s:.1f} s ({self.images_per_s:.1f} images/s, "
                f"{self.engine}, {', '.join(sorted(set(self.backends)))}): ok {self.new_ok}, failed {self.new_failed}")
        if self.skipped:
            line += f"; skipped {self.skipped} already in the output"
        line += f". {self.output}: {self.ok + self.failed} rows, ok {self.ok}, failed {self.failed}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output, "engine": self.engine, "backends": sorted(set(self.backends)),
            "scored": self.scored, "new_ok": self.new_ok, "new_failed": self.new_failed, "skipped": self.skipped,
            "ok": self.ok, "failed": self.failed, "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.images_per_s, 3),
        }


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
