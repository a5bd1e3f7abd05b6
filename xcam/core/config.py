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


def load_config(path: str | Path | None = None) -> XcamConfig:
    """Load the config (see module docstring for the search order and format)."""
    file = find_config_file(path)
    if file is None:
        return XcamConfig()
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise XcamError(f"{file}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise XcamError(f"{file}: invalid TOML ({exc})") from None
    plugins = data.get("plugins", {})
    enabled = plugins.get("enabled")
    defaults = dict(BUILTIN_DEFAULTS)
    given = {k: str(v) for k, v in data.get("defaults", {}).items()}
    unknown = set(given) - set(BUILTIN_DEFAULTS) - set(PROFILE_OVERRIDE_KEYS)
    if unknown:
        valid = sorted(set(BUILTIN_DEFAULTS) | set(PROFILE_OVERRIDE_KEYS))
        raise XcamError(f"{file}: unknown [defaults] keys {sorted(unknown)}; valid: {valid}")
    defaults.update({k: v for k, v in given.items() if k in BUILTIN_DEFAULTS})
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise XcamError(f"{file}: [profiles.NAME] must be tables")
    return XcamConfig(
        path=file,
        disabled=frozenset(plugins.get("disabled", [])),
        enabled=frozenset(enabled) if enabled is not None else None,
        defaults=defaults,
        options={k: dict(v) for k, v in data.get("options", {}).items()},
        profiles={k: dict(v) for k, v in profiles.items()},
        overrides={k: v for k, v in given.items() if k in PROFILE_OVERRIDE_KEYS},
    )
