"""DICOM out: the chain's result for a DICOM image as a Segmentation, a Structured Report and CAM
overlays (Secondary Captures), written with highdicom. See docs/dicom.md.

Every object stays in the source's study (its Study Instance UID, patient and study attributes
copied), gets a new series and SOP instance UID, and references the source image (study, series
and SOP instance UIDs). :func:`write_dicom` builds everything in memory, writes to
temporary files and renames them only when all succeeded: a failure leaves nothing half-written
and raises :class:`DicomOutputError` naming the input file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from xcam.interop.dicom_items import DicomOutputError, items_of, read_source, weights_digests

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from xcam.chain.results import ImageResult

__all__ = ["DicomOutputError", "check_source", "dicom_names", "dicom_zip", "write_dicom", "weights_digests"]

MANUFACTURER = "xcam"
OPTIONAL_PATIENT_ATTRIBUTES = ("PatientAge", "PatientSize", "PatientWeight", "PatientBirthDate", "PatientSex")
"""Type 3 (or type 2, emptied) attributes copied from the source that are dropped when their value
is invalid for their VR (e.g. an age of ``62`` instead of ``062Y``), so the objects validate."""


def check_source(path: str | Path) -> None:
    """Raise :class:`DicomOutputError` (one line naming the file) unless ``path`` can get DICOM output."""
    read_source(path)


def dicom_names(name: str) -> dict[str, str]:
    """The files of one image: ``{name}_SEG.dcm``, ``{name}_SR.dcm`` and ``{name}_CAM{n}.dcm``."""
    return {"seg": f"{name}_SEG.dcm", "sr": f"{name}_SR.dcm", "overlay": f"{name}_CAM{{n}}.dcm"}


def write_dicom(result: "ImageResult", out_dir: str | Path, *, name: str | None = None,
                digests: Mapping[str, str] | None = None, overlays: bool = True) -> list[Path]:
    """Write the SEG (when a finding has a mask), the SR and (``overlays``) one Secondary Capture
    per finding for ``result`` under ``out_dir``; returns the paths written. ``digests``: weights
    sha256 per model key (:func:`weights_digests` of the chain's models)."""
    from xcam import __version__

    source = read_source(result.path)
    items = items_of(result, digests)
    rows, cols = int(source.Rows), int(source.Columns)
    if (result.height, result.width) != (rows, cols):
        raise DicomOutputError(f"{result.path}: analysed image is {result.width}x{result.height} but the DICOM "
                               f"header says {cols}x{rows}")
    models = ",".join(r.model for r in result.results) or "xcam"
    common = dict(manufacturer=MANUFACTURER, model_name=models, software_version=f"xcam {__version__}")
    try:
        with warnings.catch_warnings():  # the source's one-component patient name is copied as it is
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            datasets = _build(result, source, items, common, overlays)
    except DicomOutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom refusals become one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DicomOutputError(f"{result.path}: cannot write DICOM output ({type(exc).__name__}: {reason})") from None
    names = dicom_names(name or result.stem)
    targets: dict[Path, "Dataset"] = {}
    for kind, ds in datasets:
        filename = names[kind].format(n=getattr(ds, "InstanceNumber", 1))
        targets[Path(out_dir) / filename] = ds
    return _write_all(result.path, targets)


def _build(result: "ImageResult", source: "Dataset", items: list, common: dict, overlays: bool
           ) -> list[tuple[str, "Dataset"]]:
    from xcam.interop.dicom_sc import build_overlays
    from xcam.interop.dicom_seg import build_segmentation
    from xcam.interop.dicom_sr import build_report

    schemes = _coding_schemes(items)
    out: list[tuple[str, "Dataset"]] = []
    seg = build_segmentation(source, items, coding_schemes=schemes, **common)
    if seg is not None:
        out.append(("seg", seg))
    out.append(("sr", build_report(source, items, coding_schemes=schemes, **common)))
    if overlays and items:
        image = result.image
        if image is None:
            from xcam.core.imageio import load_image

            image = load_image(result.path)
        assert result.grid is not None
        out += [("overlay", sc) for sc in build_overlays(source, items, result.grid, image.to_uint8(), **common)]
    for _, ds in out:
        _drop_invalid(ds)
    return out


def _coding_schemes(items: list) -> list | None:
    """The Coding Scheme Identification item of xcam's private scheme, when a code of it is used."""
    import highdicom as hd

    from xcam.interop.codes import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, PRIVATE_SCHEME_VERSION, finding_code

    if not any(finding_code(item.label).scheme == PRIVATE_SCHEME for item in items):
        return None
    return [hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, version=PRIVATE_SCHEME_VERSION,
        responsible_organization="xcam project (docs/dicom.md)")]


def _drop_invalid(ds: "Dataset") -> None:
    """Remove copied patient attributes whose value is invalid for their VR (see
    :data:`OPTIONAL_PATIENT_ATTRIBUTES`)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    for keyword in OPTIONAL_PATIENT_ATTRIBUTES:
        elem = ds[keyword] if keyword in ds else None
        if elem is None or elem.value in (None, ""):
            continue
        try:
            validate_value(elem.VR, elem.value, config.RAISE)
        except ValueError:
            del ds[keyword]


def _write_all(source: str, targets: Mapping[Path, "Dataset"]) -> list[Path]:
    """Write every dataset to a temporary file beside its target, then rename them all; on any
    failure remove what was written and raise :class:`DicomOutputError`."""
    temps: list[Path] = []
    try:
        for path, ds in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps.append(temp)
            ds.save_as(temp, enforce_file_format=True)
        for temp, path in zip(temps, targets):
            os.replace(temp, path)
    except Exception as exc:  # noqa: BLE001 - disk full, permissions, encoding: one line
        for temp in temps:
            temp.unlink(missing_ok=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DicomOutputError(f"{source}: cannot write DICOM output ({reason})") from None
    return list(targets)


def dicom_zip(result: "ImageResult", *, name: str | None = None, digests: Mapping[str, str] | None = None,
              overlays: bool = True) -> bytes:
    """:func:`write_dicom`'s files as one ZIP (the UI's download); :class:`DicomOutputError` as there."""
    import io
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(prefix="xcam-dicom-") as folder:
        paths = write_dicom(result, folder, name=name, digests=digests, overlays=overlays)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in paths:
                archive.write(path, path.name)
    return buffer.getvalue()
