"""Incremental, crash-safe result writers (CSV, JSONL, Parquet) with resume.

Every :meth:`ResultWriter.write` call appends one batch and makes it durable (``flush`` +
``fsync``) before it returns; a row counts as done only once it is complete on disk.

* **CSV / JSONL** — one file, appended a batch at a time. A ``kill -9`` can at worst leave one
  torn last line; on resume it is cut off (and :func:`read_rows` ignores it), then the rest of
  the inputs are appended.
* **Parquet** — a directory ``results.parquet/`` of ``part-NNNNNN.parquet`` files (a normal
  Parquet dataset: ``pandas.read_parquet("results.parquet")``). Rows are journalled per batch in
  a hidden ``.pending-NNNNNN.jsonl`` and committed as part ``NNNNNN`` by write-to-hidden-temp +
  ``fsync`` + rename every ``part_rows`` rows / ``part_seconds`` seconds and at the end. A journal
  whose part already exists is stale (the crash came between rename and delete) and is dropped;
  any other journal is committed on resume. Readers never see a partial part.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from xcam.core.errors import UsageError
from xcam.score.inputs import PathSet
from xcam.score.schema import OK, PATH, STATUS, Row, Schema

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PART_RE = re.compile(r"^part-(\d{6})\.parquet$")
JOURNAL_RE = re.compile(r"^\.pending-(\d{6})\.jsonl$")


@dataclass
class ResumeState:
    """What an existing output already holds."""

    done: PathSet = field(default_factory=PathSet)
    ok: int = 0
    failed: int = 0
    truncated_bytes: int = 0  # a torn last line cut off on resume

    def add(self, path: str, status: Any) -> None:
        if self.done.add(path):
            if status == OK:
                self.ok += 1
            else:
                self.failed += 1


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--output {path}: unknown format; use .csv, .jsonl or .parquet")
    return FORMATS[suffix]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fh: IO[bytes], what: Path) -> None:
    """Refuse a second writer on the same output (the lock dies with the process)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"{what}: another xcam score run is writing this output") from None


