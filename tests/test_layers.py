"""The import contracts of ``[tool.importlinter]`` in pyproject.toml.

* ``lint-imports`` passes on the package (its report is the failure message);
* the contracts are not vacuous: a copy of the package with one planted violation per contract
  breaks each of them, at the planted line;
* ``xcam.core`` imports nothing from the packages above it, checked without import-linter (every
  ``import`` statement, function-level and ``TYPE_CHECKING`` ones included).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "xcam" / "core"
ABOVE_CORE = ("export", "plugins", "nets", "chain", "evaluation", "score", "ui", "commands", "train", "datasets",
              "cli", "testing")
CONTRACTS = {"layers", "export-layers", "testing", "acyclic"}


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` of the venv (no cache written) in ``cwd``; ``pythonpath`` puts a copy of
    the package first on the path."""
    pytest.importorskip("importlinter", reason="import-linter not installed: pip install -e '.[dev]'")
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_configuration_declares_the_contracts():
    importlinter_api = pytest.importorskip("importlinter.api", reason="import-linter not installed")
    config = importlinter_api.read_configuration(str(ROOT / "pyproject.toml"))
    assert config["session_options"]["root_packages"] == ["xcam"]
    assert config["session_options"]["exclude_type_checking_imports"] in (True, "true", "True")
    assert {c["id"] for c in config["contracts_options"]} >= CONTRACTS


def test_lint_imports_passes():
    proc = _lint(ROOT)
    assert proc.returncode == 0, f"lint-imports found broken import contracts:\n{proc.stdout}\n{proc.stderr}"
    assert "BROKEN" not in proc.stdout


def _plant(path: Path, function: str, statement: str) -> None:
    """Append a function holding ``statement`` (a function-level import) to ``path``."""
    path.write_text(path.read_text() + f"\n\ndef {function}():  # planted by tests/test_layers.py\n    {statement}\n")


def test_each_contract_catches_a_planted_violation(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "xcam", copy / "xcam", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    pkg = copy / "xcam"
    _plant(pkg / "core" / "labels.py", "_up", "from xcam.chain import engine")  # layers
    _plant(pkg / "export" / "onnx_export.py", "_runtime", "from xcam.export.runtime import OnnxClassifier")
    _plant(pkg / "core" / "weights.py", "_cycle", "from xcam.core.types import ClassifierRegistration")  # acyclic
    _plant(pkg / "testing.py", "_chain", "import xcam.chain.engine")  # forbidden
    proc = _lint(copy, pythonpath=copy)
    out = proc.stdout
    assert proc.returncode != 0, out
    assert "Contracts: 0 kept, 4 broken." in out, out
    assert "xcam.core is not allowed to import xcam.chain" in out and "xcam.core.labels -> xcam.chain" in out
    assert "xcam.export.onnx_export -> xcam.export.runtime" in out
    assert "No cycles are allowed in xcam.core" in out
    assert "xcam.testing -> xcam.chain" in out


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import statement in the file (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "xcam":  # from xcam import export
                found += [(node.lineno, f"xcam.{alias.name}") for alias in node.names]
    return found


def test_core_imports_nothing_above_it():
    offending = []
    for path in sorted(CORE.rglob("*.py")):
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] == "xcam" and len(parts) > 1 and parts[1] in ABOVE_CORE:
                offending.append(f"{path.relative_to(ROOT)}:{line} -> {module}")
    assert not offending, "xcam.core must not import the layers above it:\n" + "\n".join(offending)


def test_importing_core_loads_no_other_xcam_package():
    modules = sorted(f"xcam.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('xcam.')} - {'core'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
