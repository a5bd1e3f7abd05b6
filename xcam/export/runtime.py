"""ONNX Runtime backend: :class:`OnnxClassifier`, on :class:`ExportedClassifier` (what every
runtime of an exported file shares; OpenVINO's is :mod:`xcam.export.openvino_runtime`).

The classifier is built from the exported file alone (labels, input size, preprocessing and
thresholds come from its metadata), so a cached export runs without importing torch. It has no
autograd model; an export with a ``cams`` output declares ``in_graph_cams = {"gradcam"}``.
Loading (export on first use, INT8, fallbacks) is :func:`xcam.export.backends.load_classifier`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xcam.core.errors import XcamError
from xcam.export import providers as prov

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel


class ExportedClassifier:
    """What every runtime of an exported file shares: the classifier described by the file's
    ``xcam.*`` metadata (labels, input size, thresholds, CAM layer) and the methods of
    :class:`xcam.core.inference.Classifier` built on :meth:`run`, which subclasses implement.

    ``backend`` is ``"<kind>:<where it runs>"``, e.g. ``onnx:CPUExecutionProvider``.
    """

    uses_gpu = False

    def __init__(self, path: Path, metadata: Mapping[str, str], input_name: str, output_names: list[str],
                 kind: str, where: str, input_size: int = 224) -> None:
        self.path, self.metadata = Path(path), dict(metadata)
        self.name = self.metadata.get("model", self.path.stem)
        self.variant = self.metadata.get("variant", "")
        self.labels: list[str] = json.loads(self.metadata.get("labels", "[]"))
        self.input_size = int(self.metadata.get("input_size", input_size))
        self.preprocessing = self.metadata.get("preprocessing", "xrv")
        threshs = json.loads(self.metadata.get("op_threshs", "null"))
        self.op_threshs = None if threshs is None else np.array([np.nan if t is None else t for t in threshs],
                                                                np.float32)
        self.valid_indices = [i for i, label in enumerate(self.labels)
                              if label and (self.op_threshs is None or not np.isnan(self.op_threshs[i]))]
        self.cam_layer = self.metadata.get("cam_target_layer", "")
        self.localization_layers: tuple[str, ...] = tuple(json.loads(self.metadata.get("localization_layers", "[]")))
        self.input_name, self.output_names = input_name, list(output_names)
        self.kind = kind
        self.backend = f"{kind}:{where}"
        self.in_graph_cams: frozenset[str] = frozenset({"gradcam"}) if "cams" in self.output_names else frozenset()
        self.autograd_model: XCamModel | None = None

    @property
    def quantized(self) -> bool:
        """Whether the file is an INT8 export (its ``quantization`` metadata)."""
        return self.metadata.get("quantization", "none") != "none"

    def run(self, batch: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named outputs for a preprocessed batch ``[B, 1, S, S]`` (all outputs by default)."""
        raise NotImplementedError

    # -- the Classifier protocol, on run() -------------------------------------------------
    @property
    def has_cams(self) -> bool:
        return "cams" in self.output_names

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, ["logits"])["logits"]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (the CAM part of the graph is not run)."""
        return self.run(batch, ["probabilities"])["probabilities"]

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Sigmoid, then xrv's op_norm when the export carries thresholds (NaN → 0.5)."""
        probs = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, np.float64)))  # sigmoid without overflow
        if self.op_threshs is None:
            return probs.astype(np.float32)
        t = np.broadcast_to(self.op_threshs.astype(np.float64), probs.shape)
        valid = ~np.isnan(t)
        safe = np.where(valid, t, 0.5)
        out = np.where(probs < safe, probs / (safe * 2), 1.0 - (1.0 - probs) / ((1 - safe) * 2))
        return np.where(valid, out, 0.5).astype(np.float32)

    def all_class_cams(self, batch: np.ndarray) -> np.ndarray | None:
        """Grad-CAM of every class ``[B, C, h, w]``, min-max normalized to [0, 1] per map;
        ``None`` when the export has no ``cams`` output (no GAP → linear head)."""
        return self.predict_with_cams(batch)[1]

    def predict_with_cams(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and normalized all-class CAMs from one pass."""
        if not self.has_cams:
            return self.predict(batch), None
        from xcam.core.cam_math import normalize_cams

        out = self.run(batch, ["probabilities", "cams"])
        return out["probabilities"], normalize_cams(out["cams"])


class OnnxClassifier(ExportedClassifier):
    """An exported classifier on ONNX Runtime; satisfies :class:`xcam.core.inference.Classifier`.

    ``backend`` is ``"<kind>:<provider actually used>"``, e.g. ``onnx:CPUExecutionProvider``.
    """

    def __init__(self, session: Any, path: Path, metadata: Mapping[str, str], kind: str = "onnx",
                 device_id: int = 0) -> None:
        self.session = session
        self.providers: list[str] = list(session.get_providers())
        super().__init__(path, metadata, session.get_inputs()[0].name, [o.name for o in session.get_outputs()],
                         kind, self.providers[0], _static_size(session.get_inputs()[0].shape))
        self.device_id = device_id
        self.uses_gpu = self.providers[0] in prov.GPU_PROVIDERS

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", kind: str | None = None, *, max_batch: int = 32,
                  threads: int | None = None) -> OnnxClassifier:
        """Open an exported file on the best providers for ``device`` (notes go to stderr)."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise XcamError(f"{path}: ONNX file not found")
        options = prov.session_options(threads)
        trt = None
        if device != "cpu" and prov.TRT in prov.available_providers():
            size = _peek_input_size(path)
            trt = prov.tensorrt_options(prov.trt_cache_dir(path.stem, size, max_batch), "input", size, max_batch)
        specs, note = prov.select_providers(device, trt=trt)
        prov.report(note)
        session, errors = None, []
        while specs:
            try:
                session = ort.InferenceSession(str(path), options, providers=specs)
                break
            except Exception as exc:  # noqa: BLE001 - e.g. TensorRT libraries missing: try the next one
                errors.append(f"{specs[0][0]}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc}")
                specs = specs[1:]
        if session is None:
            raise XcamError(f"{path}: cannot open with ONNX Runtime ({'; '.join(errors)})")
        used = session.get_providers()[0]
        if errors:
            prov.report(f"{errors[0]}; using {used}")
        elif used != specs[0][0]:  # onnxruntime fell back by itself (its warning is silenced)
            prov.report(f"{specs[0][0]} could not be initialised by onnxruntime; using {used}")
        meta = {k[5:]: v for k, v in session.get_modelmeta().custom_metadata_map.items() if k.startswith("xcam.")}
        if kind is None:
            kind = "onnx-int8" if meta.get("quantization", "none") != "none" else "onnx"
        return cls(session, path, meta, kind)

    def run(self, batch: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named outputs for a preprocessed batch ``[B, 1, S, S]`` (all outputs by default)."""
        names = outputs or self.output_names
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.uses_gpu:
            return self._run_bound(x, names)
        return dict(zip(names, self.session.run(names, {self.input_name: x})))

    def _run_bound(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """CUDA/TensorRT: I/O binding, so inputs and outputs are copied once each way."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device_id))
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))


def _peek_input_size(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(proto.graph.input[0].type.tensor_type.shape.dim[-1].dim_value or 224)


def _static_size(shape: Any) -> int:
    """The last dimension of an input shape when static, else 224."""
    last = shape[-1] if shape else None
    return last if isinstance(last, int) else 224
