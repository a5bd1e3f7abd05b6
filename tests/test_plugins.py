"""Plugin host: built-ins, a real third-party package installed through its entry point,
broken/duplicate/misspelled plugins reported (never fatal), plugins.toml, and a torch-free CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xcam.core.config import XcamConfig, load_config
from xcam.core.manager import get_plugin_manager

EXAMPLE = Path(__file__).parent / "example_plugin"


def _xcam(*args: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "xcam.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def _fake_distribution(site: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with entry points) in ``site``."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[xcam]\n{lines}\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def on_path(monkeypatch):
    def add(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        importlib.invalidate_caches()

    return add


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-installs tests/example_plugin (the plugin tutorial's result) into a folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True,
    )
    return target


def test_builtins_are_registered_like_plugins(pm):
    infos = {info.name: info for info in pm.plugin_infos()}
    assert infos["classifiers"].source == "builtin"
    assert infos["classifiers"].registrations["classifiers"] == ["densenet121", "resnet50", "jfhealthcare", "mobilenetv3"]
    assert set(pm.classifiers()) >= {"densenet121", "resnet50", "jfhealthcare", "mobilenetv3"}


def test_third_party_package_is_discovered_and_classifies(installed_example, on_path, tmp_path, monkeypatch):
    on_path(installed_example)
    pm = get_plugin_manager(XcamConfig())
    info = {i.name: i for i in pm.plugin_infos()}["tinycnn"]
    assert info.source == "entry point (xcam-tinycnn)" and info.version == "0.2.0" and info.status == "ok"
    assert info.hooks == ["xcam_classifiers"]
    registration = pm.classifier("tinycnn")
    # it classifies, from weights saved under its file name in a weights folder
    from xcam.core.weights import WeightsStore
    from xcam.testing import check_classifier, write_random_weights

    write_random_weights(registration, tmp_path / "w")
    model = registration.build(store=WeightsStore(weights_dir=tmp_path / "w", trust_file=tmp_path / "t.json"))
    import torch

    probs = model.predict(torch.randn(2, 1, 128, 128) * 300)
    assert probs.shape == (2, 3)
    report = check_classifier(registration, cam_method=None, onnx=False)
    assert report.ok, report.problems


def test_third_party_plugin_in_cli(installed_example, tmp_path):
    env = {"PYTHONPATH": str(installed_example)}
    listing = json.loads(_xcam("plugins", "--json", env_extra=env).stdout)
    row = next(r for r in listing if r["name"] == "tinycnn")
    assert row["distribution"] == "xcam-tinycnn" and row["registrations"] == {"classifiers": ["tinycnn"]}
    models = _xcam("models", env_extra=env).stdout
    assert "tinycnn-demo" in models


def test_broken_duplicate_and_misspelled_plugins_are_reported(tmp_path, on_path):
    _fake_distribution(tmp_path, "broken-dist", {"xcam_broken_mod": "raise ImportError('no module named foo')"},
                       {"broken": "xcam_broken_mod"})
    _fake_distribution(tmp_path, "dupe-dist", {"xcam_dupe_mod": """
        from xcam.core.hookspecs import hookimpl
        from xcam.plugins.classifiers import densenet121

        @hookimpl
        def xcam_classifiers():
            yield densenet121.REGISTRATION
    """}, {"dupe": "xcam_dupe_mod"})
    _fake_distribution(tmp_path, "typo-dist", {"xcam_typo_mod": """
        from xcam.core.hookspecs import hookimpl

        @hookimpl
        def xcam_classifier():
            return []
    """}, {"typo": "xcam_typo_mod"})
    _fake_distribution(tmp_path, "badname-dist", {"xcam_badname_mod": """
        import dataclasses
        from xcam.core.hookspecs import hookimpl
        from xcam.plugins.classifiers import densenet121

        @hookimpl
        def xcam_classifiers():
            yield dataclasses.replace(densenet121.REGISTRATION, name="dense_net")
    """}, {"badname": "xcam_badname_mod"})
    on_path(tmp_path)
    pm = get_plugin_manager(XcamConfig())
    infos = {i.name: i for i in pm.plugin_infos()}
    assert infos["broken"].status.startswith("error: failed to load from broken-dist")
    assert "no module named foo" in infos["broken"].status
    assert "conflicts with xcam" in infos["dupe"].status and "dupe-dist" in infos["dupe"].status
    assert "unknown hook 'xcam_classifier'" in infos["typo"].status
    assert "'dense_net'" in infos["badname"].status and "no '_'" in infos["badname"].status
    assert pm.classifier("densenet121").name == "densenet121"  # the host still works
    # and the CLI too
    proc = _xcam("plugins", env_extra={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and "broken-dist" in proc.stdout and "Traceback" not in proc.stderr


def test_plugins_toml_disables_and_sets_defaults(tmp_path):
    config_file = tmp_path / "plugins.toml"
    config_file.write_text(textwrap.dedent("""
        [plugins]
        disabled = ["ensemblers"]
        [defaults]
        classifier = "mobilenetv3"
        [options.mobilenetv3]
        arch = "mobilenet_v3_small"
    """))
    config = load_config(config_file)
    pm = get_plugin_manager(config)
    assert pm.classifier().name == "mobilenetv3"
    assert config.plugin_options("mobilenetv3") == {"arch": "mobilenet_v3_small"}
    assert {i.name: i.status for i in pm.plugin_infos()}["ensemblers"] == "disabled"
    assert pm.ensemblers() == {}
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nclasifier = 'x'\n")
    proc = _xcam("--config", str(bad), "plugins")
    assert proc.returncode != 0 and "unknown [defaults] keys ['clasifier']" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_classifier_lists_the_valid_ones(pm):
    from xcam.core.errors import PluginError

    with pytest.raises(PluginError, match="available: densenet121, jfhealthcare, mobilenetv3, resnet50"):
        pm.classifier("densenet")
    with pytest.raises(PluginError, match="valid: densenet121-res224-all"):
        pm.classifier("densenet121").variant("nope")


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["models"]])
def test_cli_listing_commands_do_not_import_torch(args):
    code = (
        "import sys; from xcam.cli import main\n"
        f"try: main({args!r})\nexcept SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr[-500:]


def test_models_lists_variants_and_local_weights(pm, tmp_path):
    from xcam.testing import write_random_weights

    write_random_weights(pm.classifier("resnet50"), tmp_path / "cache")
    rows = json.loads(_xcam("models", "--json", env_extra={"XRV_CACHE_DIR": str(tmp_path / "cache")}).stdout)
    by_variant = {r["variant"]: r for r in rows}
    assert len([r for r in rows if r["classifier"] == "densenet121"]) == 7
    assert by_variant["resnet50-res512-all"]["local"] and by_variant["resnet50-res512-all"]["input_size"] == 512
    assert by_variant["densenet121-res224-nih"]["local"] is None
    assert "Hernia" in by_variant["densenet121-res224-nih"]["labels"]


def _tutorial_blocks(language: str) -> list[str]:
    import re

    text = (Path(__file__).parents[1] / "docs" / "plugin-tutorial.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_plugin_tutorial_shows_the_example_package():
    """The tutorial's pyproject.toml is the example package's, and its Python files define the same
    top-level names as the example's (which only adds docstrings and type hints)."""
    import ast

    (toml,) = _tutorial_blocks("toml")
    assert toml.strip() == (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8").strip()

    def names(source: str) -> set[str]:
        tree = ast.parse(source)
        found = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        found |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        return found

    shown = {block.splitlines()[0].removeprefix("# ").strip(): block for block in _tutorial_blocks("python")}
    for path in ("src/xcam_tinycnn/network.py", "src/xcam_tinycnn/plugin.py", "src/xcam_tinycnn/test_contract.py"):
        assert path in shown, f"the tutorial does not show {path}"
        assert names(shown[path]) == names((EXAMPLE / path).read_text(encoding="utf-8")), path
