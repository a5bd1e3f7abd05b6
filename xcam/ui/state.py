"""Streamlit-side state: cached plugin manager and models, the session's temporary folder.

Models are built once per process and weight choice (by the chain's own cache,
:mod:`xcam.chain.models`), so every session and every rerun reuses them; the plugin manager is
cached per config file (``st.cache_resource``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, TypeVar

import streamlit as st

from xcam.ui.choices import VariantChoice, variant_choices  # noqa: F401 - the app's names for them
from xcam.ui.settings import UiSettings
from xcam.ui.uploads import SessionFolder

if TYPE_CHECKING:  # pragma: no cover
    from xcam.chain.models import LoadedModel
    from xcam.core.manager import XcamPluginManager
    from xcam.core.weights import WeightsStore

T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def plugin_manager(config: str | None) -> "XcamPluginManager":
    """The plugin manager (built-ins, entry points, ``plugins.toml``): third-party models appear here."""
    from xcam.core.config import load_config
    from xcam.core.manager import get_plugin_manager

    return get_plugin_manager(load_config(config))


def load_model(config: str | None, model: str, variant: str, weights_dir: str | None, random_init: bool,
               device: str) -> "LoadedModel":
    """A built model (PyTorch, as CAM plugins need) from the chain's process-wide model cache
    (:mod:`xcam.chain.models`), so the chain the page runs finds the same object; raises
    :class:`XcamError` (a missing weight file names it)."""
    from xcam.chain.models import load_models
    from xcam.ui.engine import ModelSpec, load_options

    (loaded,) = load_models(plugin_manager(config), [ModelSpec(model, variant).ref],
                            load_options(device, random_init), store(weights_dir))
    return loaded


@st.cache_resource(show_spinner=False)
def model_lock() -> threading.Lock:
    """One lock for running models: sessions are threads, and CAM methods hook into the shared
    model objects, so two sessions must not run a CAM on one model at the same time."""
    return threading.Lock()


def store(weights_dir: str | None) -> "WeightsStore":
    from xcam.core.weights import WeightsStore

    return WeightsStore.from_env(weights_dir)


def device(name: str) -> str:
    """``auto`` → ``cuda`` when available; a requested but missing CUDA device is an error."""
    import torch

    from xcam.core.errors import XcamError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise XcamError("--device cuda requested but no CUDA device is available")
    return name


def settings() -> UiSettings:
    return UiSettings.from_env()


def config_key(s: UiSettings) -> str | None:
    return str(s.config) if s.config else None


def session_folder() -> SessionFolder:
    """This session's private temporary folder (made on first use, deleted with the session)."""
    folder = st.session_state.get("_xcam_session_folder")
    if folder is None or not folder.alive:
        folder = SessionFolder()
        st.session_state["_xcam_session_folder"] = folder
    return folder


MEMO_SIZE = 16  # decoded images and results (CAMs and masks in the work grid: small)


def memo(key: tuple, compute: Callable[[], T]) -> T:
    """Per-session memo (least recently used out): reruns reuse CAMs, masks and predictions."""
    table: OrderedDict = st.session_state.setdefault("_xcam_memo", OrderedDict())
    if key in table:
        table.move_to_end(key)
        return table[key]
    value = compute()
    table[key] = value
    while len(table) > MEMO_SIZE:
        table.popitem(last=False)
    return value
