"""ONNX Runtime backend: :class:`OnnxClassifier` and :func:`load_onnx_classifier`.

The classifier is built from the exported file alone (labels, input size, preprocessing and
thresholds come from its metadata), so a cached export runs without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xcam.core.errors import XcamError
from xcam.export import providers as prov

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.inference import Classifier
    from xcam.core.types import ClassifierRegistration
    from xcam.core.weights import WeightsStore


class OnnxClassifier:
    """An exported classifier on ONNX Runtime; satisfies :class:`xcam.core.inference.Classifier`.

    ``backend`` is ``"<kind>:<provider actually used>"``, e.g. ``onnx:CPUExecutionProvider``.
    """

    def __init__(self, session: Any, path: Path, metadata: Mapping[str, str], kind: str = "onnx",
                 device_id: int = 0) -> None:
        self.session, self.path, self.metadata = session, Path(path), dict(metadata)
        self.name = self.metadata.get("model", self.path.stem)
        self.variant = self.metadata.get("variant", "")
        self.labels: list[str] = json.loads(self.metadata.get("labels", "[]"))
        self.input_size = int(self.metadata.get("input_size", session.get_inputs()[0].shape[-1]))
        self.preprocessing = self.metadata.get("preprocessing", "xrv")
        threshs = json.loads(self.metadata.get("op_threshs", "null"))
        self.op_threshs = None if threshs is None else np.array([np.nan if t is None else t for t in threshs],
                                                                np.float32)
        self.valid_indices = [i for i, label in enumerate(self.labels)
                              if label and (self.op_threshs is None or not np.isnan(self.op_threshs[i]))]
        self.cam_layer = self.metadata.get("cam_target_layer", "")
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        self.providers: list[str] = list(session.get_providers())
        self.kind, self.device_id = kind, device_id
        self.backend = f"{kind}:{self.providers[0]}"
        self.uses_gpu = self.providers[0] in prov.GPU_PROVIDERS
        self._cam_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()  # image hash → raw cams [C, h, w]

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

    # -- running ---------------------------------------------------------------------------
    @property
    def has_cams(self) -> bool:
        return "cams" in self.output_names

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

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, ["logits"])["logits"]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities. With a ``cams`` output the same pass also yields every
        class's CAM (ONNX Runtime executes the whole graph anyway): for batches of at most
        :data:`CAM_CACHE_BATCH` they are kept for the last :data:`CAM_CACHE_SIZE` images, so a
        following :meth:`cam_fast_path` on the same images costs no inference."""
        if not self.has_cams or len(batch) > CAM_CACHE_BATCH:
            return self.run(batch, ["probabilities"])["probabilities"]
        out = self.run(batch, ["probabilities", "cams"])
        self._remember(batch, out["cams"])
        return out["probabilities"]

    def _remember(self, batch: np.ndarray, cams: np.ndarray) -> None:
        for x, c in zip(batch, cams):
            self._cam_cache[_digest(x)] = c
            self._cam_cache.move_to_end(_digest(x))
        while len(self._cam_cache) > CAM_CACHE_SIZE:
            self._cam_cache.popitem(last=False)

    def clear_cam_cache(self) -> None:
        """Forget the CAMs kept by :meth:`predict`."""
        self._cam_cache.clear()

    def _raw_cams(self, batch: np.ndarray) -> np.ndarray:
        """Raw all-class CAMs per image, computing only images not seen recently (deduplicated)."""
        keys = [_digest(x) for x in batch]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cam_cache))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            todo = np.stack([batch[first[k]] for k in missing])
            self._remember(todo, self.run(todo, ["cams"])["cams"])
        return np.stack([self._cam_cache[k] for k in keys])

    def cam_fast_path(self, batch: np.ndarray, class_indices: list[int], method: str,
                      options: Mapping[str, Any] | None = None) -> np.ndarray | None:
        """The hook :func:`xcam.core.pipeline.compute_cams` looks for: normalized Grad-CAM maps
        ``[B, h, w]`` (one class per image) from the in-graph all-class CAM, or ``None`` when it
        cannot serve the request (another method, smoothing options, or no ``cams`` output)."""
        options = options or {}
        if method != "gradcam" or not self.has_cams or options.get("aug_smooth") or options.get("eigen_smooth"):
            return None
        from xcam.export.fast_cam import normalize_cams

        raw = self._raw_cams(np.ascontiguousarray(batch, dtype=np.float32))
        return normalize_cams(raw[np.arange(len(raw)), np.asarray(class_indices, dtype=int)])

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
        if not self.has_cams:
            return None
        from xcam.export.fast_cam import normalize_cams

        return normalize_cams(self._raw_cams(np.ascontiguousarray(batch, dtype=np.float32)))

    def predict_with_cams(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and normalized all-class CAMs from one pass."""
        if not self.has_cams:
            return self.predict(batch), None
        from xcam.export.fast_cam import normalize_cams

        out = self.run(batch, ["probabilities", "cams"])
        self._remember(batch, out["cams"])
        return out["probabilities"], normalize_cams(out["cams"])


CAM_CACHE_SIZE = 64
CAM_CACHE_BATCH = 8  # larger batches (bulk scoring) skip the cache: hashing would cost ~1%


def _digest(x: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(x, dtype=np.float32).tobytes(), digest_size=16).digest()


def _peek_input_size(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(proto.graph.input[0].type.tensor_type.shape.dim[-1].dim_value or 224)


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
    return OnnxClassifier.from_path(path, device=device)


def _torch(registration: ClassifierRegistration, variant: str | None, device: str, store: WeightsStore | None,
           random_init: bool, options: Mapping[str, Any]) -> Classifier:
    import torch

    from xcam.core.inference import TorchClassifier

    gpu = device in ("cuda", "tensorrt") or (device == "auto" and torch.cuda.is_available())
    torch_device = "cuda" if gpu else "cpu"
    model = registration.build(variant, store=store, device=torch_device, options=options, random_init=random_init)
    return TorchClassifier(model, torch_device)
