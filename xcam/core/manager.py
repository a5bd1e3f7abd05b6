"""The plugin manager: built-ins and third-party plugins through one path.

Discovery order: built-in plugin modules, then entry points in group ``xcam`` (each load wrapped
so a broken plugin is reported, never fatal), then ``plugins.toml`` (enable/disable, defaults,
options), then ``check_pending()`` so a misspelled hook name is an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any, Iterable, TypeVar

import pluggy

from xcam import __version__
from xcam.core import hookspecs
from xcam.core.config import XcamConfig, load_config
from xcam.core.errors import PluginError
from xcam.core.types import (
    REGISTRATION_TYPES,
    BboxStrategyRegistration,
    CamMethodRegistration,
    ClassifierRegistration,
    EnsemblerRegistration,
    MaskExtractorRegistration,
)

BUILTIN_PLUGINS: tuple[str, ...] = (
    "xcam.plugins.classifiers",
    "xcam.plugins.cam_methods",
    "xcam.plugins.mask_extractors",
    "xcam.plugins.bbox_strategies",
    "xcam.plugins.ensemblers",
)

R = TypeVar("R")


@dataclass
class PluginInfo:
    """One row of ``xcam plugins``."""

    name: str
    source: str  # "builtin" or "entry point (<distribution>)"
    version: str
    distribution: str
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | disabled | error: ...
    registrations: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hooks": self.hooks,
            "version": self.version,
            "source": self.source,
            "distribution": self.distribution,
            "status": self.status,
            "registrations": self.registrations,
        }


class XcamPluginManager(pluggy.PluginManager):
    """A pluggy manager that also collects typed registrations and reports problems per plugin."""

    def __init__(self, config: XcamConfig | None = None) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs.XcamSpecs)
        self.config = config or XcamConfig()
        self.infos: dict[str, PluginInfo] = {}
        self._cache: dict[str, dict[str, Any]] = {}

    # -- loading ---------------------------------------------------------------------------
    def load_builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            short = module_name.rsplit(".", 1)[-1]
            info = PluginInfo(short, "builtin", __version__, "xcam")
            self.infos[short] = info
            if not self.config.is_enabled(short, builtin=True):
                info.status = "disabled"
                continue
            module = importlib.import_module(module_name)
            self.register(module, name=short)
            info.hooks = self._hook_names(module)

    def load_entrypoints(self, group: str = hookspecs.PROJECT_NAME) -> None:
        for ep in md.entry_points(group=group):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "?"
            info = PluginInfo(ep.name, f"entry point ({dist})", version, dist)
            if ep.name in self.infos:
                info.status = f"error: plugin name {ep.name!r} already used by {self.infos[ep.name].distribution}"
                self.infos[f"{ep.name} ({dist})"] = info
                continue
            self.infos[ep.name] = info
            if not self.config.is_enabled(ep.name):
                info.status = "disabled"
                continue
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name)
                self._check_hook_names(plugin, ep.name)
                info.hooks = self._hook_names(plugin)
            except Exception as exc:  # a broken plugin never stops the host
                info.status = f"error: failed to load from {dist}: {type(exc).__name__}: {exc}"

    def _check_hook_names(self, plugin: object, name: str) -> None:
        """Refuse a plugin with a hookimpl that matches no spec (a misspelled hook name)."""
        for hook_name in dir(self.hook):
            caller = getattr(self.hook, hook_name)
            if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            if any(impl.plugin is plugin for impl in caller.get_hookimpls()):
                self.unregister(plugin)
                raise PluginError(f"unknown hook {hook_name!r} (valid: {', '.join(REGISTRATION_TYPES)})")

    def load_object(self, plugin: object, name: str, distribution: str = "local") -> None:
        """Register an in-process plugin object or module (tests, notebooks)."""
        self.register(plugin, name=name)
        self._check_hook_names(plugin, name)
        self.infos[name] = PluginInfo(name, f"local ({distribution})", "?", distribution, self._hook_names(plugin))
        self._cache.clear()

    def _hook_names(self, plugin: object) -> list[str]:
        return sorted(h.name for h in (self.get_hookcallers(plugin) or []))

    # -- registrations ---------------------------------------------------------------------
    def _collect(self, hook_name: str) -> dict[str, Any]:
        if hook_name in self._cache:
            return self._cache[hook_name]
        expected = REGISTRATION_TYPES[hook_name]
        found: dict[str, Any] = {}
        owner: dict[str, str] = {}
        hook = getattr(self.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: built-ins first, so they win
            plugin_name = self.get_name(impl.plugin) or "?"
            info = self.infos.get(plugin_name)
            try:
                regs = list(impl.function() or [])
            except Exception as exc:
                if info is not None:
                    info.status = f"error: {hook_name} raised {type(exc).__name__}: {exc}"
                continue
            for reg in regs:
                if not isinstance(reg, expected):
                    if info is not None:
                        info.status = f"error: {hook_name} yielded {type(reg).__name__}, expected {expected.__name__}"
                    continue
                if reg.name in found:
                    first = self.infos.get(owner[reg.name])
                    first_dist = first.distribution if first else owner[reg.name]
                    dist = info.distribution if info else plugin_name
                    if info is not None:
                        info.status = (
                            f"error: {hook_name[5:]} name {reg.name!r} from {dist} conflicts with "
                            f"{first_dist}; kept the one from {first_dist}"
                        )
                    continue
                found[reg.name] = reg
                owner[reg.name] = plugin_name
                if info is not None:
                    info.registrations.setdefault(hook_name[5:], []).append(reg.name)
        self._cache[hook_name] = found
        return found

    def classifiers(self) -> dict[str, ClassifierRegistration]:
        return self._collect("xcam_classifiers")

    def cam_methods(self) -> dict[str, CamMethodRegistration]:
        return self._collect("xcam_cam_methods")

    def mask_extractors(self) -> dict[str, MaskExtractorRegistration]:
        return self._collect("xcam_mask_extractors")

    def bbox_strategies(self) -> dict[str, BboxStrategyRegistration]:
        return self._collect("xcam_bbox_strategies")

    def ensemblers(self) -> dict[str, EnsemblerRegistration]:
        return self._collect("xcam_ensemblers")

    def _get(self, kind: str, table: dict[str, R], name: str | None) -> R:
        if name is None:  # only the classifier has a default here; the rest come from a settings profile
            if kind not in self.config.defaults:
                raise PluginError(f"no {kind.replace('_', ' ')} named (take it from a settings profile)")
            name = self.config.defaults[kind]
        if name in table:
            return table[name]
        lowered = {k.lower(): v for k, v in table.items()}
        if name.lower() in lowered:
            return lowered[name.lower()]
        raise PluginError(f"unknown {kind.replace('_', ' ')} {name!r}; available: {', '.join(sorted(table)) or 'none'}")

    def classifier(self, name: str | None = None) -> ClassifierRegistration:
        return self._get("classifier", self.classifiers(), name)

    def cam_method(self, name: str | None = None) -> CamMethodRegistration:
        return self._get("cam_method", self.cam_methods(), name)

    def mask_extractor(self, name: str | None = None) -> MaskExtractorRegistration:
        return self._get("mask_extractor", self.mask_extractors(), name)

    def bbox_strategy(self, name: str | None = None) -> BboxStrategyRegistration:
        return self._get("bbox_strategy", self.bbox_strategies(), name)

    def ensembler(self, name: str | None = None) -> EnsemblerRegistration:
        return self._get("ensembler", self.ensemblers(), name)

    def plugin_infos(self) -> list[PluginInfo]:
        for hook_name in REGISTRATION_TYPES:  # fills registrations and conflict statuses
            self._collect(hook_name)
        return list(self.infos.values())


def get_plugin_manager(config: XcamConfig | None = None, *, entrypoints: bool = True) -> XcamPluginManager:
    """A fully loaded plugin manager (built-ins, entry points, config, checked)."""
    pm = XcamPluginManager(config if config is not None else load_config())
    pm.load_builtins()
    if entrypoints:
        pm.load_entrypoints()
    pm.check_pending()
    return pm


def iter_registrations(pm: XcamPluginManager) -> Iterable[tuple[str, str]]:
    for hook_name in REGISTRATION_TYPES:
        for name in pm._collect(hook_name):
            yield hook_name, name