def _iter_lines(fh: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """``(line, end offset)`` for every line of a binary file, the last possibly without ``\\n``."""
    offset = 0
    for line in fh:
        offset += len(line)
        yield line, offset


class ResultWriter:
    """Base class: ``open`` (resume or start over) → ``write`` batches → ``close``."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        self.path = Path(path)
        self.schema = schema
        self.columns = schema.columns
        self.rows_written = 0

    def open(self, resume: bool = True) -> ResumeState:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, rows: Sequence[Row]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_columns(self, found: Sequence[str]) -> None:
        if list(found) != self.columns:
            missing = [c for c in self.columns if c not in found]
            extra = [c for c in found if c not in self.columns]
            detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else "column order"
            raise UsageError(
                f"{self.path}: existing results have other columns ({detail}); "
                "use the same models and options to resume, or --no-resume / another --output"
            )


class _AppendWriter(ResultWriter):
    """Shared by CSV and JSONL: one append-only file, fsync per batch."""

    _fh: IO[bytes] | None = None

    def open(self, resume: bool = True) -> ResumeState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = ResumeState()
        fh = open(self.path, "a+b")
        try:
            _lock(fh, self.path)
            if not resume:
                fh.truncate(0)
            fh.seek(0)
            good_end = self._scan(fh, state)
            size = fh.seek(0, os.SEEK_END)
            if good_end < size:
                state.truncated_bytes = size - good_end
                fh.truncate(good_end)
            if good_end == 0:
                self._start(fh)
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            raise
        _fsync_dir(self.path.parent)
        self._fh = fh
        return state

    def _scan(self, fh: IO[bytes], state: ResumeState) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _start(self, fh: IO[bytes]) -> None:
        """Write whatever an empty file starts with (the CSV header)."""

    def _encode(self, rows: Sequence[Row]) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        assert self._fh is not None, "open() first"
        self._fh.write(self._encode(rows))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows_written += len(rows)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class CsvWriter(_AppendWriter):
    """CSV with a header row; empty fields for missing values; floats in shortest round-trip form."""

    def _encode(self, rows: Sequence[Row]) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow([_csv_text(row.get(c)) for c in self.columns])
        return buf.getvalue().encode("utf-8", "surrogateescape")

    def _start(self, fh: IO[bytes]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self.columns)
        fh.write(buf.getvalue().encode("utf-8"))

    def _scan(self, fh: IO[bytes], state: ResumeState) -> int:
        good_end = 0
        header_seen = False
        for record, end in _csv_records(fh):
            fields = next(csv.reader([record.decode("utf-8", "surrogateescape")]), [])
            if not header_seen:
                self._check_columns(fields)
                header_seen = True
            else:
                if len(fields) != len(self.columns):
                    raise UsageError(f"{self.path}: a row with {len(fields)} fields instead of {len(self.columns)}")
                state.add(fields[0], fields[1])
            good_end = end
        return good_end


def _csv_records(fh: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """Complete CSV records (``\\n``-terminated, quotes balanced) and their end offsets."""
    pending = b""
    quotes = 0
    for line, end in _iter_lines(fh):
        pending += line
        quotes += line.count(b'"')
        if line.endswith(b"\n") and quotes % 2 == 0:
            yield pending, end
            pending, quotes = b"", 0


class JsonlWriter(_AppendWriter):
    """One JSON object a line, keys in column order; ``null`` for missing values."""

    def _encode(self, rows: Sequence[Row]) -> bytes:
        lines = [json.dumps({c: row.get(c) for c in self.columns}, allow_nan=False) for row in rows]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _scan(self, fh: IO[bytes], state: ResumeState) -> int:
        good_end = 0
        first = True
        for line, end in _iter_lines(fh):
            if not line.endswith(b"\n"):
                break
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    raise UsageError(f"{self.path}: a complete line is not JSON; not written by xcam score?") from None
                if first:
                    self._check_columns(list(record))
                    first = False
                state.add(record[PATH], record[STATUS])
            good_end = end
        return good_end


class ParquetDirWriter(ResultWriter):
    """A directory of Parquet parts, journalled per batch (see the module docstring)."""

    def __init__(self, path: str | Path, schema: Schema, part_rows: int = 4096, part_seconds: float = 60.0) -> None:
        super().__init__(path, schema)
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self._next = 0
        self._journal: IO[bytes] | None = None
        self._journal_rows = 0
        self._journal_started = 0.0
        self._lock_fh: IO[bytes] | None = None

    # -- layout ----------------------------------------------------------------------------
    def _part(self, n: int) -> Path:
        return self.path / f"part-{n:06d}.parquet"

    def _journal_path(self, n: int) -> Path:
        return self.path / f".pending-{n:06d}.jsonl"

    # -- open / resume ---------------------------------------------------------------------
    def open(self, resume: bool = True) -> ResumeState:
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.path}: exists and is a file; Parquet output is a directory of parts")
        if self.path.exists() and not resume:
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / ".lock", "a+b")
        try:
            return self._resume()
        except BaseException:
            self._lock_fh.close()
            self._lock_fh = None
            raise

    def _resume(self) -> ResumeState:
        assert self._lock_fh is not None
        _lock(self._lock_fh, self.path)
        state = ResumeState()
        for tmp in self.path.glob(".part-*.tmp"):
            tmp.unlink()
        parts = sorted(int(m.group(1)) for p in self.path.iterdir() if (m := PART_RE.match(p.name)))
        for n in parts:
            self._scan_part(self._part(n), state)
        journals = sorted(int(m.group(1)) for p in self.path.iterdir() if (m := JOURNAL_RE.match(p.name)))
        for n in journals:
            if n in parts:
                self._journal_path(n).unlink()  # committed already; the crash came before the delete
                continue
            rows = list(_read_jsonl(self._journal_path(n)))
            if rows:
                self._commit_rows(n, rows)
                parts.append(n)
                for row in rows:
                    state.add(row[PATH], row[STATUS])
            self._journal_path(n).unlink()
        self._next = max(parts + journals, default=-1) + 1
        _fsync_dir(self.path)
        return state

    def _clear(self) -> None:
        """``--no-resume``: remove an earlier run's parts (only files this writer makes)."""
        ours = [p for p in self.path.iterdir() if PART_RE.match(p.name) or JOURNAL_RE.match(p.name)
                or p.name in (".lock",) or (p.name.startswith(".part-") and p.name.endswith(".tmp"))]
        others = [p for p in self.path.iterdir() if p not in ours]
        if others:
            raise UsageError(f"{self.path}: holds files not written by xcam score ({others[0].name}); not removing it")
        shutil.rmtree(self.path)

    def _scan_part(self, part: Path, state: ResumeState) -> None:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(part)
        self._check_columns(pf.schema_arrow.names)
        for batch in pf.iter_batches(columns=[PATH, STATUS], batch_size=65536):
            for path, status in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                state.add(path, status)

    # -- writing ---------------------------------------------------------------------------
    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self._journal is None:
            self._journal = open(self._journal_path(self._next), "ab")
            self._journal_rows = 0
            self._journal_started = time.monotonic()
            _fsync_dir(self.path)
        lines = [json.dumps({c: row.get(c) for c in self.columns}, allow_nan=False) for row in rows]
        self._journal.write(("\n".join(lines) + "\n").encode("utf-8"))
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._journal_rows += len(rows)
        self.rows_written += len(rows)
        if self._journal_rows >= self.part_rows or time.monotonic() - self._journal_started >= self.part_seconds:
            self._flush_journal()

    def _flush_journal(self) -> None:
        if self._journal is None:
            return
        self._journal.close()
        self._journal = None
        journal = self._journal_path(self._next)
        rows = list(_read_jsonl(journal))
        if rows:
            self._commit_rows(self._next, rows)
        journal.unlink()
        _fsync_dir(self.path)
        self._next += 1

    def _commit_rows(self, n: int, rows: Sequence[Row]) -> None:
        """Write part ``n`` atomically: hidden temp file, fsync, rename, fsync the directory."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = [{c: r.get(c) for c in self.columns} for r in rows]
        table = pa.Table.from_pylist(records, schema=self.schema.arrow_schema())
        tmp = self.path / f".part-{n:06d}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self._part(n))
        _fsync_dir(self.path)

    def close(self) -> None:
        self._flush_journal()
        if self.path.is_dir() and not any(PART_RE.match(p.name) for p in self.path.iterdir()):
            self._commit_rows(self._next, [])  # an empty part, so the dataset still has a schema
            self._next += 1
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None


def _read_jsonl(path: Path) -> Iterator[Row]:
    """Complete lines of a JSONL file (a torn last line is ignored)."""
    with open(path, "rb") as fh:
        for line, _ in _iter_lines(fh):
            if line.endswith(b"\n") and line.strip():
                yield json.loads(line)


def open_writer(path: str | Path, schema: Schema, **options: Any) -> ResultWriter:
    """The writer for ``path``'s format (by suffix)."""
    kind = output_format(path)
    if kind == "csv":
        return CsvWriter(path, schema)
    if kind == "jsonl":
        return JsonlWriter(path, schema)
    return ParquetDirWriter(path, schema, **options)


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a results file in any format, typed as written (floats, ``None`` for missing).

    Torn last lines (a run killed mid-write) are skipped, as on resume.
    """
    path = Path(path)
    kind = output_format(path)
    if kind == "jsonl":
        yield from _read_jsonl(path)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        parts = sorted(p for p in path.iterdir() if PART_RE.match(p.name))
        for part in parts:
            yield from pq.read_table(part).to_pylist()
    else:
        with open(path, "rb") as fh:
            records = _csv_records(fh)
            first = next(records, None)
            if first is None:
                return
            header = next(csv.reader([first[0].decode("utf-8")]))
            for record, _ in records:
                fields = next(csv.reader([record.decode("utf-8", "surrogateescape")]))
                yield {c: _csv_value(c, v) for c, v in zip(header, fields)}


def _csv_value(column: str, text: str) -> Any:
    if column in (PATH, STATUS):
        return text
    if text == "":
        return None
    if ":" in column:
        return float(text)
    return text
