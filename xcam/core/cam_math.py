"""Exact one-pass Grad-CAM of every class for GAP → linear heads.

For a head ``logits = W · mean_hw(A) + b`` over the last feature map ``A [B, K, h, w]``, the
gradient of logit ``c`` with respect to ``A[k, i, j]`` is ``W[c, k] / (h·w)`` at every pixel, so
Grad-CAM's channel weights (the spatial mean of that gradient) are ``alpha = W / (h·w)`` and

    cam_c = ReLU( Σ_k alpha[c, k] · A_k )          (one einsum for all classes)

This equals pytorch-grad-cam's ``GradCAM`` with ``target_layers=[model.target_layer()]`` and
``ClassifierOutputTarget(c)`` on the raw logits — for the built-in models the layer is
``head_relu`` (DenseNet121: ReLU(norm5), 1024×7×7 at 224 px) and ``model.layer4`` (ResNet50:
2048×16×16 at 512 px). The same graph is what :mod:`xcam.export.onnx_export` puts in the ONNX
file as output ``cams`` (raw, *not* normalized); :func:`normalize_cams` and
:func:`cams_to_input_size` reproduce pytorch-grad-cam's normalization outside the graph.
Backends that compute these maps in their forward pass declare it with
``Classifier.in_graph_cams`` (:mod:`xcam.core.inference`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from xcam.core.model import XCamModel

EPS = 1e-7  # pytorch-grad-cam's scale_cam_image epsilon


def supports_fast_cam(model: XCamModel) -> bool:
    """True when the model exposes a GAP → linear head (the fast path is exact)."""
    return model.gap_linear_head() is not None


def raw_cams(feature_map: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``ReLU(einsum('ck,bkhw->bchw', W/(h·w), A))``: un-normalized Grad-CAM of every class."""
    import torch

    h, w = feature_map.shape[-2], feature_map.shape[-1]
    alpha = weight / (h * w)
    return torch.relu(torch.einsum("ck,bkhw->bchw", alpha, feature_map))


def normalize_cams(cams: np.ndarray) -> np.ndarray:
    """Per-map min-max scaling to [0, 1] over the last two axes, as pytorch-grad-cam does
    (``(m - min) / (1e-7 + max(m - min))``); an all-zero map stays zero."""
    cams = np.asarray(cams, dtype=np.float32)
    shifted = cams - cams.min(axis=(-2, -1), keepdims=True)
    return (shifted / (EPS + shifted.max(axis=(-2, -1), keepdims=True))).astype(np.float32)


def cams_to_input_size(cams: np.ndarray, size: int) -> np.ndarray:
    """Normalized maps ``[..., h, w]`` → ``[..., size, size]`` in [0, 1], exactly as
    pytorch-grad-cam finishes a single-layer CAM: bilinear ``cv2.resize`` then min-max again."""
    import cv2

    cams = normalize_cams(cams)
    lead = cams.shape[:-2]
    flat = cams.reshape(-1, *cams.shape[-2:])
    resized = np.stack([cv2.resize(m, (size, size)) for m in flat]) if len(flat) else np.zeros((0, size, size))
    return normalize_cams(resized.reshape(*lead, size, size))


def fast_gradcam_torch(model: XCamModel, batch: torch.Tensor | np.ndarray, normalize: bool = True,
                       ) -> torch.Tensor:
    """Grad-CAM of every class in one forward pass, ``[B, C, h, w]`` at feature-map resolution.

    ``normalize`` applies pytorch-grad-cam's per-map min-max (in torch); use
    :func:`cams_to_input_size` for input-resolution maps. Raises ``ValueError`` when the model has
    no GAP → linear head (use autograd Grad-CAM then).
    """
    import torch

    head = model.gap_linear_head()
    if head is None:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} has no GAP→linear head; "
                         "use an autograd CAM method")
    features, linear = head
    param = next(model.parameters())
    x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch)
    x = x.to(device=param.device, dtype=torch.float32)
    with torch.inference_mode():
        cams = raw_cams(features(x).float(), linear.weight.float())
        if normalize:
            cams = cams - cams.amin(dim=(-2, -1), keepdim=True)
            cams = cams / (EPS + cams.amax(dim=(-2, -1), keepdim=True))
    return cams
