"""Build a classifier on a backend: PyTorch, ONNX Runtime or OpenVINO (FP32 or INT8), or ``auto``.

This is the one loader every command uses (:func:`load_classifier`); the backends themselves
are :class:`xcam.core.inference.TorchClassifier`, :class:`xcam.export.runtime.OnnxClassifier`
and :class:`xcam.export.openvino_runtime.OpenVinoClassifier`.

``auto`` on a CPU runs what ``xcam export --quantize int8`` measured fastest **on this CPU**
(model, ISA flags and cores: :meth:`xcam.core.cpu.CpuInfo.key`) among the candidates within the
accuracy budget (:func:`xcam.export.quantize.chosen_for`, which re-derives the choice from the
recorded measurements); ONNX Runtime FP32 when this CPU has no measurement. It never runs an
INT8 model that measured slower than ONNX Runtime FP32 or outside its budget, and says in one
line on stderr what it chose and why.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from xcam.core.errors import XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.inference import Classifier
    from xcam.core.manager import XcamPluginManager
    from xcam.core.types import ClassifierRegistration
    from xcam.core.weights import WeightsStore

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "auto")


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
    """A classifier on an exported file, exporting (and caching) on first use.

    ``backend``: ``onnx`` (FP32 on ONNX Runtime), ``onnx-int8`` (the INT8 export kept by the
    measurement on this CPU, else the newest cached one; made here when ``options['calibration']``
    names an image folder), ``openvino`` / ``openvino-int8`` (the same files on OpenVINO), or
    ``auto`` (see the module docstring; PyTorch with one line on stderr when no export can be made).
    """
    from xcam.export.onnx_export import ExportError, ensure_export

    options = dict(options or {})
    build_options = {k: v for k, v in options.items() if k not in ("calibration",)}
    runtime = "openvino" if backend.startswith("openvino") else "onnxruntime"
    try:
        if runtime == "openvino":
            import openvino  # noqa: F401
        else:
            import onnxruntime  # noqa: F401
    except ImportError:
        if backend != "auto":
            hint = "'xcam[openvino]' (or openvino)" if runtime == "openvino" else "onnxruntime (or onnxruntime-gpu)"
            raise XcamError(f"{runtime} is not installed: pip install {hint}") from None
        _fallback_note("onnxruntime is not installed; using PyTorch")
        return _torch(registration, variant, device, store, random_init, build_options)
    try:
        artifact = ensure_export(registration, variant, store=store, random_init=random_init, options=build_options)
    except ExportError as exc:
        if backend != "auto":
            raise
        _fallback_note(f"{exc}; using PyTorch")
        return _torch(registration, variant, device, store, random_init, build_options)
    if backend == "auto":
        return _auto(artifact.path, device, threads)
    path = artifact.path
    if backend.endswith("-int8"):
        path = int8_file(path, options.get("calibration"), runtime)
    return open_backend(runtime, path, device, threads)


def open_backend(runtime: str, path: Path, device: str = "cpu", threads: int | None = None) -> Classifier:
    """An exported file on ``runtime`` (``onnxruntime`` or ``openvino``)."""
    if runtime == "openvino":
        from xcam.export.openvino_runtime import OpenVinoClassifier

        return OpenVinoClassifier.from_path(path, device=device, threads=threads)
    from xcam.export.runtime import OnnxClassifier

    return OnnxClassifier.from_path(path, device=device, threads=threads)


def int8_file(fp32: Path, calibration: Any, runtime: str) -> Path:
    """The INT8 file for an explicit ``*-int8`` backend: made from ``calibration`` when given,
    else the one the measurement on this CPU kept, else the newest cached one. A one-line note
    when this CPU's measurement rejected it (the user asked for it explicitly)."""
    from xcam.core.cpu import cpu_info
    from xcam.export.quantize import FP32, chosen_for, ensure_int8, score

    if calibration is not None:
        return ensure_int8(fp32, calibration=calibration)
    record = chosen_for(fp32, cpu_info().key())
    if record is not None:
        selection, _ = record
        kept = [r for r in selection.rows if r["runtime"] == runtime and r["preset"] != FP32 and r["eligible"]]
        if kept:
            best = max(kept, key=lambda r: score({int(b): float(v) for b, v in r["speedup"].items()}))
            if (fp32.parent / best["file"]).is_file():
                return fp32.parent / best["file"]
        path = ensure_int8(fp32)
        rows = [r for r in selection.rows if r["runtime"] == runtime and r["file"] == path.name]
        if rows:
            _fallback_note(f"{path.name} on {runtime} was not kept on this CPU ({rows[0]['verdict']}); "
                           "running it because it was asked for")
        return path
    return ensure_int8(fp32)


def _uses_gpu(device: str) -> bool:
    if device in ("cuda", "tensorrt", "gpu"):
        return True
    if device != "auto":
        return False
    from xcam.export.providers import GPU_PROVIDERS, available_providers

    return any(p in GPU_PROVIDERS for p in available_providers())


def auto_choice(fp32: Path, device: str = "cpu") -> tuple[str, Path, str]:
    """``(runtime, file, one-line reason)`` that ``auto`` runs for the FP32 export ``fp32``."""
    from xcam.core.cpu import cpu_info
    from xcam.export.quantize import FP32, chosen_for, read_selections

    if _uses_gpu(device):
        return "onnxruntime", fp32, "onnx FP32 on the GPU (INT8 and OpenVINO are measured for CPUs only)"
    cpu = cpu_info()
    record = chosen_for(fp32, cpu.key())
    if record is None:
        others = [e.get("cpu", {}).get("key", k) for k, e in read_selections(fp32).items()]
        seen = f"; measured only on {', '.join(others)}" if others else ""
        return ("onnxruntime", fp32, f"onnx FP32: no INT8/OpenVINO measurement for this CPU ({cpu.describe()}){seen}; "
                "`xcam export --quantize int8 --calibration DIR` measures them")
    selection, entry = record
    chosen = selection.chosen
    when = f"measured {entry.get('measured', '?')[:10]} on this CPU ({cpu.describe()})"
    if chosen.preset == FP32 and chosen.runtime == "onnxruntime":
        return "onnxruntime", fp32, f"{selection.reason}; {when}"
    path = fp32.parent / chosen.file
    if not path.is_file():
        return "onnxruntime", fp32, f"onnx FP32: the chosen {chosen.label} file {chosen.file} is missing"
    if chosen.runtime == "openvino":
        from xcam.export.openvino_runtime import openvino_available

        if not openvino_available():
            return "onnxruntime", fp32, f"onnx FP32: {chosen.label} was fastest here but openvino is not installed"
    return chosen.runtime, path, f"{selection.reason}; {when}"


def _auto(fp32: Path, device: str, threads: int | None) -> Classifier:
    runtime, path, reason = auto_choice(fp32, device)
    _fallback_note(f"--backend auto → {reason}")
    return open_backend(runtime, path, device, threads)


def _torch(registration: ClassifierRegistration, variant: str | None, device: str, store: WeightsStore | None,
           random_init: bool, options: Mapping[str, Any]) -> Classifier:
    import torch

    from xcam.core.inference import TorchClassifier

    gpu = device in ("cuda", "tensorrt") or (device == "auto" and torch.cuda.is_available())
    torch_device = "cuda" if gpu else "cpu"
    model = registration.build(variant, store=store, device=torch_device, options=options, random_init=random_init)
    return TorchClassifier(model, torch_device)
