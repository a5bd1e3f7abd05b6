"""The chain's settings: one :class:`ChainSettings`, built from a named profile.

Profiles live in ``xcam/chain/profiles.toml`` (built in) and in ``plugins.toml`` (``[profiles.NAME]``,
which may add profiles or override built-in ones); :func:`resolve_settings` merges, in order: the
profile (after its ``extends`` chain), the ``[defaults]`` overrides of older config files, and the
command line's explicit options. Per-plugin options of ``[options.PLUGIN]`` sit below the profile's
``*_options`` tables. Everything is checked here, so a typo in a profile is one line naming the
file and the key.

Class selection (which pathologies get a CAM) is not part of a profile: it is what a command asks
for (:class:`ClassChoice`).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from xcam.core.errors import UsageError, XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.config import XcamConfig
    from xcam.core.manager import XcamPluginManager

BUILTIN_PROFILES = Path(__file__).with_name("profiles.toml")
DEFAULT_PROFILE = "default"

CAM_KEYS = ("cam_method", "cam_layers", "aug_smooth", "eigen_smooth", "cam_options")
"""Keys a profile may set per classifier."""
PROFILE_KEYS = (*CAM_KEYS, "mask_extractor", "mask_options", "bbox_strategy", "strategy_options", "ensembler",
                "work_size", "description", "extends", "classifiers")
WORK_SIZES = ("model", "full")
STRING_KEYS = ("cam_method", "mask_extractor", "bbox_strategy", "ensembler", "description", "extends")
"""Profile keys whose value must be a string."""


@dataclass(frozen=True)
class CamSettings:
    """How one model's CAMs are made.

    ``layers``: ``"model"`` (the classifier's target layer), ``"auto"`` (the layers its network
    declares as localizing best, else the target layer) or explicit layer paths, fused by the
    ensembler's ``combine_cams``.
    """

    method: str = "gradcam"
    layers: str | tuple[str, ...] = "auto"
    aug_smooth: bool = False
    eigen_smooth: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainSettings:
    """Everything after classification: CAMs (per classifier where they differ), masks, boxes,
    ensembling, and the resolution masks and boxes are computed at."""

    profile: str = DEFAULT_PROFILE
    cam: CamSettings = field(default_factory=CamSettings)
    per_classifier: Mapping[str, CamSettings] = field(default_factory=dict)
    mask: str = "threshold"
    mask_options: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "largest"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    ensembler: str = "mean"
    model_weights: tuple[float, ...] | None = None  # ensemble weight per model (``weighted``)
    work_size: int | str = "model"
    description: str = ""

    def cam_for(self, classifier: str) -> CamSettings:
        """The CAM settings of one classifier (its override, else the profile's)."""
        return self.per_classifier.get(classifier, self.cam)

    def as_dict(self) -> dict[str, Any]:
        """The effective settings, JSON-able (``xcam config``, results files)."""
        out = asdict(self)
        out["cam"] = _cam_dict(self.cam)
        out["per_classifier"] = {k: _cam_dict(v) for k, v in self.per_classifier.items()}
        return out


def _cam_dict(cam: CamSettings) -> dict[str, Any]:
    d = asdict(cam)
    d["layers"] = cam.layers if isinstance(cam.layers, str) else list(cam.layers)
    d["options"] = dict(cam.options)
    return d


@dataclass(frozen=True)
class ClassChoice:
    """Which classes of each model get a CAM.

    ``targets`` (names, matched through :func:`xcam.core.labels.label_key`) when given; else with
    ``all_classes`` every valid label; else the ``top_k`` most probable classes with probability
    ``≥ threshold``; else every class ``≥ threshold``. With ``ground_truth`` a class that has a
    ground-truth box on the image is added too.
    """

    targets: tuple[str, ...] = ()
    top_k: int | None = None
    threshold: float = 0.5
    all_classes: bool = False
    ground_truth: bool = True

    @classmethod
    def none(cls, ground_truth: bool = False) -> "ClassChoice":
        """No class by probability (predictions only, plus ground-truth classes when asked)."""
        return cls(top_k=0, ground_truth=ground_truth)


# -- profiles --------------------------------------------------------------------------------
def builtin_profiles() -> dict[str, dict[str, Any]]:
    with open(BUILTIN_PROFILES, "rb") as fh:
        return dict(tomllib.load(fh).get("profiles", {}))


def available_profiles(config: "XcamConfig") -> dict[str, dict[str, Any]]:
    """Built-in profiles with ``plugins.toml``'s merged over them (a table per name)."""
    profiles = builtin_profiles()
    for name, table in config.profiles.items():
        base = profiles.get(name, {})
        merged = {**base, **table}
        if isinstance(base.get("classifiers", {}), Mapping) and isinstance(table.get("classifiers", {}), Mapping) \
                and ("classifiers" in base or "classifiers" in table):  # else _flatten reports it
            merged["classifiers"] = {**base.get("classifiers", {}), **table.get("classifiers", {})}
        profiles[name] = merged
    return profiles


def _where(config: "XcamConfig", name: str) -> str:
    if name in config.profiles and config.path is not None:
        return f"{config.path}: [profiles.{name}]"
    return f"{BUILTIN_PROFILES}: [profiles.{name}]"


def _flatten(profiles: Mapping[str, Mapping[str, Any]], name: str, config: "XcamConfig") -> dict[str, Any]:
    """A profile with its ``extends`` chain applied (the child wins; ``classifiers`` merge per key)."""
    seen: list[str] = []
    chain: list[Mapping[str, Any]] = []
    current: str | None = name
    while current is not None:
        if current in seen:
            raise XcamError(f"{_where(config, name)}: 'extends' loops ({' -> '.join([*seen, current])})")
        if current not in profiles:
            known = ", ".join(sorted(profiles))
            if not seen:
                raise UsageError(f"unknown profile {current!r}; available: {known}")
            raise XcamError(f"{_where(config, seen[-1])}: extends unknown profile {current!r}; available: {known}")
        seen.append(current)
        table = profiles[current]
        chain.append(table)
        parent = table.get("extends")
        current = str(parent) if parent is not None else None
    flat: dict[str, Any] = {}
    classifiers: dict[str, dict[str, Any]] = {}
    for pname, table in zip(reversed(seen), reversed(chain)):
        for key, value in table.items():
            if key in STRING_KEYS and not isinstance(value, str):
                raise XcamError(f"{_where(config, pname)}: {key} must be a string, not {value!r}")
            if key == "classifiers":
                if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                    raise XcamError(f"{_where(config, pname)}: classifiers must be tables "
                                    f"([profiles.{pname}.classifiers.CLASSIFIER]), not {value!r}")
                for clf, over in dict(value).items():
                    classifiers.setdefault(clf, {}).update(dict(over))
            elif key != "extends":
                flat[key] = value
    flat["classifiers"] = classifiers
    for key in flat:
        if key not in PROFILE_KEYS:
            raise XcamError(f"{_where(config, name)}: unknown key {key!r}; valid: {', '.join(PROFILE_KEYS)}")
    for clf, over in classifiers.items():
        bad = sorted(set(over) - set(CAM_KEYS))
        if bad:
            raise XcamError(f"{_where(config, name)}: classifiers.{clf} may set only {', '.join(CAM_KEYS)}, "
                            f"not {', '.join(bad)}")
    return flat


def _layers(value: Any, where: str) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if value in ("model", "auto"):
            return value
        parts = tuple(p.strip() for p in value.split(",") if p.strip())
        if not parts:
            raise XcamError(f"{where}: cam_layers must be 'model', 'auto' or layer paths")
        return parts
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise XcamError(f"{where}: cam_layers must be 'model', 'auto' or a list of layer paths, not {value!r}")


def _work_size(value: Any, where: str) -> int | str:
    if value in WORK_SIZES:
        return str(value)
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 16 or isinstance(value, bool):
        raise XcamError(f"{where}: work_size must be 'model', 'full' or a number of pixels >= 16, not {value!r}")
    return size


def _bool(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise XcamError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _table(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise XcamError(f"{where}: {key} must be a table")
    return dict(value)


def _cam_settings(table: Mapping[str, Any], base: CamSettings, where: str) -> CamSettings:
    return CamSettings(
        method=str(table.get("cam_method", base.method)),
        layers=_layers(table["cam_layers"], where) if "cam_layers" in table else base.layers,
        aug_smooth=_bool(table["aug_smooth"], "aug_smooth", where) if "aug_smooth" in table else base.aug_smooth,
        eigen_smooth=_bool(table["eigen_smooth"], "eigen_smooth", where) if "eigen_smooth" in table
        else base.eigen_smooth,
        options={**base.options, **_table(table["cam_options"], "cam_options", where)} if "cam_options" in table
        else dict(base.options),
    )


def profile_settings(config: "XcamConfig", name: str | None = None) -> ChainSettings:
    """The :class:`ChainSettings` of profile ``name`` (default: ``[defaults] profile``), with the
    ``[defaults]`` overrides of older config files applied."""
    name = name or config.defaults.get("profile") or DEFAULT_PROFILE
    flat = _flatten(available_profiles(config), name, config)
    for key, value in config.overrides.items():  # cam_method, mask_extractor, ... under [defaults]
        flat[key] = value
        if key == "cam_method":
            for over in flat["classifiers"].values():
                over.pop("cam_method", None)
    where = _where(config, name)
    cam = _cam_settings(flat, CamSettings(), where)
    per = {clf: _cam_settings(over, cam, f"{where} classifiers.{clf}") for clf, over in flat["classifiers"].items()}
    return ChainSettings(
        profile=name, cam=cam, per_classifier=per,
        mask=str(flat.get("mask_extractor", "threshold")),
        mask_options=_table(flat.get("mask_options", {}), "mask_options", where),
        strategy=str(flat.get("bbox_strategy", "largest")),
        strategy_options=_table(flat.get("strategy_options", {}), "strategy_options", where),
        ensembler=str(flat.get("ensembler", "mean")),
        work_size=_work_size(flat.get("work_size", "model"), where),
        description=str(flat.get("description", "")),
    )


@dataclass(frozen=True)
class Overrides:
    """What a command line sets explicitly (``None``: keep the profile's)."""

    method: str | None = None
    layers: str | Sequence[str] | None = None
    aug_smooth: bool | None = None
    eigen_smooth: bool | None = None
    mask: str | None = None
    mask_options: Mapping[str, Any] | None = None
    strategy: str | None = None
    strategy_options: Mapping[str, Any] | None = None
    ensembler: str | None = None
    model_weights: Sequence[float] | None = None
    work_size: int | str | None = None


def apply_overrides(settings: ChainSettings, over: Overrides) -> ChainSettings:
    """Command-line options over a profile. A CAM option given on the command line applies to
    every classifier (it replaces the per-classifier value too)."""
    cam_changes: dict[str, Any] = {}
    if over.method is not None:
        cam_changes["method"] = over.method
    if over.layers is not None:
        cam_changes["layers"] = _layers(over.layers if isinstance(over.layers, str) else list(over.layers),
                                        "--cam-layers")
    if over.aug_smooth is not None:
        cam_changes["aug_smooth"] = bool(over.aug_smooth)
    if over.eigen_smooth is not None:
        cam_changes["eigen_smooth"] = bool(over.eigen_smooth)
    changes: dict[str, Any] = {}
    if cam_changes:
        changes["cam"] = replace(settings.cam, **cam_changes)
        changes["per_classifier"] = {k: replace(v, **cam_changes) for k, v in settings.per_classifier.items()}
    for attr in ("mask", "strategy", "ensembler"):
        value = getattr(over, attr)
        if value is not None:
            changes[attr] = value
    for plugin_attr, attr in (("mask", "mask_options"), ("strategy", "strategy_options")):
        # the profile's options belong to the profile's plugin: another plugin starts from none
        kept = {} if getattr(over, plugin_attr) not in (None, getattr(settings, plugin_attr)) else getattr(settings, attr)
        value = getattr(over, attr)
        if value or kept is not getattr(settings, attr):
            changes[attr] = {**kept, **dict(value or {})}
    if over.model_weights is not None:
        changes["model_weights"] = tuple(float(w) for w in over.model_weights)
    if over.work_size is not None:
        changes["work_size"] = _work_size(over.work_size, "--work-size")
    return replace(settings, **changes) if changes else settings


def resolve_settings(pm: "XcamPluginManager", profile: str | None = None, overrides: Overrides | None = None,
                     ) -> ChainSettings:
    """Profile → overrides → checked against the installed plugins (unknown names fail here,
    before any model loads)."""
    settings = profile_settings(pm.config, profile)
    if overrides is not None:
        settings = apply_overrides(settings, overrides)
    for cam in (settings.cam, *settings.per_classifier.values()):
        pm.cam_method(cam.method)
    extractor = pm.mask_extractor(settings.mask)
    strategy = pm.bbox_strategy(settings.strategy)
    pm.ensembler(settings.ensembler)
    check_profile_options(pm, settings.profile)
    config = pm.config
    for kind, reg in ((MASK_KIND, extractor), (STRATEGY_KIND, strategy)):
        if reg.name in config.options:
            check_plugin_options(kind, reg, config.options[reg.name], f"{config.path}: [options.{reg.name}]")
    if overrides is not None:
        check_plugin_options(MASK_KIND, extractor, overrides.mask_options or {}, "--mask-option")
        check_plugin_options(STRATEGY_KIND, strategy, overrides.strategy_options or {}, "--strategy-option")
    return settings


# -- mask extractor / bbox strategy options -------------------------------------------------------
MASK_KIND = "mask extractor"
STRATEGY_KIND = "bbox strategy"
OPTION_CHECK_ATTR = "check_options"
"""A plugin callable may carry ``fn.check_options(options: Mapping) -> None`` that raises
``ValueError`` (or an :class:`XcamError`) for an out-of-range value of its own options; the
built-in extractors and strategies do."""
_DATA_ARGUMENTS: dict[str, tuple[str, ...]] = {MASK_KIND: (), STRATEGY_KIND: ("cam",)}
"""Keyword arguments the chain passes itself (besides the first positional one): not options."""


def _plugin_callable(kind: str, registration: Any) -> Callable[..., Any]:
    return registration.extract if kind == MASK_KIND else registration.boxes


def accepted_option_keys(kind: str, fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """The option names ``fn`` (a mask extractor's ``extract`` or a strategy's ``boxes``) accepts:
    its keyword parameters after the first (the CAM / the mask), less those the chain passes
    itself. ``None`` (any name) when it takes ``**kwargs`` under a name other than ``_`` or has
    no readable signature; ``**_`` means "other names are ignored", so only the named ones count."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD and p.name != "_" for p in params):
        return None
    P = inspect.Parameter
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    first = positional[0].name if positional else None  # the CAM / the mask
    return tuple(p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
                 and p.name != first and p.name not in _DATA_ARGUMENTS[kind])


def check_plugin_options(kind: str, registration: Any, options: Mapping[str, Any], where: str) -> None:
    """One-line :class:`UsageError` naming ``where`` when ``options`` has an empty or unknown key
    for the plugin (keys from :func:`accepted_option_keys`) or a value its ``check_options`` rejects."""
    if not options:
        return
    name = registration.name
    fn = _plugin_callable(kind, registration)
    for key in options:
        if not isinstance(key, str) or not key.strip():
            raise UsageError(f"{where}: empty option name for {kind} {name!r}")
    keys = accepted_option_keys(kind, fn)
    if keys is not None:
        unknown = [k for k in options if k not in keys]
        if unknown:
            valid = ", ".join(keys) if keys else "(it takes no options)"
            raise UsageError(f"{where}: unknown option {unknown[0]!r} for {kind} {name!r}; valid: {valid}")
    check = getattr(fn, OPTION_CHECK_ATTR, None)
    if callable(check):
        try:
            check(options)
        except (ValueError, TypeError, XcamError) as exc:
            raise UsageError(f"{where}: {kind} {name!r}: {exc}") from None


def check_profile_options(pm: "XcamPluginManager", name: str) -> None:
    """Check every ``mask_options`` / ``strategy_options`` table of profile ``name`` and its
    ``extends`` chain against the extractor / strategy in effect where the table is written
    (built-in table first, then the one of plugins.toml merged over it)."""
    from xcam.core.errors import PluginError

    config = pm.config
    builtin = builtin_profiles()
    chain: list[str] = []
    current: str | None = name
    merged = available_profiles(config)
    while current is not None and current in merged and current not in chain:  # _flatten checked the chain
        chain.append(current)
        parent = merged[current].get("extends")
        current = str(parent) if parent is not None else None
    plugin = {MASK_KIND: "threshold", STRATEGY_KIND: "largest"}
    tables = {MASK_KIND: ("mask_extractor", "mask_options"), STRATEGY_KIND: ("bbox_strategy", "strategy_options")}
    for pname in reversed(chain):
        for source, table in ((BUILTIN_PROFILES, builtin.get(pname)), (config.path, config.profiles.get(pname))):
            if not table:
                continue
            for kind, (plugin_key, options_key) in tables.items():
                plugin[kind] = str(table.get(plugin_key, plugin[kind]))
                options = table.get(options_key)
                if not isinstance(options, Mapping) or not options:
                    continue
                try:
                    reg = pm.mask_extractor(plugin[kind]) if kind == MASK_KIND else pm.bbox_strategy(plugin[kind])
                except PluginError:
                    continue  # a plugin the final settings do not use (the one used is checked by name)
                check_plugin_options(kind, reg, options, f"{source}: [profiles.{pname}] {options_key}")


def plugin_options(pm: "XcamPluginManager", name: str, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``[options.NAME]`` of plugins.toml, then each of ``layers`` over it (``None`` values dropped)."""
    merged = pm.config.plugin_options(name)
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    return merged
