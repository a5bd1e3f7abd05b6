"""Export an :class:`~xcam.core.model.XCamModel` to ONNX, with metadata and a cache.

The graph takes ``input [batch, 1, S, S]`` (already preprocessed; resizing stays outside) and
returns ``logits``, ``probabilities`` (sigmoid, then xrv's op_norm when the weights carry
thresholds; NaN thresholds give 0.5) and, for GAP → linear heads, ``cams [batch, C, h, w]``: the
exact Grad-CAM of every class (see :mod:`xcam.core.cam_math`; for class-map heads such as PYLON,
the ReLU'd class maps, which are Grad-CAM at the class-map layer), ReLU'd but **not normalized**
(normalization is done in numpy by the runtime, so the graph stays a plain einsum).

Exports are cached under ``$XCAM_HOME/onnx`` (``~/.xcam/onnx``) by model, variant, weights
sha256, opset and export format, so a second ``--backend onnx`` run reuses the file. Parity
against PyTorch (which runs the file on ONNX Runtime) is :mod:`xcam.export.parity`; this module
never imports the runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xcam import __version__
from xcam.core.errors import XcamError

if TYPE_CHECKING:  # pragma: no cover
    from xcam.core.model import XCamModel
    from xcam.core.types import ClassifierRegistration, WeightVariant
    from xcam.core.weights import WeightsStore

EXPORT_FORMAT = "2"  # 2: the model card (xcam.card). Bump when the graph's outputs or metadata change: invalidates the cache
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities", "cams")
META_PREFIX = "xcam."


class ExportError(XcamError):
    """The model could not be exported (``auto`` backends fall back to PyTorch on this)."""


@dataclass
class ExportArtifact:
    """An exported file and what is known about it."""

    path: Path
    metadata: dict[str, str]
    created: bool = False  # False: reused from the cache
    seconds: float = 0.0
    exporter: str = ""
    model: XCamModel | None = None  # the PyTorch model, when it had to be built
    parity: dict[str, Any] = field(default_factory=dict)


def onnx_cache_dir() -> Path:
    """``$XCAM_HOME/onnx`` (default ``~/.xcam/onnx``)."""
    from xcam.core.weights import xcam_home

    return xcam_home() / "onnx"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def cache_stem(model_name: str, variant: WeightVariant, weights_sha256: str, opset: int = DEFAULT_OPSET,
               options: Mapping[str, Any] | None = None) -> str:
    """File stem of a cached export: model, variant, weights hash, opset, format (and options)."""
    label = Path(variant.name).stem if "/" in variant.name else variant.name
    opts = {k: v for k, v in (options or {}).items() if k != "weights"}
    extra = "-o" + hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:8] if opts else ""
    return f"{_safe(model_name)}--{_safe(label)}--{weights_sha256[:16]}--opset{opset}-f{EXPORT_FORMAT}{extra}"


def build_metadata(model: XCamModel, *, with_cams: bool, opset: int, exporter: str) -> dict[str, str]:
    """What travels with the ONNX file (``metadata_props``, keys prefixed ``xcam.``)."""
    from xcam.core.cards import card_for_model

    threshs = None
    if model.op_threshs is not None:
        threshs = [None if math.isnan(v) else float(v) for v in model.op_threshs.tolist()]
    head = model.gap_linear_head() if with_cams else None
    maps = model.class_map_head() if with_cams and head is None else None  # PYLON: cams from its class maps
    meta: dict[str, Any] = {
        "model": model.name,
        "variant": model.variant,
        "labels": json.dumps(list(model.labels)),
        "input_size": str(model.input_size),
        "input_shape": json.dumps(["batch", 1, model.input_size, model.input_size]),
        "preprocessing": model.preprocessing,
        "op_threshs": json.dumps(threshs),
        "calibration": "sigmoid+op_norm" if threshs is not None else "sigmoid",
        "weights_file": model.weights_path or "(random initialisation)",
        "weights_sha256": model.weights_sha256 or "",
        "version": __version__,
        "export_format": EXPORT_FORMAT,
        "opset": str(opset),
        "exporter": exporter,
        "outputs": json.dumps(list(OUTPUT_NAMES if head is not None or maps is not None else OUTPUT_NAMES[:2])),
        "cam_target_layer": maps[0] if maps is not None else model.target_layer_path if head is not None else "",
        "localization_layers": json.dumps(list(model.localization_layers)),
        "cam_method": "gradcam (exact all-class, W/(h*w) einsum); ReLU'd, not normalized" if head is not None else
                      "class maps: ReLU(map) = gradcam at the class-map layer (map - min where all < 0), "
                      "not normalized" if maps is not None else "",
        "quantization": "none",
        "card": json.dumps(card_for_model(model)),  # xcam.core.cards: the same card as `xcam models --card`
    }
    return {META_PREFIX + k: str(v) for k, v in meta.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """``xcam.*`` metadata of an exported file, without the ``xcam.`` prefix."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def write_metadata(path: str | Path, metadata: Mapping[str, str]) -> None:
    """Replace the file's ``xcam.*`` metadata (in place, single-file models)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = (key if key.startswith(META_PREFIX) else META_PREFIX + key), str(value)
    proto.producer_name, proto.producer_version = "xcam", __version__
    onnx.save(proto, str(path))


def _torch_export(graph: Any, example: Any, path: Path, opset: int, exporter: str, has_cams: bool) -> None:
    import torch

    names = list(OUTPUT_NAMES if has_cams else OUTPUT_NAMES[:2])
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        if exporter == "dynamo":
            torch.onnx.export(
                graph, (example,), str(path), input_names=[INPUT_NAME], output_names=names, opset_version=opset,
                dynamo=True, external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
        else:
            axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # chosen knowingly
            torch.onnx.export(
                graph, (example,), str(path), input_names=[INPUT_NAME], output_names=names, opset_version=opset,
                dynamo=False, dynamic_axes=axes, do_constant_folding=True,
            )


def export_model(model: XCamModel, path: str | Path, *, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                 with_cams: bool = True) -> ExportArtifact:
    """Export ``model`` to ``path`` (atomically). ``exporter``: ``dynamo`` (torch.export based, the
    default of torch ≥ 2.9), ``legacy`` (TorchScript based) or ``auto`` (dynamo, legacy on failure)."""
    import torch

    from xcam.export.fast_cam import AllClassCamGraph

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_cams = with_cams and (model.gap_linear_head() is not None or model.class_map_head() is not None)
    graph = AllClassCamGraph.build(model.cpu().eval(), with_cams=has_cams)
    example = torch.zeros(2, 1, model.input_size, model.input_size)
    order = {"auto": ["dynamo", "legacy"], "dynamo": ["dynamo"], "legacy": ["legacy"]}.get(exporter)
    if order is None:
        raise ExportError(f"unknown exporter {exporter!r}; valid: auto, dynamo, legacy")
    start, errors = time.perf_counter(), []
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        for name in order:
            try:
                _torch_export(graph, example, tmp, opset, name, has_cams)
                used = name
                break
            except Exception as exc:  # noqa: BLE001 - try the next exporter, report all
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                errors.append(f"{name}: {type(exc).__name__}: {first}")
        else:
            raise ExportError(f"cannot export {model.name} to ONNX ({'; '.join(errors)})")
        metadata = build_metadata(model, with_cams=has_cams, opset=opset, exporter=used)
        write_metadata(tmp, metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for extra in path.parent.glob(tmp.name + "*"):  # external-data leftovers, if any
            extra.unlink(missing_ok=True)
    return ExportArtifact(path, {k[len(META_PREFIX):]: v for k, v in metadata.items()}, True,
                          time.perf_counter() - start, used, model)


def strip_cams(path: str | Path, out_path: str | Path | None = None) -> Path:
    """A copy of an export without the ``cams`` output (and the nodes only it needs): the plain
    classifier, made by graph extraction, no re-export. Cached beside the source file."""
    import onnx
    from onnx.utils import Extractor

    path = Path(path)
    out = Path(out_path) if out_path else path.with_name(path.stem + "-nocam.onnx")
    if out.is_file() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    proto = onnx.load(str(path))
    keep = [o.name for o in proto.graph.output if o.name != "cams"]
    sub = Extractor(proto).extract_model([INPUT_NAME], keep)
    meta = read_metadata(path)
    meta.update(outputs=json.dumps(keep), cam_target_layer="", cam_method="")
    del sub.metadata_props[:]
    for key, value in meta.items():
        entry = sub.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=out.parent)
    os.close(fd)
    onnx.save(sub, tmp)
    os.replace(tmp, out)
    return out


def _weights_digest(variant: WeightVariant, store: WeightsStore) -> str:
    path = store.resolve(variant)
    return store.verify(path, variant)


def ensure_export(registration: ClassifierRegistration, variant_name: str | None = None, *,
                  store: WeightsStore | None = None, random_init: bool = False,
                  options: Mapping[str, Any] | None = None, opset: int = DEFAULT_OPSET,
                  exporter: str = "auto", with_cams: bool = True) -> ExportArtifact:
    """The cached FP32 export for these weights, made on first use.

    Random-weight models (tests, benchmarks) are exported to a per-process temporary folder,
    never into the cache (their weights differ at every build).
    """
    from xcam.core.weights import WeightsStore

    store = store or WeightsStore.from_env()
    variant = registration.variant(variant_name)
    if random_init:
        model = registration.build(variant.name, store=store, options=options, random_init=True)
        path = _temp_dir() / f"{registration.name}-random-{os.getpid()}-{id(model):x}.onnx"
        return export_model(model, path, opset=opset, exporter=exporter, with_cams=with_cams)
    digest = _weights_digest(variant, store)
    stem = cache_stem(registration.name, variant, digest, opset, options) + ("" if with_cams else "-nocam")
    path = onnx_cache_dir() / f"{stem}.onnx"
    if path.is_file():
        return ExportArtifact(path, read_metadata(path), created=False)
    model = registration.build(variant.name, store=store, options=options)
    return export_model(model, path, opset=opset, exporter=exporter, with_cams=with_cams)


_TEMP: list[tempfile.TemporaryDirectory] = []


def _temp_dir() -> Path:
    if not _TEMP:
        _TEMP.append(tempfile.TemporaryDirectory(prefix="xcam-onnx-"))  # removed at interpreter exit
    return Path(_TEMP[0].name)
