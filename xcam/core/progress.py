"""Progress for long loops that reads well anywhere: a tqdm bar on a terminal, and without one
(a log file, a pipe, CI) a plain line every few percent — never carriage returns."""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Iterable, Iterator, TypeVar

from tqdm import tqdm  # noqa: F401 - tqdm.write prints a line without breaking a bar (re-exported)

T = TypeVar("T")

LOG_STEP_PERCENT = 10
"""Without a terminal: one line per this many percent (and at the end)."""
LOG_MIN_SECONDS = 2.0
"""...but never more often than this, except for the last line."""


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress:
    """tqdm's ``update``/``set_postfix``/``close``/``write`` surface, printing plain lines."""

    def __init__(self, total: int | None, desc: str, stream: IO[str], unit: str = "it") -> None:
        self.total, self.desc, self.stream, self.unit = total, desc, stream, unit
        self.n = 0
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_step = -1
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total:
            step = int(100 * self.n / self.total) // LOG_STEP_PERCENT
            now = time.monotonic()
            if step > self._last_step and (now - self._last_time >= LOG_MIN_SECONDS or self.n >= self.total):
                self._last_step, self._last_time = step, now
                self._emit()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def _emit(self) -> None:
        elapsed = time.monotonic() - self._start
        if self.total:
            head = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            head = f"{self.desc}: {self.n} {self.unit}"
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{head} in {elapsed:.0f} s{tail}", file=self.stream, flush=True)

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.total and self._last_step < (100 * self.n // max(self.total, 1)) // LOG_STEP_PERCENT:
                self._emit()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Off(LineProgress):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self._closed = True


def progress_bar(total: int | None = None, desc: str = "", *, enabled: bool = True, unit: str = "it",
                 stream: IO[str] | None = None, leave: bool = False) -> Any:
    """A progress object with tqdm's interface: a bar on a terminal, lines otherwise, nothing when
    ``enabled`` is false. Use as a context manager or call ``close()``."""
    stream = stream or sys.stderr
    if not enabled:
        return _Off(total, desc, stream, unit)
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave)
    return LineProgress(total, desc, stream, unit)


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", *, enabled: bool = True,
          unit: str = "it", stream: IO[str] | None = None) -> Iterator[T]:
    """``for x in track(items, desc=...)``: :func:`progress_bar` around an iterable."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_bar(total, desc, enabled=enabled, unit=unit, stream=stream) as bar:
        for item in iterable:
            yield item
            bar.update(1)
