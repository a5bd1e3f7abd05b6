"""The one JSON writer: atomic (temporary file + rename), NumPy scalars and paths allowed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _default(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())  # NumPy scalar
    if hasattr(value, "tolist"):
        return _finite(value.tolist())  # NumPy array
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN and infinities → ``None`` (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]

    return value


def dumps(data: Any, indent: int | None = 2) -> str:
    """JSON text of ``data`` (NaN/inf → null, NumPy values converted)."""
    return json.dumps(_finite(data), indent=indent, default=_default)


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` to ``path`` atomically: a reader never sees half a file, a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dumps(data, indent) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; :class:`xcam.core.errors.XcamError` naming the file when it is missing or invalid."""
    from xcam.core.errors import XcamError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise XcamError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XcamError(f"{path}: not valid JSON ({exc})") from None
