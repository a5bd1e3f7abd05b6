"""Settings of the web UI, passed from ``xcam ui`` to the Streamlit script through environment variables.

Streamlit runs the app script in its own process, so the command line cannot hand it Python
objects: :meth:`UiSettings.to_env` writes the settings as ``XCAM_*`` variables and
:meth:`UiSettings.from_env` reads them back inside the app. Nothing here imports Streamlit or torch.

=========================  ==================================================================
``XCAM_UI_IMAGES_DIR``     folder offered in the "pick from folder" image source
``XCAM_WEIGHTS_DIR``       folder with weight files (the same variable as every other command)
``XCAM_UI_MAX_UPLOAD_MB``  upload size limit in MB (default 50)
``XCAM_UI_RANDOM_WEIGHTS`` ``1``: build every model with random weights (tests, demos)
``XCAM_UI_CHECKPOINTS``    extra checkpoints, ``model=path`` joined by ``os.pathsep``
``XCAM_UI_MODELS``         models selected when the page opens, comma-separated
``XCAM_UI_DEVICE``         ``cpu`` (default), ``cuda`` or ``auto``
``XCAM_UI_PROFILE``        settings profile selected when the page opens (default: plugins.toml's)
``XCAM_CONFIG``            the ``plugins.toml`` to use (the global ``--config``)
=========================  ==================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_CHECKPOINT_MODEL = "mobilenetv3"
"""A checkpoint path given without ``model=`` belongs to this classifier (``xcam train`` writes them)."""

TRUE_WORDS = ("1", "true", "yes", "on")


def parse_checkpoint(spec: str) -> tuple[str, str]:
    """``"model=path"`` or ``"path"`` (→ :data:`DEFAULT_CHECKPOINT_MODEL`) as ``(model, absolute path)``."""
    model, sep, path = spec.partition("=")
    if not sep or "/" in model or "\\" in model:
        model, path = DEFAULT_CHECKPOINT_MODEL, spec
    return model.strip(), str(Path(path.strip()).expanduser().resolve())


@dataclass(frozen=True)
class UiSettings:
    """What the app needs from the command line."""

    images_dir: Path | None = None
    weights_dir: Path | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    random_weights: bool = False
    checkpoints: tuple[tuple[str, str], ...] = ()
    models: tuple[str, ...] = ()
    device: str = "cpu"
    config: Path | None = None
    profile: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def checkpoints_for(self, model: str) -> list[str]:
        """Checkpoint paths given for ``model`` (offered as extra weight variants)."""
        return [path for name, path in self.checkpoints if name.lower() == model.lower()]

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry these settings to the Streamlit process."""
        env = {
            "XCAM_UI_MAX_UPLOAD_MB": f"{self.max_upload_mb:g}",
            "XCAM_UI_RANDOM_WEIGHTS": "1" if self.random_weights else "0",
            "XCAM_UI_DEVICE": self.device,
            "XCAM_UI_CHECKPOINTS": os.pathsep.join(f"{m}={p}" for m, p in self.checkpoints),
            "XCAM_UI_MODELS": ",".join(self.models),
            "XCAM_UI_PROFILE": self.profile or "",
        }
        if self.images_dir is not None:
            env["XCAM_UI_IMAGES_DIR"] = str(self.images_dir)
        if self.weights_dir is not None:
            env["XCAM_WEIGHTS_DIR"] = str(self.weights_dir)
        if self.config is not None:
            env["XCAM_CONFIG"] = str(self.config)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "UiSettings":
        """Read the settings back (unset or malformed values fall back to the defaults)."""
        env = os.environ if environ is None else environ
        path = lambda key: Path(env[key]).expanduser() if env.get(key) else None  # noqa: E731
        try:
            max_mb = float(env.get("XCAM_UI_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB)
        except ValueError:
            max_mb = DEFAULT_MAX_UPLOAD_MB
        if max_mb <= 0:
            max_mb = DEFAULT_MAX_UPLOAD_MB
        specs = [s for s in (env.get("XCAM_UI_CHECKPOINTS") or "").split(os.pathsep) if s.strip()]
        models = tuple(m.strip() for m in (env.get("XCAM_UI_MODELS") or "").split(",") if m.strip())
        return cls(
            images_dir=path("XCAM_UI_IMAGES_DIR"),
            weights_dir=path("XCAM_WEIGHTS_DIR"),
            max_upload_mb=max_mb,
            random_weights=(env.get("XCAM_UI_RANDOM_WEIGHTS") or "").strip().lower() in TRUE_WORDS,
            checkpoints=tuple(parse_checkpoint(s) for s in specs),
            models=models,
            device=(env.get("XCAM_UI_DEVICE") or "cpu").strip() or "cpu",
            config=path("XCAM_CONFIG"),
            profile=(env.get("XCAM_UI_PROFILE") or "").strip() or None,
        )
