"""Downloads: what is on screen as one JSON document and as a ZIP of PNGs (plus that JSON).

Image names follow the command-line outputs: ``{model}_{pathology}_P0.png`` (overlay),
``_P3.png`` (mask), ``_PBBox.png`` (boxes), ``{pathology}_consolidated.png`` /
``_consolidated_bbox.png`` and ``_input_image_.png``; the JSON is ``metadata.json``.
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


def zip_bytes(images: Mapping[str, np.ndarray], document: Mapping[str, Any]) -> bytes:
    """A ZIP holding each image as ``<name>`` (PNG) and the document as ``metadata.json``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(name, png_bytes(image))
        archive.writestr("metadata.json", to_json(document))
    return buffer.getvalue()
