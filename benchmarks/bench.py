"""The logic behind ``xcam bench`` (also runnable as ``python benchmarks/bench.py --help``).

Sections, each measured with warm-up runs and interleaved repeats (every configuration of a
section runs once per round, round after round, so load from other processes on a shared
machine hits all of them alike; medians are reported):

1. throughput: model × backend × device × batch size → latency p50/p95, images/s, CPU seconds
   per image, peak RSS (psutil sampling) / peak CUDA memory (torch);
2. CAM cost: one class and all classes with pytorch-grad-cam, xcam's gradcam plugin, and the
   fast all-class Grad-CAM (torch einsum, ONNX in-graph) against plain ONNX classification;
3. analyze: the chain every command uses (:func:`xcam.chain.engine.build_chain`, streamed and
   batched as ``xcam analyze`` runs it; Grad-CAM on the target layer, masks and boxes for the
   top-3 findings, written with :func:`xcam.chain.outputs.write_result`, JSON only) against an
   emulation of the older per-class script (classify, then per class a fresh pytorch-grad-cam
   Grad-CAM++ and a matplotlib overlay figure saved as PNG);
4. ratios against the project's targets, machine information.

Random weights by default (saved once under their real file names in ``$XCAM_HOME/bench/weights``
with seed 0, so the ONNX exports are cached across runs); ``--real-weights`` uses the normal store.
Results: a table (rich on a terminal; as wide as its content in a file or a pipe, so model and
backend names are never cut; ``--format markdown`` or ``json`` for either), JSON, and a PNG bar
chart beside the JSON. Every row says what it ran on (``runs_on``: backend, provider, INT8
preset; ``auto`` rows show what ``--backend auto`` chose), and the header and the JSON name the
machine: CPU model, ISA flags (AVX2, AVX-512, VNNI, AMX) and cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

SCHEMA = "xcam-bench/1"
FORMATS = ("table", "markdown", "json")
QUICK_CLASSES = 3  # --quick times per-class loops over this many classes and scales to all
TARGETS = {  # ratio name -> (comparison, threshold, description)
    "onnx_vs_torch_b1": (">=", 2.0, "ONNX FP32 / torch eager images/s, batch 1 (cpu)"),
    "onnx_vs_torch_b16": (">=", 2.0, "ONNX FP32 / torch eager images/s, batch 16 (cpu)"),
    "best_vs_torch_b1": (">=", 2.0, "best CPU backend within its accuracy budget (onnx, openvino, auto: INT8 only where auto chose it) / torch eager images/s, batch 1"),
    "best_vs_torch_b16": (">=", 2.5, "best CPU backend within its accuracy budget (onnx, openvino, auto: INT8 only where auto chose it) / torch eager images/s, batch 16"),
    "best_int8_vs_fp32_b16": (">=", 1.8, "best INT8 (onnx-int8, openvino-int8; accuracy not checked by bench: see xcam export --quantize int8) / ONNX FP32 images/s, batch 16 (cpu)"),
    "int8_vs_fp32_b1": (">=", 1.8, "ONNX INT8 / ONNX FP32 images/s, batch 1 (cpu)"),
    "int8_vs_fp32_b16": (">=", 1.8, "ONNX INT8 / ONNX FP32 images/s, batch 16 (cpu)"),
    "allclass_cam_vs_classify": ("<=", 1.25, "ONNX classify + all-class Grad-CAM time / ONNX classify time"),
    "gradcam_loop_vs_allclass": (">=", 20.0, "pytorch-grad-cam GradCAM over all classes / ONNX all-class time"),
    "analyze_vs_script": (">=", 10.0, "xcam analyze images/s / per-class script images/s"),
}


@dataclass
class BenchSettings:
    models: list[str] = field(default_factory=lambda: ["densenet121"])
    backends: list[str] = field(default_factory=lambda: ["torch", "onnx", "onnx-int8"])
    devices: list[str] | None = None  # None: cpu, plus cuda when available
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    images: str | None = None
    output: str = "bench.json"
    quick: bool = False
    real_weights: bool = False
    sections: list[str] = field(default_factory=lambda: ["throughput", "cams", "analyze"])
    analyze_images: int | None = None
    script_images: int | None = None
    calibration_images: int | None = None
    torch_threads: int | None = None  # None: PyTorch's default (all cores)

    def repeats(self, batch: int) -> tuple[int, int]:
        """(warm-up runs, timed runs) for a batch size."""
        if self.quick:
            return 1, (3 if batch == 1 else 1)
        return 2, (10 if batch == 1 else 3)


# -- measurement ---------------------------------------------------------------------------
class PeakRSS:
    """Samples this process's resident memory every ``interval`` s; :meth:`take` returns the
    peak since the previous call."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._proc, self._interval = psutil.Process(), interval
        self._peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> float:
        peak = max(self._peak, self._proc.memory_info().rss)
        self._peak = 0
        return peak / 2**20


