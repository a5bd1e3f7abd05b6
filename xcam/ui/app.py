"""The xcam web UI (a Streamlit script, started by ``xcam ui``).

Sidebar: the image (upload, or pick from ``--images-dir``), the models and their weights (from the
plugin registry, so third-party classifiers appear on their own), the CAM method, mask extractor,
box strategy and consolidation method, and a ground-truth box. Main area: each model's sorted
predictions with the threshold, P0 overlays side by side with an opacity slider, each model's mask
and box, the consolidated box, metrics against the ground truth, and downloads of what is shown.
Every problem is shown as one ``st.error`` line; the JSON of the page is kept in
``st.session_state["xcam_document"]`` (tests read it).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

import streamlit as st

from xcam.core.errors import ImageLoadError, XcamError
from xcam.ui import engine, state
from xcam.ui.charts import prediction_chart, prediction_rows
from xcam.ui.groundtruth import GroundTruth, label_key, parse_file, parse_text, pick
from xcam.ui.settings import UiSettings
from xcam.ui.uploads import UPLOAD_TYPES, folder_images, load_upload

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.core.imageio import XrayImage
    from xcam.core.manager import XcamPluginManager
    from xcam.core.pipeline import ImageAnalysis, Pipeline

LOG = logging.getLogger("xcam.ui")
UPLOAD = "Upload a file"
FOLDER = "Pick from folder"
MIN_COLUMNS = 3  # one model's images take a third of the width, not all of it


def rgb(bgr: "np.ndarray") -> "np.ndarray":
    """OpenCV's BGR → the RGB that ``st.image`` shows."""
    return bgr[:, :, ::-1] if bgr.ndim == 3 else bgr


def show(image: "np.ndarray", caption: str) -> None:
    st.image(rgb(image), caption=caption, width="stretch")


# -- sidebar -------------------------------------------------------------------------------
def choose_image(s: UiSettings) -> tuple["XrayImage", str, str] | None:
    """The chosen X-ray, its name and a digest identifying it; ``None`` when none (errors shown)."""
    st.header("Image")
    images = folder_images(s.images_dir)
    sources = [UPLOAD] + ([FOLDER] if images else [])
    source = st.radio("Source", sources, key="source", horizontal=True) if len(sources) > 1 else UPLOAD
    if s.images_dir is not None and not images:
        st.caption(f"No images found in {s.images_dir}")
    if source == FOLDER:
        path = st.selectbox("Image", images, key="folder_image",
                            format_func=lambda p: str(p.relative_to(s.images_dir)))
        stat = path.stat()
        digest = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        try:
            from xcam.core.imageio import load_image

            return state.memo(("image", digest), lambda: load_image(path)), path.name, digest
        except XcamError as exc:
            st.error(f"Cannot read {path.name}: {exc}")
            return None
    limit = {"max_upload_size": max(1, math.ceil(s.max_upload_mb))}
    if "max_upload_size" not in inspect.signature(st.file_uploader).parameters:
        limit = {}
    uploaded = st.file_uploader("Chest X-ray (PNG, JPEG or DICOM)", type=list(UPLOAD_TYPES), key="upload", **limit)
    st.caption(f"Up to {s.max_upload_mb:g} MB. Uploads stay in a private temporary folder for this session.")
    if uploaded is None:
        return None
    data = uploaded.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = state.memo(("upload", digest, uploaded.name),
                           lambda: load_upload(state.session_folder(), uploaded.name, data, s.max_upload_bytes))
    except ImageLoadError as exc:
        st.error(f"Cannot read {uploaded.name}: {exc.problem}")
        return None
    except XcamError as exc:
        st.error(f"Upload refused: {exc}")
        return None
    return image, uploaded.name, digest


