"""What ``xcam demo`` leaves behind, found again: its trained checkpoint and its held-out phantoms.

``xcam demo`` caches everything under ``$XCAM_HOME/demo/<preset>-<key>/`` (``$XCAM_HOME``
defaults to ``~/.xcam``, :func:`xcam.core.weights.xcam_home`):

- ``run/best.pt``: a MobileNetV3 checkpoint in ``xcam train``'s format (``mobilenetv3`` loads it);
- ``heldout/images/*.png``: phantoms the model never saw, with ``heldout/BBox_List_2017.csv``
  (NIH's box-list format, :func:`xcam.core.nih.read_box_table`) and ``heldout/Data_Entry_2017.csv``.

:func:`find_demo` picks the cache to use; the web UI offers its checkpoint as a weight choice and
its held-out phantoms, with their boxes as ground truth, as examples, so the UI works on a machine
that has never downloaded a weight file. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xcam.core.imageio import IMAGE_SUFFIXES

DEMO_COMMAND = "xcam demo --fast"
"""The one command that makes a demo cache offline (about a minute on 2 CPU cores)."""

PRESET_ORDER: tuple[str, ...] = ("full", "fast")
"""Presets in order of preference (the full preset trains longer on more phantoms)."""

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class DemoAssets:
    """One complete demo cache: ``root`` = ``$XCAM_HOME/demo/<preset>-<key>``."""

    root: Path
    checkpoint: Path  # run/best.pt
    images: Path  # heldout/images
    boxes: Path  # heldout/BBox_List_2017.csv
    labels: Path  # heldout/Data_Entry_2017.csv (may be absent; not needed by the UI)

    @classmethod
    def at(cls, root: str | Path) -> "DemoAssets":
        """The files a cache at ``root`` has (or would have); see :attr:`complete`."""
        root = Path(root)
        heldout = root / "heldout"
        return cls(root, root / "run" / "best.pt", heldout / "images", heldout / "BBox_List_2017.csv",
                   heldout / "Data_Entry_2017.csv")

    @property
    def preset(self) -> str:
        """``full`` or ``fast`` (the folder name up to its first ``-``)."""
        return self.root.name.split("-", 1)[0]

    @property
    def complete(self) -> bool:
        """Checkpoint, held-out images and their box list are all there."""
        return self.checkpoint.is_file() and self.images.is_dir() and self.boxes.is_file()

    @property
    def modified(self) -> float:
        """When the checkpoint was last written (seconds since the epoch; 0 when absent)."""
        try:
            return self.checkpoint.stat().st_mtime
        except OSError:
            return 0.0

    def box_table(self) -> dict[str, list[tuple[str, Box]]]:
        """``{image file name: [(label, (x, y, w, h)), ...]}`` from the box list (labels in
        Data_Entry spelling); a malformed list raises :class:`~xcam.core.errors.UsageError`."""
        from xcam.core.nih import read_box_table

        return read_box_table(self.boxes)

    def ground_truth(self, image: str | Path) -> list[tuple[str, Box]]:
        """The boxes of one held-out image (by file name)."""
        return list(self.box_table().get(Path(image).name, []))

    def examples(self, limit: int | None = None) -> list[Path]:
        """Held-out images that have at least one box, sorted by name (at most ``limit``)."""
        table = self.box_table()
        found = sorted(p for p in self.images.iterdir()
                       if p.name in table and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return found if limit is None else found[: max(int(limit), 0)]


def _rank(assets: DemoAssets) -> tuple[int, float]:
    preset = assets.preset
    order = PRESET_ORDER.index(preset) if preset in PRESET_ORDER else len(PRESET_ORDER)
    return order, -assets.modified


def demo_caches(home: str | Path | None = None) -> list[DemoAssets]:
    """Every complete demo cache under ``home`` (default ``$XCAM_HOME``), best first: the full
    preset before ``fast``, then the newest checkpoint first."""
    from xcam.core.weights import xcam_home

    folder = Path(home).expanduser() if home is not None else xcam_home()
    folder = folder / "demo"
    if not folder.is_dir():
        return []
    try:
        roots = [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []
    caches = [DemoAssets.at(root) for root in roots]
    return sorted((c for c in caches if c.complete), key=lambda c: (*_rank(c), c.root.name))


def find_demo(home: str | Path | None = None) -> DemoAssets | None:
    """The demo cache to use (:func:`demo_caches`' first), or ``None`` when there is none."""
    caches = demo_caches(home)
    return caches[0] if caches else None


__all__ = ["DEMO_COMMAND", "DemoAssets", "demo_caches", "find_demo"]
