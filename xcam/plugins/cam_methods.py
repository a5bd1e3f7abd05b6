"""Built-in CAM methods, all from pytorch-grad-cam on the classifier's declared target layer.

``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam``, ``layercam`` (gradient methods),
``scorecam``, ``ablationcam`` (forward-only, one pass per channel: slow) and ``eigencam``
(class-agnostic first principal component of the activations).

Every ``compute`` has the signature of :class:`xcam.core.types.CamMethodRegistration`::

    compute(model, batch, class_indices, *, target_layer=None, aug_smooth=False, eigen_smooth=False,
            batch_size=None, images_per_call=None, ablation_ratio=1.0, truncate_backward=True,
            share_forward=True)
        -> float32 [B, S, S] in [0, 1]

``target_layer`` is a dotted module path inside the model (default: the model's declared
``target_layer_path``); the chain passes it to fuse CAMs of several layers.

and follows three rules that pytorch-grad-cam leaves to its caller:

* one ``ClassifierOutputTarget`` **per image** (a single target for a batch silently gives zero
  maps for every image but the first);
* the CAM object is used as a context manager (its hooks leak otherwise), and an ``IndexError``
  that its ``__exit__`` swallows is turned back into an error;
* targets are raw logits (``model.forward``), never calibrated probabilities.

``truncate_backward`` (default on) detaches the target layer's output inside the forward pass, so
the backward pass runs only through the head after the target layer instead of the whole
network. The gradient of the score with respect to the target activations — all that these
methods use — is unchanged (``tests/test_cam_methods.py`` checks this against the untouched
library call). With ``share_forward`` (default on), a batch whose images are all the same (several
classes of one image, as :mod:`xcam.chain` sends them) goes through the network once: the
target layer's output is repeated along the batch, one row per class, so K classes cost one
forward pass instead of K. (Needs a head that treats batch rows independently after the target
layer, true of the built-in classifiers; otherwise it falls back to K passes.) Neither applies to
ScoreCAM and AblationCAM, which perturb every input themselves. ``batch_size`` is pytorch-grad-cam's number of masked/ablated inputs per forward
pass (ScoreCAM, AblationCAM); ``images_per_call`` bounds how many images go through one call
(memory: ScoreCAM holds ``channels × S × S`` floats per image). Every map is made finite and
min–max normalized per image; a constant or all-NaN map becomes zeros.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from xcam.core.hookspecs import hookimpl
from xcam.core.types import CamMethodRegistration

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from xcam.core.model import XCamModel

# name -> (pytorch_grad_cam class name, uses gradients, default images per call, description)
METHODS: dict[str, tuple[str, bool, int, str]] = {
    "gradcam": ("GradCAM", True, 8, "Grad-CAM (Selvaraju et al. 2017): gradient-averaged channel weights"),
    "gradcam++": ("GradCAMPlusPlus", True, 8, "Grad-CAM++ (Chattopadhay et al. 2018): higher-order gradient weights"),
    "hirescam": ("HiResCAM", True, 8, "HiResCAM (Draelos & Carin 2020): gradient × activation, summed over channels"),
    "xgradcam": ("XGradCAM", True, 8, "XGrad-CAM (Fu et al. 2020): activation-normalized gradient weights"),
    "layercam": ("LayerCAM", True, 8, "LayerCAM (Jiang et al. 2021): positive gradients × activations per pixel"),
    "scorecam": ("ScoreCAM", False, 1, "Score-CAM (Wang et al. 2020): one forward pass per channel (slow)"),
    "ablationcam": ("AblationCAM", False, 1, "Ablation-CAM (Desai & Ramaswamy 2020): one forward pass per channel (slow)"),
    "eigencam": ("EigenCAM", False, 8, "Eigen-CAM (Muhammad & Yeasin 2020): first principal component, class-agnostic"),
}


PER_IMAGE_FORWARD = frozenset({"scorecam", "ablationcam"})
"""Methods that perturb each input image themselves (no shared forward pass, no truncation)."""


def normalize_maps(maps: "np.ndarray") -> "np.ndarray":
    """Per map: NaN/inf → 0, then ``(m − min) / (max − min)``; a constant map → zeros. float32."""
    import numpy as np

    a = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = a.min(axis=(-2, -1), keepdims=True)
    span = a.max(axis=(-2, -1), keepdims=True) - lo
    out = np.where(span > 1e-12, (a - lo) / np.where(span > 1e-12, span, 1.0), 0.0)
    return out.astype(np.float32)


class _TargetHook:
    """Forward hook on the target layer: returns its output detached, as a leaf that requires grad
    (the backward pass stops there), and repeated ``repeat`` times along the batch when the layer
    saw one image (one forward pass serves several classes of the same image)."""

    def __init__(self) -> None:
        self.repeat = 1

    def __call__(self, module: Any, inputs: Any, output: "torch.Tensor") -> "torch.Tensor":
        out = output.detach()
        if self.repeat > 1 and out.shape[0] == 1:
            out = out.repeat(self.repeat, *([1] * (out.ndim - 1)))
        return out.requires_grad_(True)


@contextlib.contextmanager
def _hooked(layer: "torch.nn.Module", hook: _TargetHook | None) -> Iterator[None]:
    if hook is None:
        yield
        return
    handle = layer.register_forward_hook(hook, prepend=True)  # before pytorch-grad-cam's own hooks
    try:
        yield
    finally:
        handle.remove()


class _SilentTqdm:
    """Stand-in for the ``tqdm`` module inside pytorch-grad-cam (no per-channel progress bars)."""

    @staticmethod
    def tqdm(iterable: Iterable, *args: Any, **kwargs: Any) -> Iterable:
        return iterable


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence ScoreCAM's and AblationCAM's own tqdm bars while they run."""
    from pytorch_grad_cam import ablation_cam, score_cam

    saved = [(m, m.tqdm) for m in (score_cam, ablation_cam)]
    for module, _ in saved:
        module.tqdm = _SilentTqdm
    try:
        yield
    finally:
        for module, original in saved:
            module.tqdm = original


