"""Parity of an exported model: ONNX Runtime against PyTorch, and INT8 against FP32.

Sits above both :mod:`xcam.export.onnx_export` (it exports, for :func:`onnx_parity`) and
:mod:`xcam.export.runtime` (it runs the file), so neither of those imports the other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xcam.core.cam_math import normalize_cams
from xcam.export.onnx_export import export_model
from xcam.export.runtime import OnnxClassifier

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel


def torch_reference(model: XCamModel, batch: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch outputs for ``batch`` in the export's layout (cams raw, at feature resolution)."""
    import torch

    from xcam.core.cam_math import fast_gradcam_torch

    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    with torch.inference_mode():
        logits = model(x)
        out = {"logits": logits.numpy(), "probabilities": model.calibrate(logits).numpy()}
    if model.gap_linear_head() is not None:
        out["cams"] = fast_gradcam_torch(model, x, normalize=False).numpy()
    elif model.class_map_head() is not None:  # PYLON: the CAMs of its class maps
        with torch.inference_mode():
            out["cams"] = model.class_map_head()[1](x)[1].numpy()
    return out


def parity_report(model: XCamModel, path: str | Path, batch: np.ndarray, source: str = "") -> dict[str, Any]:
    """Max |Δ| of logits, probabilities and normalized CAMs, ONNX Runtime (CPU) vs PyTorch."""
    clf = OnnxClassifier.from_path(path, device="cpu")
    got = clf.run(batch)
    ref = torch_reference(model, batch)
    report: dict[str, Any] = {"images": len(batch), "source": source}
    for name in ("logits", "probabilities"):
        report[f"max_abs_{name}"] = float(np.abs(got[name] - ref[name]).max())
    report["max_rel_logits"] = float((np.abs(got["logits"] - ref["logits"]) / np.maximum(1.0, np.abs(ref["logits"]))).max())
    if "cams" in got and "cams" in ref:
        report["max_abs_cams"] = float(np.abs(normalize_cams(got["cams"]) - normalize_cams(ref["cams"])).max())
    return report


def onnx_parity(model: XCamModel, x: Any, exporter: str = "auto") -> float:
    """Export ``model`` to a temporary file and return the largest difference to PyTorch on
    ``x``: max over probabilities |Δ| and logits |Δ| / max(1, |logit|) (used by ``xcam.testing``)."""
    batch = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="xcam-parity-") as tmp:
        artifact = export_model(model, Path(tmp) / "model.onnx", exporter=exporter)
        got = OnnxClassifier.from_path(artifact.path, device="cpu").run(batch, ["logits", "probabilities"])
    ref = torch_reference(model, batch)
    rel = np.abs(got["logits"] - ref["logits"]) / np.maximum(1.0, np.abs(ref["logits"]))
    return float(max(np.abs(got["probabilities"] - ref["probabilities"]).max(), rel.max()))


def int8_deviation(fp32_path: str | Path, int8_path: str | Path, batch: np.ndarray, source: str = "",
                   ) -> dict[str, Any]:
    """INT8 against FP32 on ``batch`` (use images not used for calibration), both on ONNX
    Runtime's CPU provider: see :func:`output_deviation`."""
    fp32, int8 = OnnxClassifier.from_path(fp32_path, "cpu"), OnnxClassifier.from_path(int8_path, "cpu")
    return output_deviation(fp32.run(batch), int8.run(batch), fp32.valid_indices, source)


def output_deviation(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], valid: list[int] | None = None,
                     source: str = "") -> dict[str, Any]:
    """Outputs ``got`` against reference outputs ``ref`` of the same images: |Δ probability| max,
    95th percentile and mean over every (image, valid class), |Δ logit| max, and max |Δ| of the
    normalized CAMs when both have them."""
    a, b = ref, got
    valid = list(valid or range(a["probabilities"].shape[1]))
    d = np.abs(a["probabilities"][:, valid] - b["probabilities"][:, valid])
    out: dict[str, Any] = {
        "source": source, "images": len(a["probabilities"]),
        "max_abs_probabilities": float(d.max()), "p95_abs_probabilities": float(np.percentile(d, 95)),
        "mean_abs_probabilities": float(d.mean()),
        "max_abs_logits": float(np.abs(a["logits"][:, valid] - b["logits"][:, valid]).max()),
    }
    if "cams" in a and "cams" in b:
        out["max_abs_cams"] = float(np.abs(normalize_cams(a["cams"]) - normalize_cams(b["cams"])).max())
    return out
