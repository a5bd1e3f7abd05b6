"""Helpers shared by CLI commands: the plugin manager from the CLI context, common options."""

from __future__ import annotations

from typing import Callable

import click

from xcam.core.config import load_config
from xcam.core.manager import XcamPluginManager, get_plugin_manager


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
