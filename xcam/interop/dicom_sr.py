"""A TID 1500 measurement report (Comprehensive 3D SR) of the chain's findings.

Per finding and box: a Planar ROI measurement group (TID 1410) with the coded finding, the
probability (DCM 122157, UCUM ``1``), the box as a closed SCOORD POLYLINE on the source image
(DICOM image coordinates: (0, 0) is the top-left corner of the top-left pixel, so xcam's
``x, y, w, h`` corners are written as they are), the CAM method and the algorithm identification.
A finding without a box gets an image-level measurement group (TID 1501) with its probability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from xcam.interop.codes import (
    FINDING_CATEGORY,
    IMAGING_PROCEDURE,
    NO_UNITS,
    PROBABILITY,
    cam_method_code,
    finding_code,
)

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

    from xcam.core.types import ScoredBox
    from xcam.interop.dicom_items import LocalizedItem

SERIES_NUMBER = 9902


def box_polyline(box: "ScoredBox") -> np.ndarray:
    """The closed polyline of a box: its four corners, clockwise from the top left, and back."""
    x0, y0, x1, y1 = box.x, box.y, box.x + box.width, box.y + box.height
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def _region_source(source: "Dataset"):  # -> highdicom.sr.SourceImageForRegion
    """The source image of a region: frame 1 of a multi-frame image (the frame xcam analyses)."""
    import highdicom as hd

    if int(getattr(source, "NumberOfFrames", 1) or 1) > 1:
        try:
            return hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=[1])
        except TypeError:  # a single-frame SOP class carrying Number of Frames: no frame to name
            pass
    return hd.sr.SourceImageForRegion.from_source_image(source)


def _groups(source: "Dataset", item: "LocalizedItem") -> list:
    import highdicom as hd

    algorithm = item.algorithm.for_report()
    measurements = []
    if item.probability is not None:
        measurements.append(hd.sr.Measurement(name=PROBABILITY.concept(), value=float(item.probability),
                                              unit=NO_UNITS.concept()))  # the group's algorithm computed it
    common = dict(finding_type=finding_code(item.label).concept(), finding_category=FINDING_CATEGORY.concept(),
                  algorithm_id=algorithm, measurements=measurements)
    if not item.boxes:
        return [hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=item.tracking[:64]),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)], **common)]
    groups = []
    for k, box in enumerate(item.boxes):
        name = item.tracking if len(item.boxes) == 1 else f"{item.tracking} box {k + 1}"
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(box),
            source_image=_region_source(source))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name[:64]),
            referenced_region=region, method=cam_method_code(item.method).concept(), **common))
    return groups


def build_report(source: "Dataset", items: Sequence["LocalizedItem"], *, manufacturer: str, model_name: str,
                 software_version: str, **more: object) -> "Dataset":
    """The Comprehensive 3D SR of ``items`` (an empty Imaging Measurements container when there is
    none); ``more``: further keyword arguments of highdicom's ``Comprehensive3DSR``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="xcam", manufacturer_name=manufacturer, model_name=model_name[:64]))
    procedure = source.get("ProcedureCodeSequence")
    reported = hd.sr.CodedConcept.from_dataset(procedure[0]) if procedure else IMAGING_PROCEDURE.concept()
    groups = [g for item in items for g in _groups(source, item)]
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=reported, imaging_measurements=groups or None)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=report, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=manufacturer,
        is_complete=True, is_final=False, is_verified=False,
        manufacturer_model_name=model_name[:64], software_versions=software_version,
        series_description="xcam findings", **more,
    )
    return sr
