"""``xcam ui``: start the Streamlit web UI (``xcam/ui/app.py``) in a ``streamlit run`` process.

Settings travel to the app through environment variables (:mod:`xcam.ui.settings`); the app finds
``xcam demo``'s model and phantoms itself (:mod:`xcam.core.demo_assets`). This module imports
neither Streamlit nor torch; without Streamlit it says ``pip install "xcam[ui]"``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import click

from xcam.commands._common import profile_option, weights_dir_option
from xcam.core.errors import XcamError
from xcam.ui.settings import UiSettings, parse_checkpoint

APP_PATH = Path(__file__).resolve().parents[1] / "ui" / "app.py"
INSTALL_HINT = 'the web UI needs Streamlit: pip install "xcam[ui]"'


def streamlit_command(settings: UiSettings, port: int, address: str, python: str | None = None) -> list[str]:
    """The ``python -m streamlit run`` command line for the app (headless, no telemetry, no watcher)."""
    return [
        python or sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.maxUploadSize", str(max(1, math.ceil(settings.max_upload_mb))),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--theme.base", "light",
        "--client.toolbarMode", "viewer",
    ]


def check_profile(config: str | None, profile: str) -> None:
    """An unknown or malformed ``--profile`` fails here, in one line, before the server starts."""
    from xcam.chain.settings import profile_settings
    from xcam.core.config import load_config

    profile_settings(load_config(config), profile)


def demo_line() -> str:
    """Where the demo model and its example phantoms come from, or the command that makes them."""
    from xcam.core.demo_assets import DEMO_COMMAND, find_demo

    try:
        demo = find_demo()
    except OSError:
        demo = None
    if demo is None:
        return f"no demo model yet ({DEMO_COMMAND} trains one offline in about a minute)"
    return f"demo model and example phantoms from {demo.root}"


def check_streamlit() -> None:
    if importlib.util.find_spec("streamlit") is None:
        raise XcamError(INSTALL_HINT)


@click.command("ui")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="Port to serve on.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--images-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder of images offered in 'pick from folder'.")
@weights_dir_option
@click.option("--weights", "checkpoints", multiple=True, metavar="[MODEL=]PATH",
              help="Extra checkpoint offered as a weight variant (repeatable; no MODEL= means mobilenetv3).")
@click.option("--model", "models", multiple=True, help="Model selected when the page opens (repeatable).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=50.0, show_default=True,
              help="Uploads larger than this are refused.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@profile_option
@click.option("--random-weights", is_flag=True, hidden=True, envvar="XCAM_UI_RANDOM_WEIGHTS",
              help="Random-init weights for every model (tests and demos; predictions are meaningless).")
@click.option("--print-command", is_flag=True, hidden=True, help="Print the streamlit command and exit.")
@click.pass_context
def ui(ctx: click.Context, port: int, address: str, images_dir: str | None, weights_dir: str | None,
       checkpoints: Sequence[str], models: Sequence[str], max_upload_mb: float, device: str, profile: str | None,
       random_weights: bool, print_command: bool) -> None:
    """Start the Streamlit web UI: upload or pick an X-ray, compare models, CAMs, boxes and metrics."""
    if checkpoints and random_weights:
        raise XcamError("--weights loads a trained checkpoint and --random-weights replaces all weights: use one")
    for spec in checkpoints:
        model, path = parse_checkpoint(spec)
        if not Path(path).is_file():
            raise XcamError(f"--weights {spec}: checkpoint file {path} not found")
    config = (ctx.find_root().obj or {}).get("config")
    if profile:
        check_profile(config, profile)
    settings = UiSettings(
        images_dir=Path(images_dir).resolve() if images_dir else None,
        weights_dir=Path(weights_dir).expanduser().resolve() if weights_dir else None,
        max_upload_mb=max_upload_mb,
        random_weights=random_weights,
        checkpoints=tuple(parse_checkpoint(s) for s in checkpoints),
        models=tuple(models),
        device=device,
        config=Path(config).resolve() if config else None,
        profile=profile or None,
    )
    command = streamlit_command(settings, port, address)
    env = {**os.environ, **settings.to_env()}
    if print_command:
        click.echo(" ".join(command))
        for key, value in sorted(settings.to_env().items()):
            click.echo(f"{key}={value}")
        return
    check_streamlit()
    click.echo(f"xcam ui: http://{'localhost' if address in ('127.0.0.1', '0.0.0.0') else address}:{port}", err=True)
    if not random_weights:
        click.echo(f"xcam ui: {demo_line()}", err=True)
    if os.name == "posix":  # become the server: signals (Ctrl+C, SIGTERM) reach Streamlit directly
        sys.stderr.flush()
        os.execve(command[0], command, env)
    process = subprocess.Popen(command, env=env)
    try:
        sys.exit(process.wait())
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
