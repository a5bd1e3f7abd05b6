"""Shared fixtures: an offline, isolated weights cache and the real test images.

The whole session runs with ``$XCAM_HOME``, ``$XRV_CACHE_DIR`` in a temporary folder and
``$XCAM_OFFLINE=1``, so no test touches the user's files or the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="xcam-tests-"))
os.environ["XCAM_HOME"] = str(_SESSION_HOME / "xcam_home")
os.environ["XRV_CACHE_DIR"] = str(_SESSION_HOME / "models_data")
os.environ["XCAM_OFFLINE"] = "1"
os.environ.pop("XCAM_WEIGHTS_DIR", None)
os.environ.setdefault("OMP_NUM_THREADS", "2")


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the repository, or ``$XCAM_TEST_DATA``; ``None`` when absent."""
    env = os.environ.get("XCAM_TEST_DATA")
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if folder is None:
        pytest.skip("real X-ray images not available (../shared/data or $XCAM_TEST_DATA)")
    return folder


@pytest.fixture(scope="session")
def nih_images(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih" / "images").glob("*.png"))


@pytest.fixture(scope="session")
def weights_cache() -> Path:
    """The session's (initially empty) torchxrayvision cache folder."""
    folder = Path(os.environ["XRV_CACHE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def pm():
    from xcam.core.config import XcamConfig
    from xcam.core.manager import get_plugin_manager

    return get_plugin_manager(XcamConfig())


@pytest.fixture(scope="session")
def random_weights(pm, weights_cache: Path):
    """``random_weights(classifier, variant=None)`` saves random weights under the real file name
    (once per session) and returns the path."""
    from xcam.testing import write_random_weights

    written: dict[tuple[str, str], Path] = {}

    def make(classifier: str, variant: str | None = None) -> Path:
        registration = pm.classifier(classifier)
        key = (classifier, registration.variant(variant).name)
        if key not in written:
            written[key] = write_random_weights(registration, weights_cache, variant)
        return written[key]

    return make


@pytest.fixture(scope="module")
def store(random_weights):
    """A weights store with random densenet121 weights under the real file name."""
    from xcam.core.weights import WeightsStore

    random_weights("densenet121")
    return WeightsStore.from_env()


@pytest.fixture(scope="module")
def onnx_clf(pm, store):
    """densenet121 on ONNX Runtime (random weights)."""
    from xcam.export.backends import load_classifier

    return load_classifier(pm, "densenet121", backend="onnx", store=store)


def run_xcam(args: list[str], capsys, monkeypatch=None, pm=None) -> tuple[int, str, str]:
    """Run ``xcam`` in-process as the console script does (one-line errors, exit codes):
    ``(exit code, stdout, stderr)``. With ``pm``, every command uses that plugin manager."""
    from xcam.cli import main

    if pm is not None:
        import xcam.commands._common as common

        assert monkeypatch is not None, "pass monkeypatch together with pm"
        monkeypatch.setattr(common, "get_plugin_manager", lambda config=None: pm)
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def xcam_cli(capsys, monkeypatch):
    """``xcam_cli(*args, pm=None) -> (exit code, stdout, stderr)``: :func:`run_xcam` for a test."""
    return lambda *args, pm=None: run_xcam(list(args), capsys, monkeypatch, pm)


def install_entry_point(folder: Path, monkeypatch, distribution: str, version: str, entry: str, module: str,
                        source: Path) -> None:
    """Make a plugin package visible as pip would install it: a ``dist-info`` with its ``xcam``
    entry point on ``sys.path`` (and on ``PYTHONPATH``, for subprocesses and Ray workers)."""
    site = folder / "site"
    dist = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[xcam]\n{entry} = {module}\n")
    monkeypatch.syspath_prepend(str(source))
    monkeypatch.syspath_prepend(str(site))
    paths = [str(site), str(source), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
