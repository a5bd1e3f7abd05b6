"""What the DICOM writers need: the source image's header, checked, and the chain's localized
findings with their masks in the source image's pixel grid and their algorithm identification."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from xcam.core.errors import XcamError

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from xcam.chain.results import ImageResult
    from xcam.core.types import ScoredBox

REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
"""Attributes a source image must have for its results to be referenced in DICOM."""


class DicomOutputError(XcamError):
    """DICOM output cannot be made for an input (not DICOM, attributes missing, writer failed)."""


def read_source(path: str | Path) -> "Dataset":
    """The header of the DICOM file ``path`` (no pixel data), checked for :data:`REQUIRED`;
    :class:`DicomOutputError` naming the file otherwise."""
    import pydicom

    from xcam.core.imageio import is_dicom_file

    p = Path(path)
    if not p.is_file():
        raise DicomOutputError(f"{p}: file not found (DICOM output needs the DICOM source file)")
    if not is_dicom_file(p):
        raise DicomOutputError(f"{p}: not a DICOM file; DICOM output (--dicom-out) needs a DICOM input")
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is one line
        raise DicomOutputError(f"{p}: not a readable DICOM file ({type(exc).__name__})") from None
    missing = [k for k in REQUIRED if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise DicomOutputError(f"{p}: DICOM file lacks {', '.join(missing)}; cannot reference it in DICOM output")
    return ds


@dataclass(frozen=True)
class Algorithm:
    """Who computed a finding: name, xcam version and parameters (model, weights, sha256, CAM method...)."""

    name: str
    version: str
    parameters: dict[str, str] = field(default_factory=dict)

    def for_segment(self):  # -> highdicom.AlgorithmIdentificationSequence
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.AlgorithmIdentificationSequence(name=self.name, family=codes.cid7162.ArtificialIntelligence,
                                                  version=self.version, parameters=dict(self.parameters))

    def for_report(self):  # -> highdicom.sr.AlgorithmIdentification
        import highdicom as hd

        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version,
                                              parameters=[f"{k}={v}" for k, v in self.parameters.items()])


@dataclass(frozen=True)
class LocalizedItem:
    """One model's finding (or a consolidation across models) ready for DICOM."""

    label: str
    probability: float | None
    mask: np.ndarray  # bool, the source image's pixel grid (rows, columns)
    boxes: tuple["ScoredBox", ...]  # original pixels
    tracking: str  # e.g. "densenet121 Mass", "consolidated Mass"
    algorithm: Algorithm
    method: str  # CAM method (with "(in-graph)" when the backend computed it)
    cam: np.ndarray  # float32 in [0, 1], the chain's work grid

    @property
    def localized(self) -> bool:
        return bool(self.mask.any())


def weights_digests(models: Iterable[object]) -> dict[str, str]:
    """``{model key: weights sha256}`` of a chain's loaded models, where the backend knows it
    (PyTorch: the model's ``weights_sha256``; ONNX Runtime: the export's metadata)."""
    out: dict[str, str] = {}
    for m in models:
        clf = getattr(m, "classifier", None)
        digest = getattr(getattr(clf, "model", None), "weights_sha256", None)
        digest = digest or (getattr(clf, "metadata", None) or {}).get("weights_sha256")
        ref = getattr(m, "ref", None)
        if digest and ref is not None:
            out[ref.key] = str(digest)
    return out


def items_of(result: "ImageResult", digests: Mapping[str, str] | None = None) -> list[LocalizedItem]:
    """Every model's findings and every consolidation of ``result``, masks mapped to the source grid
    exactly as the ``_P3`` mask images are (nearest neighbour from the work grid)."""
    from xcam import __version__

    if result.grid is None or not result.ok:
        raise DicomOutputError(f"{result.path}: no result to write ({result.error or 'no work grid'})")
    grid, digests = result.grid, digests or {}
    models = {r.model: r for r in result.results}
    items: list[LocalizedItem] = []

    def model_parameters(r) -> dict[str, str]:
        params = {"model": r.model, "weights": r.weights or "", "weights_sha256": digests.get(r.model, "unknown"),
                  "backend": r.backend, "cam_method": r.method, "cam_layers": r.target_layer,
                  "aug_smooth": str(bool(r.aug_smooth)).lower(), "mask_extractor": r.mask_extractor,
                  "bbox_strategy": r.strategy}
        return {k: v for k, v in params.items() if v}

    for r in result.results:
        algorithm = Algorithm(f"xcam {r.model}", __version__, model_parameters(r))
        for f in r.findings:
            items.append(LocalizedItem(f.pathology, float(f.probability), _source_mask(grid, f.mask), tuple(f.boxes),
                                       f"{r.model} {f.pathology}", algorithm, r.method, f.cam))
    for c in result.consolidated:
        params: dict[str, str] = {"ensembler": c.ensembler, "models": ",".join(c.models)}
        for name in (n for n in c.models if n in models):
            params.update({f"{name}.{k}": v for k, v in model_parameters(models[name]).items() if k != "model"})
        methods = sorted({models[n].method for n in c.models if n in models})
        items.append(LocalizedItem(c.pathology, None if c.probability is None else float(c.probability),
                                   _source_mask(grid, c.mask), tuple(c.boxes), f"consolidated {c.pathology}",
                                   Algorithm(f"xcam ensemble ({c.ensembler})", __version__, params),
                                   "+".join(methods), c.cam))
    return items


def _source_mask(grid, mask: np.ndarray) -> np.ndarray:
    return np.asarray(grid.to_original(np.asarray(mask, dtype=bool)), dtype=bool)
