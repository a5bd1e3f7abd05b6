"""Errors that the CLI reports as one clear line (no traceback unless ``--debug``)."""

from __future__ import annotations

from pathlib import Path


class XcamError(Exception):
    """Base class: its message is shown to the user as it is, on one line."""


class ImageLoadError(XcamError):
    """An input image could not be read: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class WeightsError(XcamError):
    """A weight file is missing, unsafe, or changed since it was first trusted."""


class WeightsMissingError(WeightsError):
    """A weight file is absent and could not be downloaded."""

    def __init__(self, filename: str, url: str | None, places: list[Path], reason: str = "") -> None:
        self.filename = filename
        self.url = url
        self.places = places
        where = places[0] if places else Path(filename)
        fetch = f" from {url}" if url else ""
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"weights file {filename} not found and could not be downloaded{why}: "
            f"download it{fetch} and place it at {where / filename} "
            f"(or in the folder given by --weights-dir / XCAM_WEIGHTS_DIR)"
        )


class UnsafeWeightsError(WeightsError):
    """A checkpoint needs a class outside the allowlist (it could run code when unpickled)."""


class ChangedWeightsError(WeightsError):
    """A weight file's sha256 differs from the one recorded at its first successful load."""


class PluginError(XcamError):
    """A plugin is unknown, misconfigured or in conflict with another."""


class UsageError(XcamError):
    """A bad argument value (unknown class name, malformed ground truth, ...)."""
