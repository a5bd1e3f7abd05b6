"""The coded concepts xcam writes into DICOM: one table, documented in docs/dicom.md.

A finding's label is coded with SNOMED CT (``SCT``) where a concept exists, else with a DICOM code
(``DCM``, PS3.16) where DICOM has one, else with xcam's private scheme :data:`PRIVATE_SCHEME`
(``99`` prefix: a local scheme, PS3.3 §8.2). Labels of third-party classifiers that are not in the
table get a private code derived from the label, stable across runs (:func:`finding_code`).
``source`` says where each code was checked: ``"DICOM PS3.16"`` codes appear in DICOM's own code
tables (as shipped in pydicom's code dictionary, which a test checks); ``"SNOMED CT"`` codes are
SNOMED concepts that DICOM's tables do not list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xcam.core.labels import label_key

PRIVATE_SCHEME = "99XCAM"
PRIVATE_SCHEME_NAME = "xcam private finding codes"
PRIVATE_SCHEME_VERSION = "1"


@dataclass(frozen=True)
class Code:
    """A coded concept: value, coding scheme designator, meaning, and where the code was checked."""

    value: str
    scheme: str
    meaning: str
    source: str = ""

    def concept(self):  # -> highdicom.sr.CodedConcept
        """As highdicom's :class:`~highdicom.sr.CodedConcept` (private codes carry the scheme version)."""
        from highdicom.sr import CodedConcept

        version = PRIVATE_SCHEME_VERSION if self.scheme == PRIVATE_SCHEME else None
        return CodedConcept(self.value, self.scheme, self.meaning, version)


def _sct(value: str, meaning: str, source: str = "SNOMED CT") -> Code:
    return Code(value, "SCT", meaning, source)


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning, "xcam")


FINDING_CODES: dict[str, Code] = {
    label_key(label): code
    for label, code in {
        # the 14 NIH ChestX-ray14 labels
        "Atelectasis": _sct("46621007", "Atelectasis"),
        "Cardiomegaly": _sct("8186001", "Cardiomegaly"),
        "Effusion": _sct("60046008", "Pleural effusion", "DICOM PS3.16"),
        "Infiltration": Code("112121", "DCM", "Infiltrate", "DICOM PS3.16"),  # CID 6102
        "Mass": _sct("4147007", "Mass", "DICOM PS3.16"),  # CID 6102
        "Nodule": _sct("27925004", "Nodule", "DICOM PS3.16"),  # CID 6102
        "Pneumonia": _sct("233604007", "Pneumonia"),
        "Pneumothorax": _sct("36118008", "Pneumothorax", "DICOM PS3.16"),  # CID 6102
        "Consolidation": _sct("95436008", "Lung consolidation"),
        "Edema": _sct("19242006", "Pulmonary edema", "DICOM PS3.16"),  # CID 3700
        "Emphysema": _sct("87433001", "Pulmonary emphysema"),
        "Fibrosis": _sct("51615001", "Fibrosis of lung"),
        "Pleural_Thickening": _private("PLEURAL-THICK", "Pleural thickening"),
        "Hernia": _private("HERNIA", "Hernia"),
        # the further labels of torchxrayvision's 18
        "Lung Lesion": _private("LUNG-LESION", "Lung lesion"),
        "Fracture": _sct("125605004", "Fracture of bone"),
        "Lung Opacity": Code("112001", "DCM", "Opacity", "DICOM PS3.16"),  # CID 6102
        "Enlarged Cardiomediastinum": _private("ENLARGED-CM", "Enlarged cardiomediastinum"),
    }.items()
}
"""``label_key(label)`` → its code (labels of the 14 NIH and the 18 torchxrayvision classes)."""

PROBABILITY = Code("122157", "DCM", "Probability", "DICOM PS3.16")
"""The concept name of a finding's probability (a NUM with UCUM unit ``1``)."""
NO_UNITS = Code("1", "UCUM", "no units", "DICOM PS3.16")
FINDING_CATEGORY = _sct("49755003", "Morphologically Abnormal Structure", "DICOM PS3.16")  # CID 7150
"""The segmented property category of every segment and the SR's finding category."""
IMAGING_PROCEDURE = _sct("363679005", "Imaging procedure", "DICOM PS3.16")  # CID 100
"""The SR's procedure reported when the source image carries no Procedure Code Sequence."""
CLASS_ACTIVATION = Code("130402", "DCM", "Class activation", "DICOM PS3.16")  # CID 7180
GRADIENT_CLASS_ACTIVATION = Code("130403", "DCM", "Gradient-weighted class activation", "DICOM PS3.16")


def finding_code(label: str) -> Code:
    """The code of a finding label (any spelling :func:`~xcam.core.labels.label_key` accepts);
    a label outside the table gets private code ``L`` + 12 hex digits of its key's sha1."""
    key = label_key(label)
    if key in FINDING_CODES:
        return FINDING_CODES[key]
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12].upper()
    return _private(f"L{digest}", str(label).strip()[:64] or "unnamed finding")


def cam_method_code(method: str) -> Code:
    """The DICOM concept of a CAM method: Grad-CAM → gradient-weighted class activation, any other
    → class activation (the method's own name travels in the algorithm parameters)."""
    name = method.split("(")[0].strip().lower()
    return GRADIENT_CLASS_ACTIVATION if name in ("gradcam", "grad-cam") else CLASS_ACTIVATION
