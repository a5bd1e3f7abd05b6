"""``plugins.toml``: which plugins run, the defaults, and per-plugin options.

Format::

    [plugins]
    disabled = ["some_entry_point"]      # entry-point names or built-in plugin names to skip
    # enabled = ["only_this_one"]        # when given, only these third-party plugins load

    [defaults]
    classifier = "densenet121"
    profile = "default"                  # the settings profile every command uses (see below)

    [options.densenet121]                # passed to that classifier's builder as request.options
    weights = "densenet121-res224-nih"   # the variant used when --weights is not given

    [profiles.mine]                      # a named settings profile (xcam/chain/profiles.toml has
    extends = "default"                  # the built-in ones); `--profile mine` on any command
    cam_method = "gradcam++"

The keys ``cam_method``, ``mask_extractor``, ``bbox_strategy`` and ``ensembler`` under
``[defaults]`` are accepted for older files: they override those settings of every profile.
Profiles are parsed and checked by :mod:`xcam.chain.settings`; here they are kept as tables.

Search order: the ``--config`` option, ``$XCAM_CONFIG``, ``./plugins.toml``,
``~/.config/xcam/plugins.toml``. A missing file means the built-in defaults.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xcam.core.errors import XcamError

BUILTIN_DEFAULTS: dict[str, str] = {
    "classifier": "densenet121",
    "profile": "default",
}
PROFILE_OVERRIDE_KEYS: tuple[str, ...] = ("cam_method", "mask_extractor", "bbox_strategy", "ensembler")
"""``[defaults]`` keys of older files: each overrides that setting of every profile."""


@dataclass(frozen=True)
class XcamConfig:
    """Parsed ``plugins.toml``."""

    path: Path | None = None
    disabled: frozenset[str] = frozenset()
    enabled: frozenset[str] | None = None
    defaults: dict[str, str] = field(default_factory=lambda: dict(BUILTIN_DEFAULTS))
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)  # [defaults] keys of PROFILE_OVERRIDE_KEYS

    def plugin_options(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))

    def is_enabled(self, plugin_name: str, builtin: bool = False) -> bool:
        if plugin_name in self.disabled:
            return False
        if self.enabled is not None and not builtin:
            return plugin_name in self.enabled
        return True


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    candidates: list[Path] = []
    if explicit:
        return Path(explicit)
    if os.environ.get("XCAM_CONFIG"):
        return Path(os.environ["XCAM_CONFIG"])
    candidates.append(Path.cwd() / "plugins.toml")
    candidates.append(Path.home() / ".config" / "xcam" / "plugins.toml")
    return next((p for p in candidates if p.is_file()), None)


def _got(value: Any) -> str:
    """``(got ...)`` text for a wrong value: its TOML kind and the value, shortened."""
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    kind = next((k for t, k in kinds.items() if isinstance(value, t)), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _must(file: Path, where: str, ok: bool, what: str, value: Any) -> None:
    """``XcamError`` ``FILE: where: must be WHAT (got ...)`` unless ``ok``."""
    if not ok:
        raise XcamError(f"{file}: {where}: must be {what} (got {_got(value)})")


def _string_list(file: Path, where: str, value: Any) -> frozenset[str]:
    _must(file, where, isinstance(value, list) and all(isinstance(v, str) for v in value),
          "an array of strings", value)
    return frozenset(value)


def load_config(path: str | Path | None = None) -> XcamConfig:
    """Load the config (see module docstring for the search order and format); every documented
    table and key is type-checked here, so a malformed file is one line naming it and the key."""
    file = find_config_file(path)
    if file is None:
        return XcamConfig()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XcamError(f"{file}: config file not found") from None
    except UnicodeDecodeError:
        raise XcamError(f"{file}: not a UTF-8 text file (a TOML config is expected)") from None
    except OSError as exc:
        raise XcamError(f"{file}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise XcamError(f"{file}: invalid TOML ({exc})") from None
    for section in ("plugins", "defaults", "options", "profiles"):
        _must(file, f"[{section}]", isinstance(data.get(section, {}), dict), "a table", data.get(section))

    plugins = data.get("plugins", {})
    unknown = sorted(set(plugins) - {"disabled", "enabled"})
    if unknown:
        raise XcamError(f"{file}: unknown [plugins] keys {unknown}; valid: ['disabled', 'enabled']")
    disabled = _string_list(file, "[plugins] disabled", plugins.get("disabled", []))
    enabled = _string_list(file, "[plugins] enabled", plugins["enabled"]) if "enabled" in plugins else None

    given = dict(data.get("defaults", {}))
    unknown = sorted(set(given) - set(BUILTIN_DEFAULTS) - set(PROFILE_OVERRIDE_KEYS))
    if unknown:
        valid = sorted(set(BUILTIN_DEFAULTS) | set(PROFILE_OVERRIDE_KEYS))
        raise XcamError(f"{file}: unknown [defaults] keys {unknown}; valid: {valid}")
    for key, value in given.items():
        _must(file, f"[defaults] {key}", isinstance(value, str) and bool(value.strip()), "a non-empty string", value)
    defaults = dict(BUILTIN_DEFAULTS)
    defaults.update({k: v for k, v in given.items() if k in BUILTIN_DEFAULTS})

    options = data.get("options", {})
    for name, table in options.items():
        _must(file, f"[options] {name}", isinstance(table, dict), "a table ([options.NAME])", table)
    profiles = data.get("profiles", {})
    for name, table in profiles.items():
        _must(file, f"[profiles] {name}", isinstance(table, dict), "a table ([profiles.NAME])", table)
    return XcamConfig(
        path=file,
        disabled=disabled,
        enabled=enabled,
        defaults=defaults,
        options={k: dict(v) for k, v in options.items()},
        profiles={k: dict(v) for k, v in profiles.items()},
        overrides={k: v for k, v in given.items() if k in PROFILE_OVERRIDE_KEYS},
    )