def _cuda_sync() -> None:
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()


def measure(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, images: dict[str, int] | None = None,
            rss: PeakRSS | None = None, gpu: set[str] | None = None,
            no_warmup: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Interleaved timing of several callables: warm-up rounds, then ``repeats`` rounds in which
    each runs once. Returns per name: samples, p50/p95/min (ms), CPU ms, images/s, peak memory.
    ``no_warmup``: names already warmed by a cheaper sibling (e.g. a loop of the same call)."""
    images = images or {}
    no_warmup = no_warmup or set()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, float] = dict.fromkeys(fns, 0.0)
    peaks: dict[str, float] = dict.fromkeys(fns, 0.0)
    gpu_peaks: dict[str, float] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            if name not in no_warmup:
                fn()
    _cuda_sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            if rss is not None:
                rss.take()
            on_gpu = gpu is not None and name in gpu
            if on_gpu:
                import torch

                torch.cuda.reset_peak_memory_stats()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            _cuda_sync()
            samples[name].append(time.perf_counter() - t0)
            cpu[name] += time.process_time() - c0
            if rss is not None:
                peaks[name] = max(peaks[name], rss.take())
            if on_gpu:
                gpu_peaks[name] = max(gpu_peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    out = {}
    for name, times in samples.items():
        arr = np.asarray(times) * 1000
        n = images.get(name, 1)
        out[name] = {
            "p50_ms": float(np.median(arr)), "p95_ms": float(np.percentile(arr, 95)), "min_ms": float(arr.min()),
            "repeats": len(times), "images_per_call": n, "images_per_s": float(n / (np.median(arr) / 1000)),
            "cpu_ms_per_image": float(cpu[name] * 1000 / (len(times) * n)),
            "peak_rss_mb": round(peaks[name], 1) if rss is not None else None,
            "peak_gpu_mb": round(gpu_peaks[name], 1) if name in gpu_peaks else None,
        }
    return out


# -- setup ---------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, GPU, load and library versions."""
    import importlib.metadata as md

    import psutil

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("xcam", "torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "openvino", "onnx", "onnxscript",
                 "numpy",
                 "grad-cam", "torchxrayvision", "opencv-python-headless"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    from xcam.core.cpu import cpu_info

    c = cpu_info()
    info: dict[str, Any] = {
        "cpu": c.model or cpu, "cpu_model": c.model or cpu, "isa": c.isa, "cpu_flags": sorted(c.flags),
        "cpu_key": c.key(), "cores": c.cores, "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cores_logical": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    with contextlib.suppress(Exception):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
    return info


@dataclass
class ModelSetup:
    """One model, on every backend the bench needs, with the same weights."""

    name: str
    registration: Any
    store: Any
    model: Any  # XCamModel on cpu
    fp32: Path
    pool: np.ndarray  # preprocessed images
    pool_source: str
    int8: Path | None = None
    nocam: Path | None = None

    def batch(self, n: int) -> np.ndarray:
        reps = -(-n // len(self.pool))
        return np.ascontiguousarray(np.concatenate([self.pool] * reps)[:n])


def bench_store(real_weights: bool, models: list[str], pm: Any) -> Any:
    """The weights store: real weights, or random ones (seed 0) saved once under the real names."""
    from xcam.core.weights import WeightsStore, xcam_home

    if real_weights:
        return WeightsStore.from_env()
    folder = xcam_home() / "bench" / "weights"
    from xcam.testing import write_random_weights

    for name in models:
        reg = pm.classifier(name)
        if not (folder / reg.default.filename).is_file():
            write_random_weights(reg, folder)
    return WeightsStore(weights_dir=folder, allow_download=False)


def setup_model(pm: Any, name: str, settings: BenchSettings, store: Any, log: Callable[[str], None]) -> ModelSetup:
    from xcam.export.onnx_export import ensure_export
    from xcam.export.samples import image_files, load_batch, synthetic_batch

    reg = pm.classifier(name)
    t = time.perf_counter()
    artifact = ensure_export(reg, store=store)
    log(f"{name}: ONNX export {'made' if artifact.created else 'reused'} ({time.perf_counter() - t:.1f}s) {artifact.path}")
    model = artifact.model or reg.build(store=store)
    folder = settings.images
    if folder is None:
        from xcam.export.samples import default_image_dir

        folder = default_image_dir()
    files = image_files(folder, 16)
    if files:
        pool, source = load_batch(files, reg.input_size, reg.preprocessing), f"{len(files)} images from {folder}"
    else:
        pool, source = synthetic_batch(16, reg.input_size, reg.preprocessing), "16 generated images"
    return ModelSetup(name, reg, store, model.eval(), artifact.path, pool, source)


def int8_for(setup: ModelSetup, settings: BenchSettings, log: Callable[[str], None], runtime: str = "onnxruntime",
             ) -> Path:
    """The INT8 file: the one ``xcam export --quantize int8`` kept on this CPU when it measured
    one, else the default preset made from the bench's calibration images."""
    from xcam.core.cpu import cpu_info
    from xcam.export.quantize import chosen_for

    if chosen_for(setup.fp32, cpu_info().key()) is not None:
        from xcam.export.backends import int8_file

        return int8_file(setup.fp32, None, runtime)
    if setup.int8 is None:
        from xcam.export.quantize import ensure_int8

        n = settings.calibration_images or (8 if settings.quick else 32)
        calib = setup.pool if len(setup.pool) >= n else setup.batch(n)
        folder = settings.images
        if folder is None:
            from xcam.export.samples import default_image_dir

            folder = default_image_dir()
        if folder is not None:
            from xcam.export.samples import image_files, load_batch

            files = image_files(folder, n)
            if files:
                calib = load_batch(files, setup.registration.input_size, setup.registration.preprocessing)
        t = time.perf_counter()
        setup.int8 = ensure_int8(setup.fp32, calib[:n])
        log(f"{setup.name}: INT8 model ready ({time.perf_counter() - t:.1f}s, {len(calib[:n])} calibration images)")
    return setup.int8


# -- sections --------------------------------------------------------------------------------
def make_classifier(setup: ModelSetup, backend: str, device: str, settings: BenchSettings,
                    log: Callable[[str], None]) -> tuple[Any | None, str]:
    """A classifier for ``backend`` on ``device`` or ``(None, reason)``."""
    from xcam.core.inference import TorchClassifier
    from xcam.export.runtime import OnnxClassifier

    if backend in ("torch", "torch-amp", "torch-bf16", "torch-compile"):
        model = setup.model if device == "cpu" else copy.deepcopy(setup.model)
        if backend == "torch":
            return TorchClassifier(model, device), ""
        from xcam.export.torch_accel import AcceleratedTorchClassifier

        amp = "fp16" if device == "cuda" and backend == "torch-amp" else "bf16"
        if backend in ("torch-amp", "torch-bf16"):
            return AcceleratedTorchClassifier(copy.deepcopy(setup.model), device, amp=amp), ""
        return AcceleratedTorchClassifier(copy.deepcopy(setup.model), device, amp=amp if device == "cuda" else None,
                                          compile_mode="max-autotune-no-cudagraphs" if device == "cpu"
                                          else "reduce-overhead"), ""
    if backend == "auto":
        if device != "cpu":
            return None, "auto is measured for CPUs; the cuda rows are onnx"
        from xcam.export.backends import auto_choice, open_backend

        runtime, path, reason = auto_choice(setup.fp32, device)
        log(f"{setup.name} auto → {reason}")
        return open_backend(runtime, path, device), reason
    if backend in ("openvino", "openvino-int8"):
        from xcam.export.openvino_runtime import OpenVinoClassifier, openvino_available

        if device != "cpu":
            return None, "OpenVINO runs on the CPU here"
        if not openvino_available():
            return None, "openvino is not installed (pip install 'xcam[openvino]')"
        path = setup.fp32 if backend == "openvino" else int8_for(setup, settings, log, "openvino")
        return OpenVinoClassifier.from_path(path, device), ""
    if backend in ("onnx", "onnx-int8"):
        if backend == "onnx-int8" and device != "cpu":
            return None, "INT8 (QDQ) is a CPU path here: CUDA EP does not accelerate it"
        path = setup.fp32 if backend == "onnx" else int8_for(setup, settings, log)
        clf = OnnxClassifier.from_path(path, device=device)
        if device == "cuda" and not clf.uses_gpu:
            return None, f"onnxruntime has no CUDA/TensorRT provider here ({', '.join(clf.providers)})"
        return clf, ""
    return None, f"unknown backend {backend!r}"


def runs_on(clf: Any) -> str:
    """What a row actually ran: the classifier's backend, plus the INT8 preset for INT8 files."""
    from xcam.export.quantize import FP32, preset_name

    preset = preset_name(getattr(clf, "metadata", {}) or {})
    return clf.backend + ("" if preset == FP32 else f" [{preset}]")


def section_throughput(setups: list[ModelSetup], settings: BenchSettings, devices: list[str], rss: PeakRSS,
                       log: Callable[[str], None], skipped: list[str],
                       notes: list[str] | None = None) -> list[dict[str, Any]]:
    notes = notes if notes is not None else []
    rows = []
    for setup in setups:
        for device in devices:
            clfs: dict[str, Any] = {}
            for backend in settings.backends:
                clf, why = make_classifier(setup, backend, device, settings, log)
                if clf is None:
                    skipped.append(f"{setup.name} {backend} on {device}: {why}")
                else:
                    clfs[backend] = clf
                    if why:
                        notes.append(f"{setup.name} {backend}: {why}")
            for b in settings.batch_sizes:
                x = setup.batch(b)
                warmup, repeats = settings.repeats(b)
                log(f"{setup.name} {device} batch {b}: {', '.join(clfs)} ({repeats} interleaved rounds)")
                gpu = {k for k in clfs if device == "cuda" and k.startswith("torch")}
                stats = measure({k: (lambda c=c, x=x: c.predict(x)) for k, c in clfs.items()}, warmup, repeats,
                                dict.fromkeys(clfs, b), rss, gpu)
                for backend, s in stats.items():
                    rows.append({"model": setup.name, "backend": backend, "device": device,
                                 "provider": clfs[backend].backend, "runs_on": runs_on(clfs[backend]),
                                 "batch_size": b, **s})
            for c in clfs.values():
                if hasattr(c, "model") and device == "cuda":
                    c.model.cpu()
    return rows


def _cam_variants(setup: ModelSetup, settings: BenchSettings, plugin: Any) -> tuple[dict, list[int]]:
    """The CAM implementations to time for one model (batch 1) and the classes looped over."""
    import torch
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xcam.core.inference import TorchClassifier
    from xcam.core.cam_math import fast_gradcam_torch
    from xcam.export.onnx_export import strip_cams
    from xcam.export.runtime import OnnxClassifier

    model = setup.model
    classes = list(model.valid_indices)
    x = setup.batch(1)
    xt = torch.from_numpy(x)
    full = OnnxClassifier.from_path(setup.fp32, "cpu")
    plain = OnnxClassifier.from_path(strip_cams(setup.fp32), "cpu")
    tc = TorchClassifier(model, "cpu")
    layer = model.target_layer()

    def grad_cam(cls: type, targets: list[int]) -> None:
        with cls(model=model, target_layers=[layer]) as cam:
            for c in targets:
                cam(input_tensor=xt, targets=[ClassifierOutputTarget(c)])

    def onnx_all() -> None:
        full.predict_with_cams(x)  # one inference: probabilities and every class's map

    n = len(classes)
    looped = classes[:QUICK_CLASSES] if settings.quick else classes  # --quick: scaled to n by the caller
    fns = {
        ("onnx", "classify only (graph without cams)", 0): lambda: plain.predict(x),
        ("onnx", f"classify + Grad-CAM of all {n} classes (in-graph)", n): onnx_all,
        ("torch", "forward (eager)", 0): lambda: tc.predict(x),
        ("torch", f"Grad-CAM of all {n} classes (fast_gradcam_torch einsum)", n):
            lambda: fast_gradcam_torch(model, xt),
        ("pytorch-grad-cam", "GradCAM, 1 class", 1): lambda: grad_cam(GradCAM, classes[:1]),
        ("pytorch-grad-cam", f"GradCAM, all {n} classes (loop)", n): lambda: grad_cam(GradCAM, looped),
        ("pytorch-grad-cam", "GradCAM++, 1 class", 1): lambda: grad_cam(GradCAMPlusPlus, classes[:1]),
        ("xcam plugin", "gradcam, 1 class (truncated backward)", 1):
            lambda: plugin.compute(model, xt, classes[:1]),
        ("xcam plugin", f"gradcam, all {n} classes (batched, truncated backward)", n):
            lambda: plugin.compute(model, xt.repeat(len(looped), 1, 1, 1), looped),
    }
    return fns, looped


def section_cams(setups: list[ModelSetup], settings: BenchSettings, log: Callable[[str], None],
                 skipped: list[str]) -> list[dict[str, Any]]:
    from xcam.core.manager import get_plugin_manager
    from xcam.core.cam_math import supports_fast_cam

    plugin = get_plugin_manager().cam_method("gradcam")
    rows = []
    for setup in setups:
        if not supports_fast_cam(setup.model):
            skipped.append(f"{setup.name}: no GAP→linear head, no fast all-class CAM")
            continue
        fns, looped = _cam_variants(setup, settings, plugin)
        n = len(setup.model.valid_indices)
        rounds = 1 if settings.quick else 3
        keyed = {f"{k[0]}|{k[1]}": fn for k, fn in fns.items()}
        loops = {f"{k[0]}|{k[1]}" for k in fns if k[2] > 1 and k[0] in ("pytorch-grad-cam", "xcam plugin")}
        log(f"{setup.name}: CAM cost, {len(fns) - len(loops)} variants × {rounds} interleaved rounds, "
            f"then the {len(loops)} per-class loops once (already warm; seconds each)")
        stats = measure({k: f for k, f in keyed.items() if k not in loops}, 1, rounds)
        stats.update(measure({k: f for k, f in keyed.items() if k in loops}, 0, 1))
        for impl, what, k in fns:
            s = stats[f"{impl}|{what}"]
            scale = n / len(looped) if f"{impl}|{what}" in loops else 1.0
            rows.append({"model": setup.name, "implementation": impl, "what": what, "classes": k,
                         "ms_per_image": s["p50_ms"] * scale, "p95_ms": s["p95_ms"] * scale, "repeats": s["repeats"],
                         "classes_measured": len(looped) if scale != 1.0 else k})
    return rows


def _script_emulation(setup: ModelSetup, files: list[Path], out_dir: Path,
                      classes: list[int] | None = None) -> tuple[float, float, int]:
    """The older per-class script: classify, then for every class a fresh Grad-CAM++ and a
    matplotlib overlay figure saved per class. Returns (seconds outside the class loop, seconds
    in it, classes done)."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = setup.model
    size = model.input_size
    chosen = list(model.valid_indices if classes is None else classes)
    base = per_class = 0.0
    for f in files:
        t0 = time.perf_counter()
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(((2 * img / 255.0 - 1) * 1024)[None, None].astype(np.float32))
        with torch.no_grad():
            probs = model.calibrate(model(x))[0]
        t1 = time.perf_counter()
        for c in chosen:
            with GradCAMPlusPlus(model=model, target_layers=[model.target_layer()]) as cam:
                heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0]
            fig, ax = plt.subplots(figsize=(6, 6))
            ax.imshow(img, cmap="gray")
            im = ax.imshow(heat, cmap="jet", alpha=0.5)
            fig.colorbar(im, ax=ax)
            ax.set_title(f"{model.labels[c]}: {float(probs[c]):.3f}")
            ax.axis("off")
            fig.savefig(out_dir / f"{f.stem}_{c}.png", dpi=100)
            plt.close(fig)
        base += t1 - t0
        per_class += time.perf_counter() - t1
    return base, per_class, len(chosen) * len(files)


ANALYZE_BATCH, ANALYZE_WORKERS = 8, 2  # ``xcam analyze``'s defaults


def section_analyze(setups: list[ModelSetup], settings: BenchSettings, pm: Any, log: Callable[[str], None],
                    skipped: list[str]) -> dict[str, Any]:
    from xcam.chain.engine import build_chain
    from xcam.chain.models import LoadOptions
    from xcam.chain.outputs import write_result
    from xcam.chain.results import Timings
    from xcam.chain.settings import ClassChoice, Overrides, resolve_settings
    from xcam.export.samples import default_image_dir, image_files

    setup = next((s for s in setups if s.name == "densenet121"), setups[0])
    folder = settings.images or default_image_dir()
    files = image_files(folder)
    # the default profile's masks and boxes; Grad-CAM on the target layer, no augmentation
    chain_settings = resolve_settings(pm, None, Overrides(method="gradcam", layers="model", aug_smooth=False,
                                                          eigen_smooth=False))
    choice = ClassChoice(top_k=3, threshold=0.0, ground_truth=False)
    with tempfile.TemporaryDirectory(prefix="xcam-bench-") as tmp:
        if not files:  # generated images written as PNGs
            import cv2

            files = []
            for i, x in enumerate(setup.pool[:4]):
                path = Path(tmp) / f"generated_{i}.png"
                cv2.imwrite(str(path), np.clip((x[0] / 1024 + 1) / 2 * 255, 0, 255).astype(np.uint8))
                files.append(path)
        n = settings.analyze_images or (2 if settings.quick else 8)
        m = settings.script_images or 1
        analyze_files = (files * (n // len(files) + 1))[1 : n + 1]
        result: dict[str, Any] = {"model": setup.name, "images_source": str(folder or "generated"),
                                  "findings_per_image": 3, "method": "gradcam", "profile": chain_settings.profile,
                                  "batch_size": ANALYZE_BATCH, "decode_workers": ANALYZE_WORKERS}
        backends = ["onnx"] if settings.quick else ["onnx", "torch"]
        for backend in backends:
            count = len(analyze_files) if backend == "onnx" else max(1, len(analyze_files) // 2)
            chain = build_chain(pm, setup.name, chain_settings, choice, load=LoadOptions(backend=backend),
                                store=setup.store)
            out = Path(tmp) / f"analyze-{backend}"
            warm = chain.analyze(files[0])  # warm-up: first inference, plugin imports
            if not warm.ok:
                raise RuntimeError(f"analyze warm-up failed on {files[0]}: {warm.error}")
            write_result(warm, out, render=False, arrays=False, analysis_json=True, folder_name="warm-up")
            stages, method = Timings(), warm.results[0].method
            t0 = time.perf_counter()
            for i, item in enumerate(chain.stream(analyze_files[:count], batch_size=ANALYZE_BATCH,
                                                  workers=ANALYZE_WORKERS)):
                if not item.ok:
                    raise RuntimeError(f"analyze failed on {item.path}: {item.error}")
                write_result(item, out, render=False, arrays=False, analysis_json=True,
                             folder_name=f"{i:04d}_{item.stem}")  # repeated files: one folder each
                stages.add(item.timings)
            total = time.perf_counter() - t0
            result[f"pipeline_{backend}"] = {
                "images": count, "seconds_per_image": total / count,
                "images_per_s": count / total, "backend": chain.backends[0], "method": method,
                "stage_ms_per_image": {k: 1000 * v / count for k, v in stages.seconds.items()},
            }
            log(f"analyze ({backend}, {method}): {count / total:.2f} images/s")
        script_dir = Path(tmp) / "script"
        script_dir.mkdir()
        _script_emulation(setup, files[:1], script_dir, setup.model.valid_indices[:1])  # warm-up: imports, 1st figure
        script_files = (files * (m // len(files) + 1))[1 : m + 1]
        n_classes = len(setup.model.valid_indices)
        measured = setup.model.valid_indices[:QUICK_CLASSES] if settings.quick else None
        base, loop, done = _script_emulation(setup, script_files, script_dir, measured)
        total = base + loop * (n_classes * len(script_files)) / done  # exact unless --quick
        result["script"] = {
            "images": len(script_files), "classes_per_image": n_classes,
            "seconds_per_image": total / len(script_files), "images_per_s": len(script_files) / total,
            "what": "torch classify + per class: new pytorch-grad-cam GradCAM++ and a matplotlib overlay PNG",
            "classes_measured_per_image": done // len(script_files),
        }
        log(f"per-class script emulation: {len(script_files) / total:.3f} images/s")
    return result


# -- ratios, output --------------------------------------------------------------------------
def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = [r for r in results.get("throughput", []) if r["device"] == "cpu"]
    for model in dict.fromkeys(r["model"] for r in rows):
        ips = {(r["backend"], r["batch_size"]): r["images_per_s"] for r in rows if r["model"] == model}
        for (backend, b), value in ips.items():
            if backend == "onnx" and ("torch", b) in ips:
                out.setdefault(f"onnx_vs_torch_b{b}", round(value / ips[("torch", b)], 2))
            if backend == "onnx-int8" and ("onnx", b) in ips:
                out.setdefault(f"int8_vs_fp32_b{b}", round(value / ips[("onnx", b)], 2))
        for b in sorted({b for _, b in ips}):
            # INT8 rows are timed whatever their accuracy; an INT8 model within its budget counts
            # through the auto row, which runs it only where `xcam export --quantize int8` kept it
            fast = [v for (backend, bb), v in ips.items()
                    if bb == b and not backend.startswith("torch") and not backend.endswith("-int8")]
            if fast and ("torch", b) in ips:
                out.setdefault(f"best_vs_torch_b{b}", round(max(fast) / ips[("torch", b)], 2))
            int8 = [v for (backend, bb), v in ips.items() if bb == b and backend.endswith("-int8")]
            if int8 and ("onnx", b) in ips:
                out.setdefault(f"best_int8_vs_fp32_b{b}", round(max(int8) / ips[("onnx", b)], 2))
    cams = results.get("cams", [])
    plain = next((r["ms_per_image"] for r in cams if r["what"].startswith("classify only")), None)
    allc = next((r["ms_per_image"] for r in cams if r["implementation"] == "onnx" and "in-graph" in r["what"]), None)
    loop = next((r["ms_per_image"] for r in cams if r["implementation"] == "pytorch-grad-cam" and "loop" in r["what"]),
                None)
    if plain and allc:
        out["allclass_cam_vs_classify"] = round(allc / plain, 3)
    if loop and allc:
        out["gradcam_loop_vs_allclass"] = round(loop / allc, 1)
    analyze = results.get("analyze") or {}
    if "pipeline_onnx" in analyze and "script" in analyze:
        out["analyze_vs_script"] = round(analyze["pipeline_onnx"]["images_per_s"] / analyze["script"]["images_per_s"], 1)
    return out


def targets(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        if name in values:
            v = values[name]
            out[name] = {"value": v, "target": f"{op} {threshold:g}", "met": v >= threshold if op == ">=" else v <= threshold,
                         "what": what}
    return out


def header_line(results: dict[str, Any]) -> str:
    """Which machine measured this: CPU model, ISA flags, cores, GPU, load."""
    m = results["machine"]
    isa = ", ".join(m.get("isa") or []) or "ISA unknown"
    return (f"xcam bench {'(quick) ' if results['quick'] else ''}— {m.get('cpu_model', m['cpu'])} ({isa}), "
            f"{m.get('cores', m['cores_usable'])} cores, GPU: {m.get('gpu', 'none')}, "
            f"load {m.get('load_average_start')} → {m.get('load_average_end')}")


def report_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as ``(title, header, rows)`` tables of strings, for every output format."""
    tables = []
    if results.get("throughput"):
        header = ["model", "backend", "runs on", "device", "batch", "p50 ms", "p95 ms", "images/s", "CPU ms/img",
                  "peak RSS MB", "peak GPU MB"]
        rows = [[r["model"], r["backend"], r.get("runs_on", r["provider"]), r["device"], str(r["batch_size"]),
                 f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['images_per_s']:.1f}", f"{r['cpu_ms_per_image']:.1f}",
                 f"{r['peak_rss_mb'] or 0:.0f}", "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"]
                for r in results["throughput"]]
        tables.append(("Throughput (median of interleaved runs)", header, rows))
    if results.get("cams"):
        rows = []
        for r in results["cams"]:
            what = r["what"]
            if r.get("classes_measured", r["classes"]) != r["classes"]:
                what += f" [{r['classes_measured']} timed, scaled]"
            rows.append([r["model"], r["implementation"], what, f"{r['ms_per_image']:.1f}", f"{r['p95_ms']:.1f}"])
        tables.append(("CAM cost per image (batch 1, cpu)", ["model", "implementation", "what", "ms/image", "p95 ms"],
                       rows))
    a = results.get("analyze")
    if a:
        rows = []
        for key in ("pipeline_onnx", "pipeline_torch"):
            if key in a:
                p = a[key]
                stages = ", ".join(f"{k} {v:.0f}" for k, v in p["stage_ms_per_image"].items())
                rows.append([f"xcam analyze ({p.get('method', 'gradcam')})", p["backend"], str(p["images"]),
                             f"{p['seconds_per_image']:.3f}", f"{p['images_per_s']:.2f}", stages])
        s = a["script"]
        scaled = "" if s["classes_measured_per_image"] == s["classes_per_image"] else \
            f", {s['classes_measured_per_image']} timed, scaled"
        rows.append([f"per-class script ({s['classes_per_image']} classes{scaled})", "torch:cpu", str(s["images"]),
                     f"{s['seconds_per_image']:.2f}", f"{s['images_per_s']:.3f}", ""])
        tables.append((f"End-to-end analyze ({a['model']}, top-3 findings, JSON only; the chain batched by "
                       f"{a.get('batch_size', 1)})",
                       ["approach", "backend", "images", "s/image", "images/s", "stages ms/image"], rows))
    if results.get("targets"):
        rows = [[name, f"{r['value']}", r["target"], "yes" if r["met"] else "no", r["what"]]
                for name, r in results["targets"].items()]
        tables.append(("Targets (ratios within this run)", ["ratio", "value", "target", "met", "meaning"], rows))
    return tables


def _markdown(results: dict[str, Any]) -> str:
    lines = [f"**{header_line(results)}**", ""]
    for title, header, rows in report_tables(results):
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    lines += [f"- {note}" for note in results.get("notes", [])]
    lines += [f"- skipped: {note}" for note in results.get("skipped", [])]
    return "\n".join(lines).rstrip() + "\n"


def print_report(results: dict[str, Any], console: Any = None, fmt: str = "table") -> None:
    """Print the report: ``table`` (rich; on a terminal it fits the window, anywhere else it is
    as wide as its content, so names are never cut), ``markdown`` or ``json`` (the results)."""
    if fmt == "json":
        print(json.dumps(results, indent=2, default=str))
        return
    if fmt == "markdown":
        print(_markdown(results), end="")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: rich would squeeze the tables to 80 columns
            console = Console(width=1000, soft_wrap=True)
    console.print(header_line(results), markup=False, highlight=False)
    for title, header, rows in report_tables(results):
        t = Table(title=title)
        for i, col in enumerate(header):
            numeric = any(k in col for k in ("ms", "images/s", "MB", "batch", "value"))
            t.add_column(col, justify="right" if numeric else "left", no_wrap=i < 3)
        for row in rows:
            t.add_row(*(escape(cell) for cell in row))  # "[default]" is a preset, not markup
        console.print(t)
    for note in results.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    for note in results.get("skipped", []):
        console.print(f"skipped: {note}", markup=False, highlight=False, style="dim")


def plot(results: dict[str, Any], path: Path) -> Path:
    """A PNG bar chart: throughput per configuration, CAM cost per implementation, analyze."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("throughput", "cams", "analyze") if results.get(k)]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(11, 3.6 * max(1, len(panels))), squeeze=False)
    for ax, key in zip(axes[:, 0], panels):
        if key == "throughput":
            rows = results["throughput"]
            labels = [f"{r['model']} {r['backend']} {r['device']} b{r['batch_size']}" for r in rows]
            ax.barh(labels, [r["images_per_s"] for r in rows], color="tab:blue")
            ax.set_xlabel("images/s (higher is better)")
        elif key == "cams":
            rows = results["cams"]
            labels = [f"{r['implementation']}: {r['what']}"[:70] for r in rows]
            ax.barh(labels, [r["ms_per_image"] for r in rows], color="tab:orange")
            ax.set_xscale("log")
            ax.set_xlabel("ms per image, log scale (lower is better)")
        else:
            a = results["analyze"]
            names = [k for k in ("pipeline_onnx", "pipeline_torch", "script") if k in a]
            ax.barh(names, [a[k]["images_per_s"] for k in names], color="tab:green")
            ax.set_xscale("log")
            ax.set_xlabel("end-to-end images/s, log scale")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"xcam bench — {results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(settings: BenchSettings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark, write JSON and PNG, return the results dict."""
    from xcam.core.manager import get_plugin_manager

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    pm = get_plugin_manager()
    for name in settings.models:
        pm.classifier(name)  # unknown names fail before any work
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    devices = settings.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    skipped: list[str] = []
    notes: list[str] = []
    if "cuda" in devices and not torch.cuda.is_available():
        skipped.append("cuda: torch sees no CUDA device")
        devices = [d for d in devices if d != "cuda"]
    results: dict[str, Any] = {"schema": SCHEMA, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "quick": settings.quick, "settings": asdict(settings), "machine": machine_info()}
    store = bench_store(settings.real_weights, settings.models, pm)
    setups = [setup_model(pm, name, settings, store, log) for name in settings.models]
    results["images"] = {s.name: s.pool_source for s in setups}
    with PeakRSS() as rss:
        if "throughput" in settings.sections and devices:
            results["throughput"] = section_throughput(setups, settings, devices, rss, log, skipped, notes)
    if "cams" in settings.sections:
        results["cams"] = section_cams(setups, settings, log, skipped)
    if "analyze" in settings.sections:
        results["analyze"] = section_analyze(setups, settings, pm, log, skipped)
    results["ratios"] = ratios(results)
    results["targets"] = targets(results["ratios"])
    results["skipped"] = skipped
    results["notes"] = notes
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(settings.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    results["chart"] = str(plot(results, out.with_suffix(".png")))
    out.write_text(json.dumps(results, indent=2, default=str))
    return results


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="densenet121")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8")  # also openvino, openvino-int8, auto
    ap.add_argument("--devices", default=None)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--images", default=None)
    ap.add_argument("--output", default="bench.json")
    ap.add_argument("--sections", default="throughput,cams,analyze")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--real-weights", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--format", choices=FORMATS, default="table")
    a = ap.parse_args(argv)
    settings = BenchSettings(models=_csv(a.models), backends=_csv(a.backends),
                             devices=_csv(a.devices) if a.devices else None,
                             batch_sizes=[int(b) for b in _csv(a.batch_sizes)], images=a.images, output=a.output,
                             quick=a.quick, real_weights=a.real_weights, sections=_csv(a.sections),
                             torch_threads=a.torch_threads)
    print_report(run(settings), fmt=a.format)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
