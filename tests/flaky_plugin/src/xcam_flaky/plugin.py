"""CAM methods that misbehave on purpose, for the tests of plugin failures.

* ``flaky`` — pytorch-grad-cam's Grad-CAM (through xcam's built-in ``gradcam``), except on the
  images whose preprocessed pixels hash to 1 (mod 3): it raises ``RuntimeError``, or to 2: it
  returns NaN maps. Which images fail depends on the image alone, so a run can be compared, image
  by image, with a plain ``gradcam`` run.
* ``broken`` — raises on every call.
"""

from __future__ import annotations

import hashlib

import numpy as np

from xcam.core.hookspecs import hookimpl
from xcam.core.types import CamMethodRegistration


def kind(image) -> str:
    """``ok``, ``raise`` or ``nan`` for one preprocessed image (a tensor ``[1, S, S]``)."""
    digest = hashlib.sha256(np.ascontiguousarray(image.detach().cpu().numpy()).tobytes()).digest()
    return ("ok", "raise", "nan")[digest[0] % 3]


def flaky(model, batch, class_indices, **options):
    from xcam.plugins.cam_methods import compute_cam

    kinds = {kind(x) for x in batch}
    if "raise" in kinds:
        raise RuntimeError("flaky plugin failure")
    maps = compute_cam("gradcam", model, batch, class_indices, **options)
    if "nan" in kinds:
        maps = np.full_like(maps, np.nan)
    return maps


def broken(model, batch, class_indices, **options):
    raise RuntimeError("this plugin always fails")


@hookimpl
def xcam_cam_methods():
    yield CamMethodRegistration(name="flaky", compute=flaky, description="Grad-CAM that fails on some images")
    yield CamMethodRegistration(name="broken", compute=broken, description="fails on every call")
