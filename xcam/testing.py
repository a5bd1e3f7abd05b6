"""Pytest helpers for plugin authors.

Use in your plugin's tests::

    pytest_plugins = ["xcam.testing"]

    def test_my_classifier(xcam_pm):
        from xcam.testing import check_classifier
        report = check_classifier(xcam_pm.classifier("tinycnn"))
        assert report.ok, report.problems

``xcam_pm`` is a fresh, fully loaded plugin manager (built-ins + entry points, default config);
``xcam_weights_cache`` points torchxrayvision's and xcam's caches at a temporary folder so tests
never touch the user's files or the network; :func:`write_random_weights` saves random weights
in a classifier's published file format under its real file name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.manager import XcamPluginManager
    from xcam.core.types import ClassifierRegistration


@pytest.fixture
def xcam_pm() -> "XcamPluginManager":
    """A fresh plugin manager with built-ins and installed entry points, default config."""
    from xcam.core.config import XcamConfig
    from xcam.core.manager import get_plugin_manager

    return get_plugin_manager(XcamConfig())


@pytest.fixture
def xcam_weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty, offline weights cache: ``$XRV_CACHE_DIR`` and ``$XCAM_HOME`` in ``tmp_path``."""
    cache = tmp_path / "models_data"
    cache.mkdir()
    monkeypatch.setenv("XRV_CACHE_DIR", str(cache))
    monkeypatch.setenv("XCAM_HOME", str(tmp_path / "xcam_home"))
    monkeypatch.setenv("XCAM_OFFLINE", "1")
    monkeypatch.delenv("XCAM_WEIGHTS_DIR", raising=False)
    yield cache


def write_random_weights(
    registration: "ClassifierRegistration", folder: Path, variant: str | None = None, seed: int = 0
) -> Path:
    """Save random weights for ``variant`` under its real file name in ``folder``."""
    import torch

    torch.manual_seed(seed)
    chosen = registration.variant(variant)
    model = registration.build(chosen.name, random_init=True)
    path = Path(folder) / chosen.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.checkpoint_object(), path)
    return path


@dataclass
class ContractReport:
    """What :func:`check_classifier` found."""

    name: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_classifier(
    registration: "ClassifierRegistration",
    variant: str | None = None,
    *,
    random_init: bool = True,
    batch: int = 2,
    cam_method: str | None = "gradcam",
    onnx: bool = True,
    pm: "XcamPluginManager | None" = None,
) -> ContractReport:
    """The contract every classifier plugin must meet.

    Checks: the model builds; forward gives raw logits ``[B, len(labels)]``; calibrated
    probabilities lie in [0, 1]; the declared target layer exists and a CAM from it has the input's
    spatial size, finite values in [0, 1]; and (``onnx``) the ONNX export matches PyTorch.
    """
    import numpy as np
    import torch

    from xcam.core.contracts import cam_problem

    report = ContractReport(registration.name)
    try:
        model = registration.build(variant, random_init=random_init)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        report.problems.append(f"build failed: {type(exc).__name__}: {exc}")
        return report
    size = registration.input_size
    x = torch.randn(batch, 1, size, size) * 400
    with torch.no_grad():
        logits = model(x)
    labels = registration.variant_labels(registration.variant(variant))
    if tuple(logits.shape) != (batch, len(labels)):
        report.problems.append(f"forward shape {tuple(logits.shape)} != {(batch, len(labels))}")
    else:
        report.checks.append("forward shape")
    if len(model.labels) != len(labels):
        report.problems.append(f"model has {len(model.labels)} labels, registration declares {len(labels)}")
    probs = model.calibrate(logits)
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        report.problems.append("calibrated probabilities outside [0, 1]")
    else:
        report.checks.append("probabilities in [0, 1]")
    try:
        model.get_submodule(registration.target_layer)
        report.checks.append(f"target layer {registration.target_layer}")
    except AttributeError:
        report.problems.append(f"target layer {registration.target_layer!r} not found in the model")
        return report
    if cam_method:
        from xcam.core.manager import get_plugin_manager

        manager = pm or get_plugin_manager()
        try:
            method = manager.cam_method(cam_method)
            cams = method.compute(model, x, [model.valid_indices[0]] * batch)
            problem = cam_problem(cams, batch)  # the check the chain applies to every CAM plugin
            if problem is None and np.shape(cams)[-2:] != (size, size):
                problem = f"CAM shape {np.shape(cams)} != {(batch, size, size)}"
            if problem:
                report.problems.append(f"CAM: {problem}")
            else:
                report.checks.append(f"{cam_method} CAM shape and range")
        except Exception as exc:  # noqa: BLE001
            report.problems.append(f"CAM failed: {type(exc).__name__}: {exc}")
    if onnx:
        try:
            from xcam.export.parity import onnx_parity  # provided by xcam.export

            delta = onnx_parity(model, x)
            if delta > 1e-3:
                report.problems.append(f"ONNX export differs from PyTorch (max |Δ| {delta:.2e})")
            else:
                report.checks.append(f"ONNX parity (max |Δ| {delta:.1e})")
        except ImportError:
            report.checks.append("ONNX parity skipped (xcam.export not available)")
        except Exception as exc:  # noqa: BLE001
            report.problems.append(f"ONNX export failed: {type(exc).__name__}: {exc}")
    return report
