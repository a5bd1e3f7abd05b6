"""NIH ChestX-ray14-format data for training: the label table, a patient-wise split, a Dataset.

Why not torchxrayvision's ``NIH_Dataset``: it does accept a custom ``csvpath``/``imgpath``, but it
keeps one image per patient by default, only PA views, a fixed list of 14 pathologies (found by
substring), and its own 8-bit image normalisation. Training must see exactly what inference sees,
so images here go through xcam's own :func:`xcam.core.imageio.load_image` and
:func:`xcam.core.preprocess.preprocess` (pad to square, resize, xrv scaling) — the same calls
``xcam classify`` makes. Labels are parsed like xrv does (``Finding Labels`` split on ``|``,
``No Finding`` = all negative) with NIH's box-list spelling ``Infiltrate`` mapped to
``Infiltration``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from xcam.core.errors import UsageError

from xcam.core.labels import NIH_LABELS, canonical_label, split_findings  # noqa: F401 (split_findings re-exported)
from xcam.core.nih import image_index


@dataclass
class LabelTable:
    """Images with multi-hot labels and patient ids, in csv order (only images found on disk)."""

    paths: list[Path]
    names: list[str]
    labels: list[str]
    targets: np.ndarray  # [N, C] float32
    patients: np.ndarray  # [N] str
    missing: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int]) -> "LabelTable":
        idx = np.asarray(index, dtype=int)
        return LabelTable(
            [self.paths[i] for i in idx], [self.names[i] for i in idx], self.labels,
            self.targets[idx], self.patients[idx], 0,
        )


def read_label_table(
    csvpath: str | Path, imgpath: str | Path, labels: Sequence[str] | None = None, views: Sequence[str] | None = None
) -> LabelTable:
    """Read ``Data_Entry_2017.csv`` (or a subset in its layout) for the images present in ``imgpath``.

    ``labels``: the classes to learn (default: every finding present in the csv, NIH order first).
    ``views``: keep only these ``View Position`` values (default: all).
    """
    import pandas as pd

    csvpath, imgpath = Path(csvpath), Path(imgpath)
    if not csvpath.is_file():
        raise UsageError(f"{csvpath}: label csv not found")
    if not imgpath.is_dir():
        raise UsageError(f"{imgpath}: image folder not found")
    try:
        df = pd.read_csv(csvpath, index_col=False)
    except Exception as exc:  # pandas raises many types
        raise UsageError(f"{csvpath}: cannot read csv ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    for column in ("Image Index", "Finding Labels"):
        if column not in df.columns:
            raise UsageError(f"{csvpath}: column {column!r} missing (expected NIH Data_Entry_2017.csv layout)")
    if views is not None and "View Position" in df.columns:
        df = df[df["View Position"].isin(list(views))]
    findings = [split_findings(t) for t in df["Finding Labels"]]
    present = {f for row in findings for f in row}
    if labels is None:
        labels = [c for c in NIH_LABELS if c in present] + sorted(present - set(NIH_LABELS))
    labels = [canonical_label(c) for c in labels]
    if not labels:
        raise UsageError(f"{csvpath}: no findings to learn (every row is 'No Finding')")
    unknown = [c for c in labels if c not in present]
    if unknown:
        raise UsageError(f"{csvpath}: no image has label(s) {', '.join(unknown)}; present: {', '.join(sorted(present))}")
    names = [str(n) for n in df["Image Index"]]
    index = image_index(imgpath, names)
    keep = [i for i, n in enumerate(names) if n in index]
    if not keep:
        raise UsageError(f"{imgpath}: none of the {len(names)} images listed in {csvpath.name} was found")
    position = {c: j for j, c in enumerate(labels)}
    targets = np.zeros((len(keep), len(labels)), dtype=np.float32)
    for row, i in enumerate(keep):
        for f in findings[i]:
            if f in position:
                targets[row, position[f]] = 1.0
    if "Patient ID" in df.columns:
        patients = df["Patient ID"].astype(str).to_numpy()[keep]
    else:  # NIH names are <patient>_<follow-up>.png
        patients = np.asarray([names[i].split("_")[0] for i in keep])
    return LabelTable(
        [index[names[i]] for i in keep], [names[i] for i in keep], list(labels), targets, patients,
        missing=len(names) - len(keep),
    )


def patient_split(patients: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices with every patient on one side only (scikit-learn GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    patients = np.asarray(patients)
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if len(np.unique(patients)) < 2:
        raise UsageError("a patient-wise split needs at least 2 patients")
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(patients)), groups=patients))
    return np.sort(train), np.sort(val)


def load_input(path: Path, size: int, preprocessing: str = "xrv") -> np.ndarray:
    """One image as the model sees it: ``[1, size, size]`` float32 (xcam's inference preprocessing)."""
    from xcam.core.imageio import load_image
    from xcam.core.preprocess import preprocess

    array, _ = preprocess(load_image(path), size, preprocessing)
    return array


class XrayDataset:
    """A map-style torch Dataset of ``(input [1,S,S] float32, target [C] float32)``.

    With ``cache`` each image is decoded once and kept in memory as float16 (1,200 images at
    224 px ≈ 120 MB), which makes later epochs cost only the network on a 2-core machine.
    """

    def __init__(self, table: LabelTable, size: int, preprocessing: str = "xrv", cache: bool = True) -> None:
        self.table, self.size, self.preprocessing = table, int(size), preprocessing
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.table)

    def image(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i].astype(np.float32)
        array = load_input(self.table.paths[i], self.size, self.preprocessing)
        if self._cache is not None:
            self._cache[i] = array.astype(np.float16)
        return array

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.image(i)), torch.from_numpy(self.table.targets[i])

    def preload(self, progress: bool = True, desc: str = "decode") -> None:
        """Decode every image now (fills the cache; a no-op without one)."""
        if self._cache is None:
            return
        from xcam.core.progress import track

        for i in track(range(len(self)), desc=desc, enabled=progress, unit="image"):
            self.image(i)


def cache_fits(n_images: int, size: int, budget_bytes: float = 4e9) -> bool:
    """Whether ``n_images`` float16 inputs of ``size``² fit the in-memory cache budget."""
    return n_images * size * size * 2 <= budget_bytes
