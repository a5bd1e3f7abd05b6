"""Uploaded files: size limit, safe names, and a per-session temporary folder.

Nothing a user uploads is written anywhere but the session's own folder, made with
:func:`tempfile.mkdtemp` and removed when the session object is garbage-collected (Streamlit drops
a session's state some time after its browser tab closes) or when the process exits. Only the
latest upload is kept. No Streamlit import here, so the rules are testable on their own.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from pathlib import Path

from xcam.core.errors import XcamError
from xcam.core.imageio import IMAGE_SUFFIXES, XrayImage, iter_image_files, load_image

UPLOAD_TYPES: tuple[str, ...] = tuple(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
"""Suffixes the uploader offers (PNG, JPEG, DICOM, BMP, TIFF)."""


class UploadError(XcamError):
    """An upload was refused (too large, empty, unsafe name); the message is shown as it is."""


def safe_filename(name: str, default: str = "upload") -> str:
    """A file name without folders or odd characters: ``"../a b?.png"`` → ``"a_b_.png"``."""
    base = re.split(r"[\\/]", str(name))[-1].strip()
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:120]
    return cleaned or default


def human_size(n: int) -> str:
    """``8192`` → ``"8.0 KB"``, ``3145728`` → ``"3.0 MB"``."""
    return f"{n / 1048576:.1f} MB" if n >= 1048576 else f"{n / 1024:.1f} KB"


class SessionFolder:
    """A private temporary folder for one browser session, deleted with the session."""

    def __init__(self, prefix: str = "xcam-ui-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def cleanup(self) -> None:
        """Delete the folder now (also happens on garbage collection and at exit)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and self.path.is_dir()

    def save_upload(self, name: str, data: bytes, max_bytes: int) -> Path:
        """Write an upload into ``uploads/`` (replacing the previous one) after checking its size."""
        if len(data) > max_bytes:
            raise UploadError(
                f"{safe_filename(name)}: file too large ({human_size(len(data))}); "
                f"the limit is {human_size(max_bytes)}"
            )
        if not data:
            raise UploadError(f"{safe_filename(name)}: empty file (0 bytes)")
        if not self.path.is_dir():
            raise UploadError("this session's temporary folder is gone; reload the page")
        folder = self.path / "uploads"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        target = (folder / safe_filename(name)).resolve()
        if target.parent != folder.resolve():  # defence in depth: never write outside the folder
            raise UploadError(f"{name!r}: refused file name")
        target.write_bytes(data)
        return target


def load_upload(session: SessionFolder, name: str, data: bytes, max_bytes: int) -> XrayImage:
    """Save an upload in the session folder and decode it (:class:`XcamError` on any problem)."""
    return load_image(session.save_upload(name, data, max_bytes))


def folder_images(folder: Path | None) -> list[Path]:
    """Images offered by "pick from folder" (recursive, sorted); none when the folder is missing."""
    if folder is None or not Path(folder).is_dir():
        return []
    return iter_image_files(folder)