def choose_models(pm: "XcamPluginManager", s: UiSettings) -> list[tuple[str, state.VariantChoice]]:
    """The selected classifiers, each with its chosen weights."""
    st.header("Models")
    names = sorted(pm.classifiers())
    unknown = [m for m in s.models if m not in names]
    if unknown:
        st.error(f"Unknown model(s) {', '.join(unknown)}; installed: {', '.join(names)}")
    configured = pm.config.defaults.get("classifier")
    default = [m for m in s.models if m in names] or ([configured] if configured in names else names[:1])
    chosen = st.multiselect("Models", names, default=default, key="models",
                            help="Every installed classifier plugin is listed here.")
    selection = []
    for name in chosen:
        registration = pm.classifier(name)
        choices = {c.value: c for c in state.variant_choices(
            registration, s, pm.config.plugin_options(name).get("weights"))}
        present = [i for i, c in enumerate(choices.values()) if c.present]
        value = st.selectbox(f"{name} weights", list(choices), index=present[0] if present else 0,
                             key=f"weights_{name}", format_func=lambda v, c=choices: c[v].label)
        selection.append((name, choices[value]))
    return selection


def choose_options(pm: "XcamPluginManager") -> dict[str, Any]:
    """Threshold and the plugins for CAMs, masks, boxes and consolidation (from the registry)."""
    st.header("Explanation")

    def select(label: str, table: dict[str, Any], kind: str) -> str:
        names = sorted(table)
        default = pm.config.defaults.get(kind)
        index = names.index(default) if default in names else 0
        return st.selectbox(label, names, index=index, key=kind,
                            format_func=lambda n: f"{n}: {table[n].description}" if table[n].description else n)

    return {
        "threshold": st.slider("Positive threshold", 0.0, 1.0, 0.5, 0.05, key="threshold"),
        "options": engine.Options(
            method=select("CAM method", pm.cam_methods(), "cam_method"),
            mask=select("Mask extractor", pm.mask_extractors(), "mask_extractor"),
            strategy=select("Box strategy", pm.bbox_strategies(), "bbox_strategy"),
            ensembler=select("Consolidation (ensembler)", pm.ensemblers(), "ensembler"),
        ),
    }


def ground_truth_inputs() -> tuple[str, Any]:
    st.header("Ground truth")
    text = st.text_input("Box as Label,x,y,w,h (original pixels)", key="gt_text",
                         placeholder="Cardiomegaly,277.5,459,540,301")
    file = st.file_uploader("…or load a box file (Label,x,y,w,h lines or NIH BBox_List CSV)",
                            type=["csv", "txt"], key="gt_file")
    return text, file


# -- main area -----------------------------------------------------------------------------
def load_models(s: UiSettings, selection: list[tuple[str, state.VariantChoice]], device: str) -> list[engine.ModelSpec]:
    """Build (once per process) each selected model; a missing weight file is one error naming it."""
    loaded = []
    for name, choice in selection:
        what = "random weights" if s.random_weights else choice.value
        with st.spinner(f"Loading {name} ({what}) …"):
            try:
                state.classifier(state.config_key(s), name, choice.value,
                                 str(s.weights_dir) if s.weights_dir else None, s.random_weights, device)
            except XcamError as exc:
                st.error(f"{name}: {exc}")
                continue
        loaded.append(engine.ModelSpec(name, choice.value))
    return loaded


def show_predictions(analysis: "ImageAnalysis", threshold: float) -> None:
    st.subheader("Predictions")
    charts = [(f"**{r.model}** · `{r.weights}` · {r.backend}", r.predictions) for r in analysis.results]
    if analysis.combined_predictions:
        charts.append((f"**combined** · ensembler `{analysis.ensembler}`", analysis.combined_predictions))
    for column, (title, predictions) in zip(st.columns(max(len(charts), 2)), charts):
        with column:
            st.markdown(title)
            st.altair_chart(prediction_chart(predictions, threshold), width="stretch")
            rows = [r for r in prediction_rows(predictions, threshold) if r["finding"] == "positive"]
            found = ", ".join(f"{r['label']} {r['probability']:.2f}" for r in rows) or "none"
            st.markdown(f"Positive (≥ {threshold:g}): {found}")


def resolve_ground_truth(text: str, file: Any, image: "XrayImage", name: str, pathology: str,
                         labels: set[str]) -> GroundTruth | None:
    """The ground truth to score against (typed text wins over a loaded file); errors raise."""
    from xcam.core.errors import UsageError
    from xcam.core.metrics import check_box_in_image

    if text and text.strip():
        gt = parse_text(text, image.width, image.height)
    elif file is not None:
        gt = pick(parse_file(file.getvalue(), name), pathology)
        if gt is None:
            st.info(f"The loaded box file has no {pathology} box for {name}.")
            return None
        check_box_in_image(gt.box, image.width, image.height, what=f"ground truth {gt.label}")
    else:
        return None
    if label_key(gt.label) not in {label_key(label) for label in labels}:
        raise UsageError(f"unknown class {gt.label!r} in the ground truth; the selected models predict: "
                         f"{', '.join(sorted(labels))}")
    return gt


