"""The CAM overlay of a finding as a DICOM Secondary Capture (RGB, the source's pixel grid), for
viewers that show neither segmentations nor SR regions: the ``_P0`` image with the boxes drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from xcam.core.preprocess import WorkGrid
    from xcam.interop.dicom_items import LocalizedItem

SERIES_NUMBER = 9903


def overlay_rgb(grey: np.ndarray, item: "LocalizedItem", grid: "WorkGrid") -> np.ndarray:
    """``uint8`` RGB: the CAM over the image as ``_P0`` renders it, with the finding's boxes."""
    from xcam.chain.outputs import box_items
    from xcam.core import render as R

    bgr = R.overlay(grey, grid.to_original(item.cam))
    bgr = R.draw_boxes(bgr, box_items(item.boxes, (), item.label))
    return np.ascontiguousarray(bgr[:, :, ::-1])


def build_overlays(source: "Dataset", items: list["LocalizedItem"], grid: "WorkGrid", grey: np.ndarray, *,
                   manufacturer: str, model_name: str, software_version: str) -> list["Dataset"]:
    """One Secondary Capture per item, all in one new series (instance numbers 1, 2, …)."""
    import highdicom as hd

    series = hd.UID()
    out = []
    for number, item in enumerate(items, start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=overlay_rgb(grey, item, grid), photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series, series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=number, manufacturer=manufacturer,
            patient_orientation=("A", "F"), manufacturer_model_name=model_name[:64],
            software_versions=software_version, series_description="xcam CAM overlays")
        # highdicom insists on a valid orientation; the overlay's is the source's (often unknown: empty)
        sc.PatientOrientation = source.get("PatientOrientation", "")
        for keyword in ("BodyPartExamined", "Laterality"):  # General Series: what the source says
            if keyword in source and keyword not in sc:
                setattr(sc, keyword, source[keyword].value)
        if "BodyPartExamined" not in sc and "Laterality" not in sc:  # type 2C: unknown, so empty
            sc.Laterality = ""
        sc.DerivationDescription = f"Class activation map of {item.tracking} ({item.method}) over the source image"
        sc.BurnedInAnnotation = "NO"
        out.append(sc)
    return out

