"""Static INT8 quantization of an exported model with onnxruntime.quantization, and the choice
of an INT8 configuration and runtime **by measurement** on the CPU at hand (never the default).

The speed-up of a configuration depends on the CPU (VNNI / AMX or not) far more than on anything
in the model, so no preset is assumed to win: :mod:`xcam.export.tuning` measures the presets of
:data:`PRESETS` on each runtime, and :func:`choose` keeps the fastest one within an accuracy
:class:`Budget` that is also faster than ONNX Runtime FP32 at every batch size measured. The
measurement is recorded per CPU (:func:`write_selection`, keyed by :meth:`xcam.core.cpu.CpuInfo.key`)
and in each INT8 file's metadata; ``--backend auto`` reads it back (:func:`chosen_for`).

Measured (DenseNet121 at 224 px; docs/fast-path.md has the tables):

- 2-core AMD EPYC with AVX-512 VNNI, single-thread CPU time, interleaved: QDQ **uint8
  activations / int8 weights, per-channel, Conv only**, first conv and head in float
  (:data:`DEFAULT`): 2.0–2.2× FP32 at batch 1, 1.8–1.9× at batch 16; QOperator about the same;
  S8S8 all ops 1.7× / 1.5×; symmetric activations 1.4× / 1.2×; U8U8 1.1×.
- 2-core AMD EPYC with AVX2 only (no VNNI), shared machine: U8S8 presets 1.1–1.3× FP32 at batch
  16 on ONNX Runtime, S8S8 slower than FP32; none within p95 |Δp| ≤ 0.03 on the unsaturated test
  head (default 0.040, reduce_range 0.057); OpenVINO INT8 wrong there (p95 0.55).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xcam.core.errors import XcamError


@dataclass(frozen=True)
class QuantConfig:
    """Knobs of :func:`onnxruntime.quantization.quantize_static` that were compared."""

    format: str = "qdq"  # qdq | qoperator
    per_channel: bool = True
    activation_type: str = "uint8"  # uint8 | int8
    weight_type: str = "int8"
    op_types: tuple[str, ...] = ("Conv",)  # () = every op onnxruntime can quantize
    exclude_first_conv: bool = True
    exclude_head: bool = True  # Gemm / MatMul / Einsum (logits and CAMs stay float)
    symmetric_activations: bool = False
    reduce_range: bool = False
    preprocess: bool = False  # onnxruntime's quant_pre_process first
    calibrate_method: str = "minmax"  # minmax | entropy | percentile
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


DEFAULT = QuantConfig()
PRESETS: dict[str, QuantConfig] = {
    "default": DEFAULT,
    "qoperator": QuantConfig(format="qoperator", op_types=()),
    "qdq-s8s8-all": QuantConfig(activation_type="int8", op_types=()),
    "qdq-s8s8-all-symmetric": QuantConfig(activation_type="int8", op_types=(), symmetric_activations=True),
    "qdq-u8s8-conv-reduce-range": QuantConfig(reduce_range=True),
    "qdq-u8s8-conv-preprocessed": QuantConfig(preprocess=True),
}


class BatchReader:
    """A CalibrationDataReader over a preprocessed batch, one image per call."""

    def __init__(self, batch: np.ndarray, input_name: str = "input") -> None:
        self._batch, self._name = batch, input_name
        self._it: Iterator[dict[str, np.ndarray]] = self._items()

    def _items(self) -> Iterator[dict[str, np.ndarray]]:
        for x in self._batch:
            yield {self._name: np.ascontiguousarray(x[None], dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._items()


def _reader(batch: np.ndarray, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(BatchReader, CalibrationDataReader):
        pass

    return Reader(batch, input_name)


def calibration_batch(folder: str | Path, size: int, preprocessing: str = "xrv", limit: int = 32) -> np.ndarray:
    """Up to ``limit`` preprocessed images from ``folder`` (sorted); one-line error when none."""
    from xcam.export.samples import image_files, load_batch

    files = image_files(folder, limit)
    if not files:
        raise XcamError(f"{folder}: no calibration images found (PNG, JPEG or DICOM)")
    return load_batch(files, size, preprocessing)


def _nodes_to_exclude(model_path: Path, config: QuantConfig) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    excluded: list[str] = []
    if config.exclude_first_conv:
        excluded += [n.name for n in graph.node if n.op_type == "Conv"][:1]
    if config.exclude_head:
        excluded += [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul", "Einsum")]
    return excluded


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                  config: QuantConfig = DEFAULT, source: str = "") -> Path:
    """Static INT8 quantization of an exported FP32 file; copies and extends its metadata."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from xcam.export.onnx_export import read_metadata, write_metadata

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": config.symmetric_activations, **config.extra}
    with tempfile.TemporaryDirectory(prefix="xcam-quant-") as tmp:
        source_model = fp32_path
        if config.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source_model = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(source_model))
        partial = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_static's advice lines go to the root logger
        try:
            quantize_static(
                str(source_model), str(partial), _reader(calibration, "input"),
                quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=list(config.op_types) or None,
                per_channel=config.per_channel, reduce_range=config.reduce_range,
                activation_type=types[config.activation_type], weight_type=types[config.weight_type],
                nodes_to_exclude=_nodes_to_exclude(source_model, config),
                calibrate_method=methods[config.calibrate_method], extra_options=extra,
            )
        finally:
            root.setLevel(level)
        meta = read_metadata(fp32_path)
        meta["quantization"] = json.dumps({"type": "int8-static", **asdict(config)})
        meta["calibration"] = source or f"{len(calibration)} images"
        meta["calibration_images"] = str(len(calibration))
        write_metadata(partial, meta)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(out_path)
    return out_path


