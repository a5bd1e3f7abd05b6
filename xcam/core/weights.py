"""Where weight files live, how they are fetched, and how they are loaded safely.

Search order for a variant's file: ``--weights-dir`` / ``$XCAM_WEIGHTS_DIR``, then
torchxrayvision's cache (``~/.torchxrayvision/models_data/``, or ``$XRV_CACHE_DIR``). A missing
file is downloaded into the xrv cache with torchxrayvision's own downloader (its real
download-on-first-use path); when that fails, :class:`WeightsMissingError` names the file, its URL
and where to put it.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with an explicit
allowlist of the classes torchxrayvision's pickled whole-module checkpoints need. Each file's
sha256 is recorded at its first successful load (``~/.xcam/trusted_weights.json`` or
``$XCAM_HOME``) and a changed file is refused unless ``accept_changed`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xcam.core.errors import ChangedWeightsError, UnsafeWeightsError, WeightsError, WeightsMissingError
from xcam.core.variants import WeightVariant


def xcam_home() -> Path:
    return Path(os.environ.get("XCAM_HOME", Path.home() / ".xcam"))


def xrv_cache_dir() -> Path:
    """torchxrayvision's weight cache (``~/.torchxrayvision/models_data``)."""
    if os.environ.get("XRV_CACHE_DIR"):
        return Path(os.environ["XRV_CACHE_DIR"])
    return Path.home() / ".torchxrayvision" / "models_data"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_globals() -> list[Any]:
    """Classes a torchxrayvision checkpoint may reference; nothing else is ever unpickled."""
    import collections

    import torch
    import torchxrayvision as xrv
    from torch import nn

    allowed: list[Any] = [
        collections.OrderedDict,
        set,
        xrv.models.DenseNet,
        xrv.models._DenseLayer,
        xrv.models._DenseBlock,
        xrv.models._Transition,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.Sequential,
        nn.Linear,
        nn.Dropout,
        torch.nn.parameter.Parameter,
        torch.Size,
    ]
    return allowed


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with the allowlist; refuses anything else."""
    import torch

    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        for line in str(exc).splitlines():
            if "Unsupported global" in line or "Unsupported operand" in line:
                reason = line.strip()
                break
        raise UnsafeWeightsError(f"{path}: refused to load: needs something outside the allowlist ({reason})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def to_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """A loaded checkpoint (state dict, whole module or training checkpoint) → state dict."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and "model_state" in obj and isinstance(obj["model_state"], dict):
        return obj["model_state"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise WeightsError(f"{path}: checkpoint holds neither a state dict nor a model ({type(obj).__name__})")


@dataclass
class WeightsStore:
    """Finds, fetches, verifies and safely loads weight files."""

    weights_dir: Path | None = None
    allow_download: bool = True
    accept_changed: bool = False
    trust_file: Path = field(default_factory=lambda: xcam_home() / "trusted_weights.json")

    @classmethod
    def from_env(cls, weights_dir: str | Path | None = None, accept_changed: bool = False) -> "WeightsStore":
        folder = weights_dir or os.environ.get("XCAM_WEIGHTS_DIR")
        allow = os.environ.get("XCAM_OFFLINE", "") not in ("1", "true", "yes")
        return cls(Path(folder).expanduser() if folder else None, allow, accept_changed)

    def search_dirs(self) -> list[Path]:
        dirs = [self.weights_dir] if self.weights_dir else []
        return dirs + [xrv_cache_dir()]

    def find(self, variant: WeightVariant) -> Path | None:
        """The local file for a variant, or ``None``."""
        for folder in self.search_dirs():
            candidate = folder / variant.filename
            if candidate.is_file():
                return candidate
        return None

    def resolve(self, variant: WeightVariant) -> Path:
        """The local file, downloading it with torchxrayvision's downloader when missing."""
        found = self.find(variant)
        if found is not None:
            return found
        dirs = self.search_dirs()
        if not variant.url or not self.allow_download:
            raise WeightsMissingError(variant.filename, variant.url, dirs, "downloads disabled" if variant.url else "")
        target = xrv_cache_dir() / variant.filename
        try:
            import torchxrayvision as xrv

            target.parent.mkdir(parents=True, exist_ok=True)
            xrv.utils.download(variant.url, str(target))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise WeightsMissingError(variant.filename, variant.url, dirs, f"download failed: {reason}") from None
        return target

    # -- trust on first use ---------------------------------------------------------------
    def _trusted(self) -> dict[str, str]:
        try:
            return json.loads(self.trust_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def trust(self, path: str | Path, digest: str | None = None) -> str:
        """Record ``path``'s sha256 (computed when not given) as trusted; return it.

        For files this process wrote itself (e.g. ``xcam train`` checkpoints), so a retrained file at
        a previously trusted path loads without ``--accept-changed-weights``."""
        path = Path(path)
        digest = digest or sha256_of(path)
        trusted = self._trusted()
        trusted[str(path.resolve())] = digest
        self.trust_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.trust_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(trusted, indent=1, sort_keys=True))
        os.replace(tmp, self.trust_file)
        return digest

    def verify(self, path: Path, variant: WeightVariant | None = None) -> str:
        """sha256 of the file, checked against the pinned or first-seen value."""
        digest = sha256_of(path)
        if variant is not None and variant.sha256 and digest != variant.sha256 and not self.accept_changed:
            raise ChangedWeightsError(
                f"{path}: sha256 {digest[:12]}… does not match the published {variant.sha256[:12]}…; "
                f"replace the file or pass --accept-changed-weights"
            )
        known = self._trusted().get(str(path.resolve()))
        if known is not None and known != digest and not self.accept_changed:
            raise ChangedWeightsError(
                f"{path}: file changed since it was first loaded (sha256 {known[:12]}… → {digest[:12]}…); "
                f"pass --accept-changed-weights to trust the new file"
            )
        return digest

    def load_state_dict(self, path: Path, variant: WeightVariant | None = None) -> tuple[dict[str, Any], str]:
        """Verify, safely load, and return ``(state_dict, sha256)``; records trust on success."""
        digest = self.verify(path, variant)
        state = to_state_dict(safe_torch_load(path), path)
        self.trust(path, digest)
        return state, digest

    def load_checkpoint(self, path: Path, variant: WeightVariant | None = None) -> tuple[Any, str]:
        """Like :meth:`load_state_dict` but returns the raw loaded object (training checkpoints)."""
        digest = self.verify(path, variant)
        obj = safe_torch_load(path)
        self.trust(path, digest)
        return obj, digest
