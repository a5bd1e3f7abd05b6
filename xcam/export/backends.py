"""Build a classifier on a backend: PyTorch, ONNX Runtime (FP32 or INT8), or ``auto``.

This is the one loader every command uses (:func:`load_classifier`); the backends themselves
are :class:`xcam.core.inference.TorchClassifier` and :class:`xcam.export.runtime.OnnxClassifier`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Mapping

from xcam.core.errors import XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.inference import Classifier
    from xcam.core.manager import XcamPluginManager
    from xcam.core.types import ClassifierRegistration
    from xcam.core.weights import WeightsStore

BACKENDS = ("torch", "onnx", "onnx-int8", "auto")


def load_classifier(
    pm: "XcamPluginManager",
    name: str | None = None,
    variant: str | None = None,
    *,
    backend: str = "torch",
    device: str = "cpu",
    store: "WeightsStore | None" = None,
    random_init: bool = False,
    threads: int | None = None,
) -> "Classifier":
    """Build a classifier by plugin name and variant (``None``: ``[options.NAME] weights`` of
    plugins.toml, else the plugin's default) on ``backend`` (one of :data:`BACKENDS`).
    ``threads``: ONNX Runtime intra-op threads (PyTorch uses ``torch.set_num_threads``)."""
    registration = pm.classifier(name)
    options = pm.config.plugin_options(registration.name)
    if variant is None:
        variant = options.get("weights")
    if backend not in BACKENDS:
        raise XcamError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "torch":
        from xcam.core.inference import TorchClassifier

        model = registration.build(variant, store=store, device=device, options=options, random_init=random_init)
        return TorchClassifier(model, device)
    return load_onnx_classifier(registration, variant, backend=backend, device=device, store=store,
                                random_init=random_init, options=options, threads=threads)


def _fallback_note(message: str) -> None:
    print(f"xcam: {message}", file=sys.stderr)


def load_onnx_classifier(
    registration: ClassifierRegistration,
    variant: str | None = None,
    *,
    backend: str = "onnx",
    device: str = "cpu",
    store: WeightsStore | None = None,
    random_init: bool = False,
    options: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> Classifier:
    """A classifier on ONNX Runtime, exporting (and caching) on first use.

    ``backend``: ``onnx`` (FP32), ``onnx-int8`` (the cached INT8 export; made here when
    ``options['calibration']`` names an image folder), or ``auto`` (ONNX Runtime when an export
    exists or can be made, else PyTorch with one line on stderr).
    """
    from xcam.export.onnx_export import ExportError, ensure_export

    options = dict(options or {})
    build_options = {k: v for k, v in options.items() if k not in ("calibration",)}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend != "auto":
            raise XcamError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
        _fallback_note("onnxruntime is not installed; using PyTorch")
        return _torch(registration, variant, device, store, random_init, build_options)
    try:
        artifact = ensure_export(registration, variant, store=store, random_init=random_init, options=build_options)
    except ExportError as exc:
        if backend != "auto":
            raise
        _fallback_note(f"{exc}; using PyTorch")
        return _torch(registration, variant, device, store, random_init, build_options)
    path = artifact.path
    if backend == "onnx-int8":
        from xcam.export.quantize import ensure_int8

        path = ensure_int8(path, calibration=options.get("calibration"), model=artifact.model)
    from xcam.export.runtime import OnnxClassifier

    return OnnxClassifier.from_path(path, device=device, threads=threads)


def _torch(registration: ClassifierRegistration, variant: str | None, device: str, store: WeightsStore | None,
           random_init: bool, options: Mapping[str, Any]) -> Classifier:
    import torch

    from xcam.core.inference import TorchClassifier

    gpu = device in ("cuda", "tensorrt") or (device == "auto" and torch.cuda.is_available())
    torch_device = "cuda" if gpu else "cpu"
    model = registration.build(variant, store=store, device=torch_device, options=options, random_init=random_init)
    return TorchClassifier(model, torch_device)
