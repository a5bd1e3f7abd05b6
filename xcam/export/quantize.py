"""Static INT8 quantization of an exported model with onnxruntime.quantization (never the default).

What was measured on this project's 2-core AMD EPYC (AVX-512 VNNI) with DenseNet121 at 224 px,
CPU time per image, single thread, interleaved runs (the machine was shared, so wall time was
too noisy to rank configurations; see docs/fast-path.md for the table):

- QDQ, **uint8 activations / int8 weights, per-channel, Conv only**, first conv and the head
  (Gemm/Einsum) left in float: 2.0–2.2× FP32 at batch 1, 1.8–1.9× at batch 16. ← :data:`DEFAULT`
- QOperator, uint8/int8, per-channel, all ops: about the same (2.0× / 1.9×).
- QDQ int8/int8 (S8S8) per-channel, all ops (the earlier attempt): 1.7× / 1.5×; with symmetric
  activations 1.4× / 1.2×; reduce_range: no gain (VNNI has no saturation problem).
- uint8 weights (U8U8): 1.1×. ``quant_pre_process`` (shape inference + optimization): no
  measurable change on top of ONNX Runtime's own graph optimization.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
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
