"""Downloads: what is on screen as one JSON document and as a ZIP of PNGs (plus that JSON).

Names follow the command-line outputs (:mod:`xcam.chain.outputs`): ``{model}_{pathology}_P0.png``
(overlay), ``_P3.png`` (mask), ``_PBBox.png`` (boxes), ``{pathology}_consolidated_P0.png`` /
``_consolidated.png`` / ``_consolidated_bbox.png`` and ``_input_image_.png``, each at the image's
resolution; the JSON is ``analysis.json`` (the chain's summary format, as ``xcam analyze`` writes
it, plus the page's settings).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any, Mapping

import numpy as np


def safe_part(text: str) -> str:
    """A name part usable in a file name (folders and odd characters replaced)."""
    from xcam.ui.uploads import safe_filename

    return safe_filename(text, default="item")


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a grey, BGR or boolean image as PNG bytes."""
    import cv2

    from xcam.core.render import mask_png

    a = mask_png(image) if image.dtype == np.bool_ else image
    ok, buf = cv2.imencode(".png", a)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise ValueError(f"cannot encode an image of shape {a.shape}")
    return buf.tobytes()


def to_json(document: Mapping[str, Any]) -> str:
    """Pretty JSON; NumPy scalars and arrays become plain numbers and lists."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return str(obj)

    return json.dumps(document, indent=2, default=default)


DOCUMENT_NAME = "analysis.json"
"""The page's JSON in the ZIP: :func:`xcam.chain.results.result_dict`'s format, so it is named as
``xcam analyze`` names that file (``metadata.json`` is the per-model CAM index ``xcam ensemble`` reads)."""


def zip_bytes(images: Mapping[str, np.ndarray], document: Mapping[str, Any]) -> bytes:
    """A ZIP holding each image as ``<name>`` (PNG) and the document as :data:`DOCUMENT_NAME`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(name, png_bytes(image))
        archive.writestr(DOCUMENT_NAME, to_json(document))
    return buffer.getvalue()