def preset_name(metadata: Mapping[str, str]) -> str:
    """The :data:`PRESETS` name of an INT8 file's configuration (from its ``quantization``
    metadata); ``fp32`` for an unquantized file, ``custom`` when no preset matches."""
    raw = metadata.get("quantization", "none")
    if raw == "none":
        return FP32
    try:
        config = {k: v for k, v in json.loads(raw).items() if k != "type"}
    except ValueError:
        return "custom"
    for name, preset in PRESETS.items():
        if json.loads(json.dumps(asdict(preset))) == config:
            return name
    return "custom"


def int8_path(fp32_path: str | Path, calibration: np.ndarray, config: QuantConfig = DEFAULT) -> Path:
    """Cache path of the INT8 file: FP32 stem + quantization config + calibration data hash."""
    fp32_path = Path(fp32_path)
    data = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:8]
    return fp32_path.with_name(f"{fp32_path.stem}-int8-{config.key()}-c{data}.onnx")


def ensure_int8(fp32_path: str | Path, calibration: str | Path | np.ndarray | None = None,
                config: QuantConfig = DEFAULT, limit: int = 32, **_: Any) -> Path:
    """The INT8 file for an FP32 export: the cached one, or made from ``calibration`` (a folder
    of images or a preprocessed batch). Without calibration, the newest cached INT8 file."""
    fp32_path = Path(fp32_path)
    if calibration is None:
        found = sorted(fp32_path.parent.glob(f"{fp32_path.stem}-int8-*.onnx"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise XcamError(f"no INT8 export of {fp32_path.name} yet: run `xcam export --quantize int8 "
                            f"--calibration DIR` with the same model and weights")
        return found[-1]
    if isinstance(calibration, np.ndarray):
        batch, source = calibration, f"{len(calibration)} preprocessed images"
    else:
        from xcam.export.onnx_export import read_metadata

        meta = read_metadata(fp32_path)
        batch = calibration_batch(calibration, int(meta.get("input_size", 224)), meta.get("preprocessing", "xrv"),
                                  limit)
        source = f"{len(batch)} images from {calibration}"
    path = int8_path(fp32_path, batch, config)
    if not path.is_file():
        quantize_int8(fp32_path, path, batch, config, source)
    return path


# -- the choice, by measurement ------------------------------------------------------------
FP32 = "fp32"  # the preset name of the unquantized file
RUNTIMES = ("onnxruntime", "openvino")
BASELINE = ("onnxruntime", FP32)  # what every speed-up is relative to
_BACKEND = {("onnxruntime", False): "onnx", ("onnxruntime", True): "onnx-int8",
            ("openvino", False): "openvino", ("openvino", True): "openvino-int8"}
SELECTION_SCHEMA = "xcam-int8-selection/1"


@dataclass(frozen=True)
class Budget:
    """How far a candidate's probabilities may move from ONNX Runtime FP32 on held-out images
    (|Δ probability| over every image and valid class; ``None``: not bounded)."""

    p95: float | None = 0.03
    max: float | None = None
    mean: float | None = None

    def violation(self, accuracy: Mapping[str, Any]) -> str | None:
        """Why ``accuracy`` (an :func:`xcam.export.parity.output_deviation` report) is outside
        the budget, or ``None`` when within."""
        for name, bound in (("p95", self.p95), ("max", self.max), ("mean", self.mean)):
            value = accuracy.get(f"{name}_abs_probabilities")
            if bound is None:
                continue
            if value is None or not math.isfinite(value):
                return f"no {name} |Δp| measured"
            if value > bound:
                return f"{name} |Δp| {value:.3f} > {bound:g}"
        return None


@dataclass
class Candidate:
    """One (runtime, preset) measured on this CPU: images/s per batch size and its deviation
    from ONNX Runtime FP32 on held-out images; ``error`` when it could not be made or run."""

    runtime: str
    preset: str
    file: str
    images_per_s: dict[int, float] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def int8(self) -> bool:
        return self.preset != FP32

    @property
    def backend(self) -> str:
        """The ``--backend`` name that runs it: onnx, onnx-int8, openvino, openvino-int8."""
        return _BACKEND[(self.runtime, self.int8)]

    @property
    def label(self) -> str:
        return f"{self.backend}" + (f" ({self.preset})" if self.int8 else "")


def speedups(candidate: Candidate, baseline: Candidate) -> dict[int, float]:
    """images/s of ``candidate`` / images/s of ``baseline`` per batch size both measured."""
    return {b: v / baseline.images_per_s[b] for b, v in candidate.images_per_s.items()
            if baseline.images_per_s.get(b, 0) > 0}


def score(speedup: Mapping[int, float]) -> float:
    """Geometric mean of the speed-ups (batch sizes weigh alike)."""
    return math.exp(sum(math.log(max(v, 1e-9)) for v in speedup.values()) / len(speedup)) if speedup else 0.0


def verdict(candidate: Candidate, baseline: Candidate, budget: Budget, min_speedup: float = 1.0) -> str:
    """``"baseline"``, ``"eligible"``, or why not: failed, outside the budget, or not faster
    than ONNX Runtime FP32 at some batch size."""
    if (candidate.runtime, candidate.preset) == BASELINE:
        return "baseline"
    if candidate.error:
        return f"failed: {candidate.error}"
    why = budget.violation(candidate.accuracy)
    if why:
        return f"outside budget: {why}"
    sp = speedups(candidate, baseline)
    if not sp:
        return "not timed"
    slow = {b: v for b, v in sp.items() if v <= min_speedup}
    if slow:
        b = min(slow, key=slow.get)
        return f"not faster than onnx FP32: {slow[b]:.2f}× at batch {b}"
    return "eligible"


@dataclass
class Selection:
    """The outcome of :func:`choose`."""

    chosen: Candidate  # what ``auto`` runs on this CPU (the baseline when nothing beats it)
    int8: Candidate | None  # the fastest eligible INT8 candidate, if any
    reason: str  # one line: what was chosen and why
    rows: list[dict[str, Any]]  # every candidate with its speed-ups and verdict


def choose(candidates: Sequence[Candidate], budget: Budget = Budget(), min_speedup: float = 1.0) -> Selection:
    """The fastest candidate (geometric mean of its speed-ups over ONNX Runtime FP32) among those
    within ``budget`` that beat ONNX Runtime FP32 by more than ``min_speedup`` at **every**
    measured batch size; ONNX Runtime FP32 itself when none does. A slower or less accurate
    INT8 model is never chosen, however the others measured."""
    baseline = next((c for c in candidates if (c.runtime, c.preset) == BASELINE and not c.error), None)
    if baseline is None:
        raise XcamError("no ONNX Runtime FP32 measurement to compare the candidates with")
    rows, eligible = [], []
    for c in candidates:
        v = verdict(c, baseline, budget, min_speedup)
        sp = speedups(c, baseline)
        rows.append({"runtime": c.runtime, "preset": c.preset, "backend": c.backend, "file": c.file,
                     "images_per_s": {str(b): round(x, 3) for b, x in c.images_per_s.items()},
                     "speedup": {str(b): round(x, 3) for b, x in sp.items()}, "accuracy": c.accuracy,
                     "verdict": v, "eligible": v == "eligible", "error": c.error})
        if v == "eligible":
            eligible.append((score(sp), c))
    eligible.sort(key=lambda t: -t[0])
    int8 = next((c for _, c in eligible if c.int8), None)
    if not eligible:
        int8_rows = [r for r in rows if r["preset"] != FP32]
        why = "; ".join(f"{r['backend']} {r['preset']}: {r['verdict']}" for r in int8_rows[:3]) or "none measured"
        return Selection(baseline, None, f"onnx FP32: no other candidate was both within budget and faster ({why})",
                         rows)
    best = eligible[0][1]
    sp = speedups(best, baseline)
    acc = best.accuracy.get("p95_abs_probabilities")
    acc_text = f", p95 |Δp| {acc:.3f}" if acc is not None else ""
    speed = ", ".join(f"{v:.2f}× at batch {b}" for b, v in sorted(sp.items()))
    return Selection(best, int8, f"{best.label}: {speed} vs onnx FP32{acc_text} (budget p95 ≤ {budget.p95:g})",
                     rows)


def candidates_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """Candidates back from the rows of a recorded selection (JSON keys are strings)."""
    return [Candidate(r["runtime"], r["preset"], r["file"], {int(b): float(v) for b, v in r["images_per_s"].items()},
                      dict(r.get("accuracy") or {}), r.get("error", "")) for r in rows]


def selection_path(fp32_path: str | Path) -> Path:
    """The per-CPU measurement record beside an FP32 export (``<stem>.selection.json``)."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(f"{fp32_path.stem}.selection.json")


def read_selections(fp32_path: str | Path) -> dict[str, Any]:
    """Every CPU's recorded entry, by CPU key (``{}`` when none or unreadable)."""
    path = selection_path(fp32_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("by_cpu", {}) if isinstance(data, dict) and data.get("schema") == SELECTION_SCHEMA else {}


def write_selection(fp32_path: str | Path, entry: Mapping[str, Any]) -> Path:
    """Record ``entry`` (from :func:`xcam.export.tuning.tune_int8`) for its CPU key, keeping the
    other CPUs' entries; written atomically."""
    import os
    import tempfile

    path = selection_path(fp32_path)
    data = {"schema": SELECTION_SCHEMA, "by_cpu": {**read_selections(fp32_path), entry["cpu"]["key"]: dict(entry)}}
    fd, tmp = tempfile.mkstemp(suffix=".json.tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(tmp, path)
    return path


def chosen_for(fp32_path: str | Path, cpu_key: str) -> tuple[Selection, dict[str, Any]] | None:
    """The selection recorded for this CPU, re-derived from its measured candidates with the
    recorded budget (so a stale or edited record cannot choose a slower or less accurate model);
    ``None`` when this CPU has no record."""
    entry = read_selections(fp32_path).get(cpu_key)
    if not entry:
        return None
    b = entry.get("budget") or {}
    budget = Budget(b.get("p95"), b.get("max"), b.get("mean"))
    return choose(candidates_from_rows(entry["candidates"]), budget, float(entry.get("min_speedup", 1.0))), entry
