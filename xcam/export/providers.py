"""ONNX Runtime execution providers and session options.

Preference: TensorRT (FP16, persistent engine cache) → CUDA → CPU, restricted by ``device``:

- ``cpu``: CPU only;
- ``cuda``: TensorRT then CUDA when onnxruntime has them, else CPU with one line on stderr;
- ``auto``: the best available, silently;
- ``$XCAM_ORT_PROVIDERS`` (e.g. ``cuda,cpu``) overrides the list; a requested provider that
  onnxruntime lacks is skipped with one line on stderr naming what is used instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
SHORT = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "cpu": CPU}
GPU_PROVIDERS = (TRT, CUDA)

ProviderSpec = tuple[str, dict[str, Any]]


def available_providers() -> list[str]:
    """What this onnxruntime build offers (CPU-only wheels offer only the CPU provider)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cpu_threads() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None, spinning: bool | None = None) -> Any:
    """Intra-op threads = all cores, graph optimization ALL, sequential execution.

    ``spinning`` (default: ``$XCAM_ORT_SPIN`` = 1, else off): ONNX Runtime's worker threads
    busy-wait for work after each run. Off by default because an xcam process usually also runs
    PyTorch (CAM methods) and shares its cores: measured on the 2-core machine, spinning ORT
    threads slowed the PyTorch passes that followed them by an order of magnitude.
    """
    import onnxruntime as ort

    if spinning is None:
        spinning = os.environ.get("XCAM_ORT_SPIN", "0") in ("1", "true", "yes")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # errors only: provider fallbacks are reported by xcam in one line
    return so


def gpu_name(device_id: int = 0) -> str:
    """The GPU's name for cache keys (nvidia-smi; ``gpu{id}`` when unknown)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", f"--id={device_id}"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return "".join(c if c.isalnum() else "-" for c in out) or f"gpu{device_id}"


def trt_cache_dir(model_key: str, input_size: int, max_batch: int, device_id: int = 0) -> Path:
    """Persistent TensorRT engine cache folder keyed by model, input shape and GPU."""
    from xcam.core.weights import xcam_home

    return xcam_home() / "trt" / f"{model_key}-s{input_size}-b{max_batch}-{gpu_name(device_id)}"


def tensorrt_options(cache_dir: Path, input_name: str, input_size: int, max_batch: int = 32,
                     opt_batch: int = 16, device_id: int = 0) -> dict[str, Any]:
    """FP16 TensorRT with a persistent engine and timing cache and a dynamic-batch profile."""
    shape = f"1x{input_size}x{input_size}"
    return {
        "device_id": device_id,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": f"{input_name}:1x{shape}",
        "trt_profile_opt_shapes": f"{input_name}:{opt_batch}x{shape}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{shape}",
    }


def requested(device: str) -> list[str]:
    """Providers wanted for ``device`` (before checking availability)."""
    env = os.environ.get("XCAM_ORT_PROVIDERS", "").strip()
    if env:
        wanted = [SHORT.get(p.strip().lower(), p.strip()) for p in env.split(",") if p.strip()]
        return wanted if CPU in wanted else [*wanted, CPU]
    if device == "cpu":
        return [CPU]
    if device in ("cuda", "auto", "gpu"):
        return [TRT, CUDA, CPU]
    if device == "tensorrt":
        return [TRT, CUDA, CPU]
    raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda, tensorrt")


def select_providers(device: str, available: Sequence[str] | None = None, *, trt: dict[str, Any] | None = None,
                     device_id: int = 0) -> tuple[list[ProviderSpec], str | None]:
    """``(providers with options, note)``: the note is one line saying what was requested but is
    unavailable and what is used instead (``None`` when nothing is missing or device is auto)."""
    have = list(available) if available is not None else available_providers()
    wanted = requested(device)
    chosen = [p for p in wanted if p in have] or [CPU]
    specs: list[ProviderSpec] = []
    for name in chosen:
        if name == TRT:
            specs.append((TRT, dict(trt or {"device_id": device_id, "trt_fp16_enable": True})))
        elif name == CUDA:
            specs.append((CUDA, {"device_id": device_id}))
        else:
            specs.append((name, {}))
    note = None
    explicit = bool(os.environ.get("XCAM_ORT_PROVIDERS", "").strip())
    missing = [p for p in wanted if p not in have]
    if explicit and missing:
        note = f"onnxruntime lacks {', '.join(missing)} (available: {', '.join(have)}); using {chosen[0]}"
    elif device in ("cuda", "tensorrt") and chosen[0] not in GPU_PROVIDERS:
        note = (f"--device {device} requested but onnxruntime has no CUDA/TensorRT provider "
                f"(available: {', '.join(have)}; install onnxruntime-gpu); using {CPU}")
    elif device == "tensorrt" and chosen[0] != TRT:
        note = f"TensorRT requested but onnxruntime lacks {TRT}; using {chosen[0]}"
    return specs, note


def report(note: str | None) -> None:
    """Print a provider note as one line on stderr."""
    if note:
        print(f"xcam: {note}", file=sys.stderr)
