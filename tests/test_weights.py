"""Weights store: offline errors, safe loading (no arbitrary unpickling), trust on first use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xcam.core.errors import ChangedWeightsError, UnsafeWeightsError, WeightsMissingError
from xcam.core.weights import WeightsStore


class _RunsACommand:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_missing_weights_name_file_url_and_place(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("XRV_CACHE_DIR", str(tmp_path / "empty_cache"))
    store = WeightsStore(weights_dir=tmp_path / "offline", allow_download=False, trust_file=tmp_path / "t.json")
    variant = pm.classifier("densenet121").variant("nih")
    with pytest.raises(WeightsMissingError) as info:
        pm.classifier("densenet121").build("nih", store=store)
    message = str(info.value)
    assert variant.filename in message and variant.url in message
    assert str(tmp_path / "offline") in message and "\n" not in message


def test_failed_download_is_one_clear_line(pm, tmp_path, monkeypatch):
    import torchxrayvision as xrv

    def closed_network(url, filename):
        raise ConnectionError("Network is unreachable")

    monkeypatch.setattr(xrv.utils, "download", closed_network)
    monkeypatch.setenv("XRV_CACHE_DIR", str(tmp_path / "cache"))
    store = WeightsStore(allow_download=True, trust_file=tmp_path / "t.json")
    with pytest.raises(WeightsMissingError, match="download failed: Network is unreachable"):
        store.resolve(pm.classifier("resnet50").default)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state": _RunsACommand(marker)}, path)
    store = WeightsStore(trust_file=tmp_path / "t.json")
    with pytest.raises(UnsafeWeightsError, match="refused"):
        store.load_state_dict(path)
    assert not marker.exists(), "loading must never run code"


def test_malicious_pickle_via_cli_is_one_line(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(_RunsACommand(marker), weights / "best.pt")
    env = {**os.environ, "XCAM_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "xcam.cli", "classify", "--model", "mobilenetv3", "--weights",
         str(weights / "best.pt"), "--input", str(tmp_path / "x.png")],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "refused" in proc.stderr and not marker.exists()


def test_changed_weights_are_refused_until_accepted(pm, tmp_path):
    from xcam.testing import write_random_weights

    registration = pm.classifier("mobilenetv3")
    folder = tmp_path / "w"
    path = write_random_weights(registration, folder, seed=1)
    store = WeightsStore(weights_dir=folder, trust_file=tmp_path / "trusted.json")
    registration.build(store=store)  # first load records the sha256
    write_random_weights(registration, folder, seed=2)  # the file changes
    with pytest.raises(ChangedWeightsError, match="changed since it was first loaded"):
        registration.build(store=store)
    accepting = WeightsStore(weights_dir=folder, accept_changed=True, trust_file=tmp_path / "trusted.json")
    model = registration.build(store=accepting)
    assert model.weights_path == str(path)
    registration.build(store=store)  # the new file is now the trusted one


def test_trust_records_a_file_this_process_wrote(pm, tmp_path):
    from xcam.testing import write_random_weights

    registration = pm.classifier("mobilenetv3")
    folder = tmp_path / "w"
    store = WeightsStore(weights_dir=folder, trust_file=tmp_path / "trusted.json")
    path = write_random_weights(registration, folder, seed=1)
    registration.build(store=store)
    write_random_weights(registration, folder, seed=3)
    with pytest.raises(ChangedWeightsError):
        store.verify(path)
    assert store.trust(path) == store.verify(path)  # e.g. `xcam train` rewriting best.pt
    registration.build(store=store)


def test_weights_dir_takes_precedence_over_xrv_cache(pm, tmp_path, weights_cache, random_weights):
    from xcam.testing import write_random_weights

    random_weights("densenet121")
    mine = tmp_path / "mine"
    path = write_random_weights(pm.classifier("densenet121"), mine, seed=5)
    store = WeightsStore.from_env(mine)
    assert store.find(pm.classifier("densenet121").default) == path
