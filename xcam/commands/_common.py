"""Helpers shared by CLI commands: the plugin manager from the CLI context, common options."""

from __future__ import annotations

from typing import Callable

import click

from xcam.core.config import load_config
from xcam.core.manager import XcamPluginManager, get_plugin_manager


MODEL_BACKENDS = ("torch", "onnx", "openvino", "auto")
"""The ``--backend`` choices of the model commands (see :data:`xcam.export.backends.BACKENDS`)."""


def plugin_manager(ctx: click.Context | None = None) -> XcamPluginManager:
    """The plugin manager for this invocation (honours the global ``--config``)."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    if "pm" not in obj:
        obj["pm"] = get_plugin_manager(load_config(obj.get("config")))
        root.obj = obj
    return obj["pm"]


def weights_dir_option(f: Callable) -> Callable:
    return click.option(
        "--weights-dir",
        type=click.Path(file_okay=False),
        envvar="XCAM_WEIGHTS_DIR",
        default=None,
        help="Folder with weight files for offline use (also $XCAM_WEIGHTS_DIR).",
    )(f)


def accept_changed_weights_option(f: Callable) -> Callable:
    return click.option(
        "--accept-changed-weights",
        is_flag=True,
        help="Trust a weight file whose sha256 changed since it was first loaded.",
    )(f)


def device_option(f: Callable) -> Callable:
    return click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
        help="Where to run the model.",
    )(f)


def resolve_device(device: str) -> str:
    if device != "auto":
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                from xcam.core.errors import XcamError

                raise XcamError("--device cuda requested but no CUDA device is available")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def profile_option(f: Callable) -> Callable:
    return click.option(
        "--profile", default=None, metavar="NAME",
        help="Settings profile (plugins.toml [profiles.NAME] or built-in: default, fast, legacy, exact; "
             "see `xcam config`). Options given here override it.",
    )(f)


def parse_key_values(pairs: tuple[str, ...] | list[str], what: str) -> dict[str, object]:
    """``key=value`` strings → dict with numbers and booleans parsed; one-line error otherwise."""
    from xcam.core.errors import UsageError

    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{what} {pair!r}: expected key=value")
        key, value = (t.strip() for t in pair.split("=", 1))
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def split_csv(text: str | None) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def renamed_option(old: str, new: str) -> None:
    """Print the one-line notice for a renamed option that was used under its old name."""
    click.echo(f"note: {old} is now {new} (the old spelling still works)", err=True)


def pick_renamed(new: str | None, old: str | None, new_name: str, old_name: str) -> str | None:
    """The value of a renamed option: the new spelling's, else the old one's (with its notice)."""
    from xcam.core.errors import UsageError

    if old is None:
        return new
    if new is not None and new != old:
        raise UsageError(f"{old_name} {old!r} and {new_name} {new!r} disagree (use {new_name} only)")
    renamed_option(old_name, new_name)
    return old


def chain_settings(profile: str | None, **overrides: object):  # -> ChainSettings
    """The resolved settings of ``--profile`` with the command line's explicit options over it
    (``None`` values keep the profile's); unknown plugin names fail here, in one line."""
    from xcam.chain.settings import Overrides, resolve_settings

    return resolve_settings(plugin_manager(), profile, Overrides(**overrides))  # type: ignore[arg-type]


def cam_options(f: Callable) -> Callable:
    """The chain options every findings command shares (each overrides the profile when given)."""
    options = [
        click.option("--method", default=None, help="CAM method plugin (default: the profile's; see `xcam config`)."),
        click.option("--cam-layers", default=None, metavar="model|auto|L1,L2",
                     help="Target layer(s): 'model', 'auto' (the network's best measured fusion) or layer paths."),
        click.option("--aug-smooth/--no-aug-smooth", default=None,
                     help="Test-time augmentation of each CAM (flips x 3 brightness factors)."),
        click.option("--eigen-smooth/--no-eigen-smooth", default=None,
                     help="First principal component of the weighted activations."),
        click.option("--mask", "mask_name", default=None, help="Mask extractor plugin (default: the profile's)."),
        click.option("--mask-option", multiple=True, metavar="KEY=VALUE", help="Mask extractor option (repeatable)."),
        click.option("--strategy", default=None, help="Bbox strategy plugin (default: the profile's)."),
        click.option("--strategy-option", multiple=True, metavar="KEY=VALUE",
                     help="Bbox strategy option (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def settings_from_options(profile: str | None, method: str | None, cam_layers: str | None, aug_smooth: bool | None,
                          eigen_smooth: bool | None, mask: str | None, mask_option: tuple[str, ...],
                          strategy: str | None, strategy_option: tuple[str, ...], **more: object):
    """:func:`chain_settings` from the options of :func:`cam_options` (and ``more`` overrides)."""
    return chain_settings(
        profile, method=method, layers=cam_layers, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, mask=mask,
        mask_options=parse_key_values(mask_option, "--mask-option"), strategy=strategy,
        strategy_options=parse_key_values(strategy_option, "--strategy-option"), **more,
    )


def parse_duration(text: str, what: str) -> float:
    """``"120"``, ``"120s"``, ``"2m"``, ``"1.5h"`` → seconds; a one-line error otherwise."""
    import re

    from xcam.core.errors import UsageError

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h)?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{what} {text!r}: expected a duration such as 120s, 10m or 1.5h")
    factor = {"m": 60, "min": 60, "h": 3600}.get(match.group(2) or "s", 1)
    return float(match.group(1)) * factor


def plugin_failure_options(f: Callable) -> Callable:
    """``--fail-fast`` and ``--max-plugin-failures`` of the batch commands."""
    f = click.option("--max-plugin-failures", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Stop the job when one plugin fails on N images in a row (default 20; 0: never). "
                          "What was written stays; rerunning resumes.")(f)
    return click.option("--fail-fast", is_flag=True,
                        help="Stop at the first exception a plugin raises (debugging; with --debug: the traceback). "
                             "Without it the images a plugin fails on are recorded as errors and the job goes on.")(f)


def failure_limits(fail_fast: bool, max_plugin_failures: int | None) -> dict[str, object]:
    """The chain's ``fail_fast``/``max_plugin_failures`` from those options (``None``: the default)."""
    out: dict[str, object] = {"fail_fast": fail_fast}
    if max_plugin_failures is not None:
        out["max_plugin_failures"] = max_plugin_failures or None
    return out


def _set_dicom_voi(ctx: click.Context, param: click.Parameter, value: str | None):  # -> DicomReadOptions
    """Parse ``--dicom-voi``, make it this process's DICOM reading and return it (one-line error)."""
    from xcam.core.errors import UsageError
    from xcam.core.imageio import DicomReadOptions, set_dicom_options

    try:
        options = DicomReadOptions.parse(value)
    except ValueError as exc:
        raise UsageError(f"--dicom-voi {exc}") from None
    set_dicom_options(options)
    return options


def dicom_voi_option(f: Callable | None = None, *, expose: bool = False) -> Callable:
    """``--dicom-voi none|auto|CENTER,WIDTH``: how DICOM inputs are read (docs/dicom.md), set for
    this process. ``expose=True`` also passes the parsed :class:`~xcam.core.imageio.DicomReadOptions`
    as ``dicom_voi``, for commands that hand it to worker processes (which do not share the setting)."""
    def decorate(g: Callable) -> Callable:
        return click.option(
            "--dicom-voi", default="none", show_default=True, metavar="none|auto|CENTER,WIDTH",
            expose_value=expose, callback=_set_dicom_voi,
            help="DICOM grey scale: none (modality LUT only, as torchxrayvision), auto (the file's VOI LUT or "
                 "first window) or a window CENTER,WIDTH in modality units.",
        )(g)

    return decorate(f) if f is not None else decorate


def dicom_out_option(f: Callable) -> Callable:
    """``--dicom-out DIR``: DICOM SEG, SR and CAM overlays for DICOM inputs (docs/dicom.md)."""
    return click.option(
        "--dicom-out", type=click.Path(file_okay=False), default=None, metavar="DIR",
        help="Also write a DICOM Segmentation, a Structured Report and CAM overlays per DICOM input "
             "(a non-DICOM input is an error).",
    )(f)