def _make_cam(name: str, model: "torch.nn.Module", layer: "torch.nn.Module", batch_size: int | None, ratio: float) -> Any:
    import pytorch_grad_cam

    cls = getattr(pytorch_grad_cam, METHODS[name][0])
    if name == "ablationcam":  # a fresh AblationLayer: the library's default instance is shared and stateful
        return cls(model, [layer], ablation_layer=pytorch_grad_cam.AblationLayer(), batch_size=batch_size or 32,
                   ratio_channels_to_ablate=float(ratio))
    cam = cls(model, [layer])
    if name == "scorecam" and batch_size:
        cam.batch_size = int(batch_size)
    return cam


def compute_cam(
    name: str,
    model: "XCamModel",
    batch: "torch.Tensor",
    class_indices: Sequence[int],
    *,
    target_layer: str | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    batch_size: int | None = None,
    images_per_call: int | None = None,
    ablation_ratio: float = 1.0,
    truncate_backward: bool = True,
    share_forward: bool = True,
    **_: Any,
) -> "np.ndarray":
    """CAMs of method ``name`` for ``batch`` ``[B, C, S, S]``, one class index per image → ``[B, S, S]``."""
    import numpy as np
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    indices = [int(i) for i in class_indices]
    if batch.ndim != 4:
        raise ValueError(f"batch must be [B, C, H, W], got shape {tuple(batch.shape)}")
    if len(indices) != batch.shape[0]:
        raise ValueError(f"{len(indices)} class indices for a batch of {batch.shape[0]} images (one per image)")
    n_out = len(model.labels)
    bad = [i for i in indices if not 0 <= i < n_out]
    if bad:
        raise ValueError(f"class indices {bad} out of range for {n_out} outputs")
    if batch.shape[0] == 0:
        return np.zeros((0, *batch.shape[-2:]), dtype=np.float32)

    default_chunk = METHODS[name][2]
    per_image_forward = name in PER_IMAGE_FORWARD
    chunk = max(1, int(images_per_call or default_chunk))
    layer_path = target_layer or model.target_layer_path
    try:
        layer = model.get_submodule(layer_path)
    except AttributeError:
        raise ValueError(f"{name}: the model has no layer {layer_path!r}") from None
    hook = _TargetHook() if truncate_backward and not per_image_forward else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode(False), torch.enable_grad(), _quiet_progress(), np.errstate(all="ignore"), \
                _hooked(layer, hook):
            x_all = batch.detach().to(device=device, dtype=torch.float32).clone()
            for start in range(0, len(indices), chunk):
                x = x_all[start : start + chunk]
                targets = [ClassifierOutputTarget(i) for i in indices[start : start + chunk]]
                maps = None
                if hook is not None and share_forward and len(x) > 1 and bool((x == x[:1]).all()):
                    maps = _shared(name, model, layer, layer_path, hook, x, targets, aug_smooth, eigen_smooth)
                if maps is None:
                    maps = _run(name, model, layer, layer_path, x, targets, aug_smooth, eigen_smooth, batch_size,
                                ablation_ratio)
                out.append(maps)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return normalize_maps(np.concatenate(out, axis=0))


def _run(name: str, model: "XCamModel", layer: "torch.nn.Module", layer_path: str, x: "torch.Tensor", targets: list,
         aug_smooth: bool, eigen_smooth: bool, batch_size: int | None = None, ablation_ratio: float = 1.0
         ) -> "np.ndarray":
    """One pytorch-grad-cam call, its hooks released; an IndexError it swallows becomes an error."""
    import numpy as np

    maps = None
    with _make_cam(name, model, layer, batch_size, ablation_ratio) as cam:
        maps = cam(input_tensor=x, targets=targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    if maps is None:  # BaseCAM.__exit__ swallows IndexError
        raise RuntimeError(f"{name}: pytorch-grad-cam failed on target layer {layer_path!r}")
    return np.asarray(maps)


def _shared(name: str, model: "XCamModel", layer: "torch.nn.Module", layer_path: str, hook: _TargetHook,
            x: "torch.Tensor", targets: list, aug_smooth: bool, eigen_smooth: bool) -> "np.ndarray | None":
    """Several classes of one image from one forward pass (``None``: the model's head does not allow it)."""
    hook.repeat = len(x)
    try:
        maps = _run(name, model, layer, layer_path, x[:1], targets, aug_smooth, eigen_smooth)
    except RuntimeError:  # e.g. the head mixes the target output with earlier activations of batch 1
        return None
    finally:
        hook.repeat = 1
    return maps if maps.shape[0] == len(x) else None


def _method(name: str) -> Callable[..., "np.ndarray"]:
    def compute(model: "XCamModel", batch: "torch.Tensor", class_indices: Sequence[int], **options: Any) -> "np.ndarray":
        return compute_cam(name, model, batch, class_indices, **options)

    compute.__name__ = f"compute_{name.replace('+', 'p')}"
    compute.__doc__ = f"{METHODS[name][3]} (see :func:`compute_cam`)."
    return compute


@hookimpl
def xcam_cam_methods() -> Iterable[CamMethodRegistration]:
    for name, (_, uses_gradients, _, description) in METHODS.items():
        yield CamMethodRegistration(
            name=name, compute=_method(name), description=description, needs_gradients=uses_gradients
        )