def show_explanations(grey: "np.ndarray", analysis: "ImageAnalysis", gt: GroundTruth | None, alpha: float,
                      files: dict[str, "np.ndarray"]) -> None:
    """P0 overlays side by side, each model's mask and box below its overlay."""
    from xcam.core import render
    from xcam.core.pipeline import finding_prefix

    shown = [(r, r.findings[0]) for r in analysis.results if r.findings]
    for column, (r, f) in zip(st.columns(max(len(shown), MIN_COLUMNS)), shown):
        prefix = finding_prefix(r.model, f.pathology)
        overlay = render.overlay(grey, f.cam, alpha)
        boxes = [(f.box, render.GREEN, "predicted")] + ([(gt.box, render.RED, "ground truth")] if gt else [])
        drawn = render.draw_boxes(grey, boxes)
        files.update({f"{prefix}_P0.png": overlay, f"{prefix}_P3.png": render.mask_png(f.mask),
                      f"{prefix}_PBBox.png": drawn})
        with column:
            st.markdown(f"**{r.model}** · p = {f.probability:.3f}")
            show(overlay, f"P0 overlay · {f.pathology} · {r.method}")
            show(render.mask_png(f.mask), f"mask · {r.mask_extractor} · {int(f.mask.sum())} px")
            show(drawn, f"box · {r.strategy}: predicted (green)" + (", ground truth (red)" if gt else ""))


def show_consolidated(grey: "np.ndarray", analysis: "ImageAnalysis", gt: GroundTruth | None,
                      files: dict[str, "np.ndarray"]) -> None:
    from xcam.core import render
    from xcam.core.pipeline import safe_name

    c = analysis.consolidated[0]
    boxes = [(f.box, render.PALETTE[i % len(render.PALETTE)], r.model)
             for i, (r, f) in enumerate(analysis.findings)]
    boxes.append((c.box, render.GREEN, "consolidated"))
    if gt:
        boxes.append((gt.box, render.RED, "ground truth"))
    drawn = render.draw_boxes(grey, boxes)
    prefix = f"{safe_name(c.pathology)}_consolidated"
    files.update({f"{prefix}.png": render.mask_png(c.mask), f"{prefix}_bbox.png": drawn})
    st.subheader(f"Consolidated box ({c.ensembler} of {', '.join(c.models)})")
    columns = st.columns(MIN_COLUMNS)
    with columns[0]:
        show(drawn, "each model's box, consolidated (green)" + (", ground truth (red)" if gt else ""))
    with columns[1]:
        show(render.mask_png(c.mask), f"consolidated mask · {c.ensembler}")


def show_metrics(analysis: "ImageAnalysis") -> None:
    import pandas as pd

    rows = {r.model: f.metrics for r, f in analysis.findings if f.metrics}
    rows.update({"consolidated": c.metrics for c in analysis.consolidated if c.metrics})
    if rows:
        st.subheader("Metrics against the ground truth")
        st.dataframe(pd.DataFrame(rows).T.round(4), width="stretch")


def run_locked(pipeline: "Pipeline", image: "XrayImage") -> "ImageAnalysis":
    with state.model_lock():
        return pipeline.analyze(image)


