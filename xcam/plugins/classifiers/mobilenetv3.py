"""MobileNetV3 trained by ``xcam train`` on data in NIH ChestX-ray14 format (14 labels).

Weights: ``mobilenetv3-nih.pt`` in the weights folder, or any checkpoint path given as the
variant (``--weights runs/mobilenet/best.pt``). The checkpoint carries its labels, architecture,
input size, preprocessing and CAM layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xcam.core.errors import WeightsError
from xcam.core.labels import NIH_LABELS
from xcam.core.types import BuildRequest, ClassifierRegistration, WeightVariant

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel



def build(request: BuildRequest) -> "XCamModel":
    from xcam.nets.mobilenet import MobileNetV3

    options = dict(request.options)
    if request.random_init:
        model = MobileNetV3(
            labels=options.get("labels", NIH_LABELS),
            arch=options.get("arch", "mobilenet_v3_large"),
            input_size=int(options.get("img_size", 224)),
            cam_layer=options.get("cam_layer"),
            head=options.get("head", "mlp"),
            dilated=bool(options.get("dilated", False)),
        )
    else:
        path = request.store.resolve(request.variant)
        checkpoint, digest = request.store.load_checkpoint(path, request.variant)
        if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
            raise WeightsError(f"{path}: not an xcam training checkpoint (no 'model_state')")
        try:
            model = MobileNetV3(
                labels=checkpoint.get("labels", NIH_LABELS),
                arch=checkpoint.get("arch", "mobilenet_v3_large"),
                input_size=int(checkpoint.get("img_size", 224)),
                preprocessing=checkpoint.get("preprocessing", "xrv"),
                cam_layer=options.get("cam_layer") or checkpoint.get("cam_layer"),
                head=checkpoint.get("head", "mlp"),
                dilated=bool(checkpoint.get("dilated", False)),
                lse_r=float(checkpoint.get("lse_r") or 5.0),
                pylon_pool=str(checkpoint.get("pylon_pool") or "lse"),
            )
        except (ValueError, TypeError) as exc:
            raise WeightsError(f"{path}: unusable checkpoint settings ({exc})") from None
        try:
            model.load_state_dict(checkpoint["model_state"], strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path}: weights do not fit the declared architecture ({str(exc)[:160]})") from None
        model.weights_path, model.weights_sha256 = str(path), digest
    model.name, model.variant = "mobilenetv3", request.variant.name
    return model


REGISTRATION = ClassifierRegistration(
    name="mobilenetv3",
    labels=NIH_LABELS,
    input_size=224,
    target_layer="net.features.16",
    variants=(
        WeightVariant(
            name="mobilenetv3-nih",
            filename="mobilenetv3-nih.pt",
            url=None,
            training_data="NIH ChestX-ray14 (train it yourself with `xcam train`)",
            description="MobileNetV3-Large, 1-channel stem, 14 NIH labels; checkpoint written by xcam train",
        ),
    ),
    builder=build,
    description="MobileNetV3 you train yourself with `xcam train` (NIH ChestX-ray14 format)",
)
