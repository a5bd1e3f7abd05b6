"""The one image → findings engine every command and the UI use.

* :mod:`xcam.chain.settings` — :class:`ChainSettings` from named profiles (``profiles.toml``,
  ``plugins.toml``), :class:`ClassChoice`;
* :mod:`xcam.chain.models` — ``--models`` entries, models loaded once per process;
* :mod:`xcam.chain.cams` — in-graph or plugin CAMs, layer fusion, test-time augmentation;
* :mod:`xcam.chain.localize` — masks and boxes at a bounded working resolution, metrics;
* :mod:`xcam.chain.engine` — :class:`Chain`: batched, decode overlapped with inference;
* :mod:`xcam.chain.results` — the result model; :mod:`xcam.chain.outputs` — files (layout,
  writer, reader).

Submodules are imported on use (``xcam --help`` imports none of them).
"""
