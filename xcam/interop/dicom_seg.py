"""A DICOM Segmentation (BINARY) of the localized findings: one segment per finding with a
non-empty mask, in the source image's pixel grid, labels coded (:mod:`xcam.interop.codes`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from xcam.interop.codes import FINDING_CATEGORY, finding_code

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from xcam.interop.dicom_items import LocalizedItem

SERIES_NUMBER = 9901
SEGMENT_LABEL_LENGTH = 64  # LO


def segment_label(item: "LocalizedItem") -> str:
    """The segment's label: ``"{label} ({model or consolidated})"``, at most 64 characters."""
    who = item.tracking[: -len(item.label)].strip() if item.tracking.endswith(item.label) else item.tracking
    return f"{item.label} ({who})"[:SEGMENT_LABEL_LENGTH]


def build_segmentation(source: "Dataset", items: Sequence["LocalizedItem"], *, manufacturer: str,
                       model_name: str, software_version: str, **more: object) -> "Dataset | None":
    """The Segmentation of ``items`` that have a mask (``None`` when none has); frame 1 of a
    multi-frame source is the one referenced (xcam analyses the first frame). ``more``: further
    keyword arguments of highdicom's ``Segmentation`` (e.g. ``coding_schemes``)."""
    import highdicom as hd

    localized = [item for item in items if item.localized]
    if not localized:
        return None
    if "SliceThickness" not in source and "PixelSpacing" in source:
        # a projection radiograph: a Pixel Measures item without Slice Thickness is valid DICOM but
        # unreadable for highdicom itself; the frames reference the source image, which has the spacing
        source = source.copy()
        del source.PixelSpacing
    rows, cols = int(source.Rows), int(source.Columns)
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    stack = np.zeros((frames, rows, cols, len(localized)), dtype=bool)
    for i, item in enumerate(localized):
        stack[0, :, :, i] = item.mask
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=segment_label(item),
            segmented_property_category=FINDING_CATEGORY.concept(),
            segmented_property_type=finding_code(item.label).concept(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=item.algorithm.for_segment(),
            tracking_id=item.tracking[:64],
            tracking_uid=hd.UID(),
        )
        for i, item in enumerate(localized)
    ]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=model_name,
        software_versions=software_version,
        device_serial_number="0",
        content_label="XCAM_CAM_MASKS",
        content_description="Masks of class activation maps (xcam)",
        omit_empty_frames=True,
        series_description="xcam CAM masks",
        **more,
    )
    if "PatientOrientation" not in seg:  # General Image module, type 2C for a projection radiograph source
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