def analyse(pm: "XcamPluginManager", s: UiSettings, picked: tuple["XrayImage", str, str],
            selection: list[tuple[str, state.VariantChoice]], choices: dict[str, Any], gt_input: tuple[str, Any]) -> None:
    """Everything in the main area once an image is chosen."""
    image, name, digest = picked
    try:
        device = state.device(s.device)
    except XcamError as exc:
        st.error(str(exc))
        return
    specs = load_models(s, selection, device)
    if not specs:
        st.info("Select at least one model whose weights are available.")
        return
    options: engine.Options = choices["options"]
    threshold = choices["threshold"]
    where = dict(store=state.store(str(s.weights_dir) if s.weights_dir else None), device=device,
                 random_init=s.random_weights)
    key = (digest, tuple(specs), s.random_weights, str(s.weights_dir), device)
    with st.spinner("Classifying …"):
        first = state.memo(("predict", *key, options.ensembler),
                           lambda: run_locked(engine.pipeline(pm, specs, options, None, **where), image))
    page = engine.document(first, name, threshold=threshold, random_weights=s.random_weights)
    st.session_state["xcam_document"] = page
    show_predictions(first, threshold)

    predictions = [r.predictions for r in first.results]
    labels = {label for p in predictions for label in p}
    ordered = sorted(labels, key=lambda lab: (-max(p.get(lab, 0.0) for p in predictions), lab))
    st.subheader("Explanations")
    left, right = st.columns(2)
    pathology = left.selectbox("Pathology", ordered, key="pathology",
                               help="Sorted by the highest probability any selected model gives it.")
    alpha = right.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="alpha")
    try:
        gt = resolve_ground_truth(*gt_input, image, name, pathology, labels)
    except XcamError as exc:
        st.error(f"Ground truth: {exc}")
        gt = None
    if gt is not None and label_key(gt.label) != label_key(pathology):
        st.warning(f"The ground truth is a {gt.label} box; choose {gt.label} as the pathology to score against it.")
        gt = None

    with st.spinner(f"{options.method}: {pathology} …"):
        analysis = state.memo(("explain", *key, options, pathology),
                              lambda: run_locked(engine.pipeline(pm, specs, options, pathology, **where), image))
    for model in engine.missing_class(analysis, pathology):
        known = next(r.predictions for r in analysis.results if r.model == model)
        st.error(f"{model} does not predict {pathology!r}; its classes: {', '.join(known)}")
    analysis = engine.with_ground_truth(analysis, (gt.label, gt.box) if gt else None)
    page = engine.document(analysis, name, threshold=threshold, random_weights=s.random_weights,
                           pathology=pathology, opacity=alpha)
    st.session_state["xcam_document"] = page
    if not analysis.findings:
        return
    grey = image.to_uint8()
    files: dict[str, np.ndarray] = {"_input_image_.png": grey}
    show_explanations(grey, analysis, gt, alpha, files)
    if analysis.consolidated:
        show_consolidated(grey, analysis, gt, files)
    else:
        st.caption("Select two or more models that predict this pathology to see a consolidated box.")
    show_metrics(analysis)
    show_downloads(page, files, name)


def show_downloads(document: dict[str, Any], files: dict[str, "np.ndarray"], name: str) -> None:
    from xcam.ui.export import safe_part, to_json, zip_bytes

    stem = safe_part(name.rsplit(".", 1)[0])
    st.subheader("Download")
    left, right, _ = st.columns(MIN_COLUMNS)
    left.download_button("JSON of this page", to_json(document), file_name=f"{stem}_xcam.json",
                         mime="application/json", key="download_json")
    right.download_button("Images shown (ZIP)", zip_bytes(files, document), file_name=f"{stem}_xcam.zip",
                          mime="application/zip", key="download_zip")


def main() -> None:
    st.set_page_config(page_title="xcam", layout="wide")
    st.title("xcam · chest X-ray classification and localization")
    s = state.settings()
    try:
        pm = state.plugin_manager(state.config_key(s))
    except XcamError as exc:
        st.error(f"Cannot load the plugins: {exc}")
        return
    if s.random_weights:
        st.warning("Random weights (demo/test mode): predictions and maps are meaningless.")
    with st.sidebar:
        picked = choose_image(s)
        if picked is not None:
            image, name, _ = picked
            st.image(image.to_uint8(), caption=f"{name} · {image.width}×{image.height}", width="stretch")
        selection = choose_models(pm, s)
        choices = choose_options(pm)
        gt_input = ground_truth_inputs()
    if picked is None:
        st.info("Upload a chest X-ray or pick one from the folder in the sidebar.")
        return
    analyse(pm, s, picked, selection, choices, gt_input)


def run() -> None:
    """``main`` with a last guard: an unexpected error is one line on the page, details in the log."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - Streamlit's own control flow uses BaseException
        LOG.exception("xcam ui: unexpected error")
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        st.error(f"Unexpected error: {type(exc).__name__}: {message} (details in the server log)")


run()
