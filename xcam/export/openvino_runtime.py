"""OpenVINO backend: :class:`OpenVinoClassifier`, on the same exported ONNX files as ONNX Runtime.

OpenVINO reads ONNX directly (no conversion step, no second cache), so the FP32 export and its
INT8 (QDQ) siblings run unchanged, with the same outputs: ``logits``, ``probabilities`` and the
in-graph all-class ``cams``. It is an optional extra (``pip install xcam[openvino]``); without
it, ``--backend openvino`` is a one-line error and ``auto`` never considers it.

OpenVINO renames some outputs when it reads ONNX (the ``cams`` tensor is reported as
``/Einsum_output_0``, with ``cams`` among its other names), so outputs are matched by every name
a tensor carries. The compiled model uses the LATENCY performance hint (one stream, all usable
cores, ``$XCAM_OV_HINT=THROUGHPUT`` to change it) on the CPU device only: OpenVINO's GPU plugin
is for Intel GPUs, not CUDA.

**INT8 caveat** (measured, see docs/fast-path.md): on a 2-core AMD EPYC with AVX2 only, every
INT8 preset run by OpenVINO 2026.4 differed widely from FP32 (DenseNet121 head features 51 %
mean relative error against 3 % for ONNX Runtime on the same QDQ file; logits off by up to 11
for a spread of 2), at batch 1 and 16 alike. So OpenVINO INT8 is never trusted blindly: ``auto``
runs it only where ``xcam export --quantize int8`` measured it within the accuracy budget.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from xcam.core.errors import XcamError
from xcam.export.onnx_export import OUTPUT_NAMES, read_metadata
from xcam.export.providers import cpu_threads
from xcam.export.runtime import ExportedClassifier

HINTS = ("LATENCY", "THROUGHPUT")


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_version() -> str:
    import openvino

    return str(openvino.__version__).split("-")[0]


class OpenVinoClassifier(ExportedClassifier):
    """An exported classifier on OpenVINO's CPU plugin; satisfies :class:`xcam.core.inference.Classifier`.

    ``backend`` is ``openvino:CPU`` or ``openvino-int8:CPU``.
    """

    def __init__(self, compiled: Any, path: Path, metadata: dict[str, str], kind: str, hint: str) -> None:
        self.compiled, self.hint = compiled, hint
        self._outputs: dict[str, Any] = {}
        for port in compiled.outputs:
            names = port.get_names()
            name = next((n for n in OUTPUT_NAMES if n in names), port.get_any_name())
            self._outputs[name] = port
        shape = compiled.inputs[0].get_partial_shape()
        last = shape[len(shape) - 1]
        size = last.get_length() if last.is_static else 224
        super().__init__(path, metadata, compiled.inputs[0].get_any_name(), list(self._outputs), kind, "CPU", size)
        self.providers = [f"OpenVINO {openvino_version()} CPU"]
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", kind: str | None = None, *,
                  threads: int | None = None, hint: str | None = None) -> OpenVinoClassifier:
        """Compile an exported file for the CPU (a note on stderr when ``device`` asks for a GPU)."""
        path = Path(path)
        if not path.is_file():
            raise XcamError(f"{path}: ONNX file not found")
        if not openvino_available():
            raise XcamError("openvino is not installed: pip install 'xcam[openvino]' (or openvino)")
        import openvino as ov

        hint = (hint or os.environ.get("XCAM_OV_HINT", "LATENCY")).upper()
        if hint not in HINTS:
            raise XcamError(f"unknown OpenVINO performance hint {hint!r}; valid: {', '.join(HINTS)}")
        if device not in ("cpu", "auto"):
            print(f"xcam: OpenVINO runs on the CPU here (--device {device} ignored)", file=sys.stderr)
        core = ov.Core()
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": int(threads or cpu_threads())}
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise XcamError(f"{path}: cannot compile with OpenVINO ({first})") from None
        meta = read_metadata(path)
        if kind is None:
            kind = "openvino-int8" if meta.get("quantization", "none") != "none" else "openvino"
        return cls(compiled, path, meta, kind, hint)

    def run(self, batch: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named outputs for a preprocessed batch ``[B, 1, S, S]`` (all outputs by default;
        OpenVINO computes the whole graph either way)."""
        names = outputs or self.output_names
        missing = [n for n in names if n not in self._outputs]
        if missing:
            raise XcamError(f"{self.path}: no output {missing[0]!r} (has {', '.join(self._outputs)})")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:  # one infer request, reused; its result buffers are copied out
            result = self._request.infer({0: x})
            return {n: np.array(result[self._outputs[n]], copy=True) for n in names}
