"""The xcam web UI (a Streamlit script, started by ``xcam ui``).

Sidebar: the image (an example phantom of ``xcam demo``, an upload, or one from ``--images-dir``),
the models and their weights (from the plugin registry, so third-party classifiers appear on their
own; the demo's checkpoint too), the settings profile and, over it, the CAM method, mask extractor,
box strategy and consolidation method, and a ground-truth box (an example brings its own).
Main area: each model's sorted predictions with the threshold, P0 overlays side by side with an
opacity slider, each model's mask and box, the consolidated box, metrics against the ground truth,
and downloads of what is shown. Everything is computed by :mod:`xcam.chain` (through
:mod:`xcam.ui.engine`), so the boxes are those ``xcam analyze`` gives for the same settings; maps
are shown at the image's full resolution. Every problem is shown as one ``st.error`` line; the
JSON of the page is kept in ``st.session_state["xcam_document"]`` and the names and shapes of the
images shown in ``st.session_state["xcam_images"]`` (tests read them).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import streamlit as st

from xcam.core.errors import ImageLoadError, WeightsMissingError, XcamError
from xcam.ui import engine, state
from xcam.ui.choices import NO_WEIGHTS_HINT, default_index, default_models, needs_demo_hint
from xcam.ui.charts import prediction_chart, prediction_rows
from xcam.ui.groundtruth import GroundTruth, label_key, parse_file, parse_text, pick
from xcam.ui.settings import UiSettings
from xcam.ui.uploads import UPLOAD_TYPES, folder_images, load_upload

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xcam.core.demo_assets import DemoAssets
    from xcam.core.imageio import XrayImage
    from xcam.chain.engine import Chain
    from xcam.chain.results import ImageResult
    from xcam.chain.settings import ChainSettings
    from xcam.core.manager import XcamPluginManager

LOG = logging.getLogger("xcam.ui")
UPLOAD = "Upload a file"
FOLDER = "Pick from folder"
EXAMPLES = "Examples (demo phantoms)"
EXAMPLE_LIMIT = 200  # held-out phantoms with boxes offered in the gallery (the demo makes 60 or 120)
MIN_COLUMNS = 3  # one model's images take a third of the width, not all of it


def rgb(bgr: "np.ndarray") -> "np.ndarray":
    """OpenCV's BGR → the RGB that ``st.image`` shows."""
    return bgr[:, :, ::-1] if bgr.ndim == 3 else bgr


def show(image: "np.ndarray", caption: str) -> None:
    st.image(rgb(image), caption=caption, width="stretch")


# -- sidebar -------------------------------------------------------------------------------
class Picked(NamedTuple):
    """The chosen X-ray, its name, a digest identifying it, and (an example's) ground-truth boxes."""

    image: "XrayImage"
    name: str
    digest: str
    truth: tuple[GroundTruth, ...] = ()


def find_demo() -> "DemoAssets | None":
    """The newest complete ``xcam demo`` cache under ``$XCAM_HOME`` (:mod:`xcam.core.demo_assets`)."""
    from xcam.core.demo_assets import find_demo as find

    try:
        return find()
    except OSError as exc:  # an unreadable $XCAM_HOME: the page works without the demo
        LOG.warning("xcam ui: cannot look for the demo model: %s", exc)
        return None


def demo_examples(demo: "DemoAssets | None") -> tuple[list[Any], dict[str, list[GroundTruth]]]:
    """The demo's held-out phantoms with boxes and ``{file name: boxes}``; none without a demo."""
    if demo is None:
        return [], {}
    try:
        table = demo.box_table()
        examples = demo.examples(EXAMPLE_LIMIT)
    except (XcamError, OSError) as exc:
        st.error(f"Demo examples: {exc}")
        return [], {}
    return examples, {p.name: [GroundTruth(label, box) for label, box in table[p.name]] for p in examples}


def load_file(path: Any) -> tuple["XrayImage", str] | None:
    """A picked file (example or folder), decoded once per session; ``None`` on error (shown)."""
    stat = path.stat()
    digest = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        from xcam.core.imageio import load_image

        return state.memo(("image", digest), lambda: load_image(path)), digest
    except XcamError as exc:
        st.error(f"Cannot read {path.name}: {exc}")
        return None


def choose_image(s: UiSettings, demo: "DemoAssets | None" = None) -> Picked | None:
    """The chosen X-ray; ``None`` when none (errors shown). With a demo, its held-out phantoms are
    the first (default) source, each with its ground-truth boxes from the demo's box list."""
    st.header("Image")
    images = folder_images(s.images_dir)
    examples, truth = demo_examples(demo)
    sources = ([EXAMPLES] if examples else []) + [UPLOAD] + ([FOLDER] if images else [])
    source = st.radio("Source", sources, key="source", horizontal=True) if len(sources) > 1 else UPLOAD
    if s.images_dir is not None and not images:
        st.caption(f"No images found in {s.images_dir}")
    if source == EXAMPLES:
        def describe(p: Any) -> str:
            return f"{p.name} · {', '.join(dict.fromkeys(g.label for g in truth[p.name]))}"

        path = st.selectbox("Example", examples, key="example", format_func=describe,
                            help="Held-out phantoms of `xcam demo` (never seen in training), with their boxes.")
        boxes = tuple(truth[path.name])
        st.caption("Ground truth from the demo's box list: " + "; ".join(g.text for g in boxes))
        loaded = load_file(path)
        return None if loaded is None else Picked(loaded[0], path.name, loaded[1], boxes)
    if source == FOLDER:
        path = st.selectbox("Image", images, key="folder_image",
                            format_func=lambda p: str(p.relative_to(s.images_dir)))
        loaded = load_file(path)
        return None if loaded is None else Picked(loaded[0], path.name, loaded[1])
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
    return Picked(image, uploaded.name, digest)


def choose_models(pm: "XcamPluginManager", s: UiSettings, demo: "DemoAssets | None" = None
                  ) -> tuple[list[tuple[str, state.VariantChoice]], bool]:
    """The selected classifiers, each with its chosen weights, and whether the page should say
    that there are no weights and no demo model (:data:`~xcam.ui.choices.NO_WEIGHTS_HINT`)."""
    st.header("Models")
    names = sorted(pm.classifiers())
    unknown = [m for m in s.models if m not in names]
    if unknown:
        st.error(f"Unknown model(s) {', '.join(unknown)}; installed: {', '.join(names)}")

    def offered(name: str) -> list[state.VariantChoice]:
        return state.variant_choices(pm.classifier(name), s, pm.config.plugin_options(name).get("weights"), demo)

    default = default_models(names, s.models, pm.config.defaults.get("classifier"),
                             lambda m: any(c.present for c in offered(m)), demo, s.random_weights)
    chosen = st.multiselect("Models", names, default=default, key="models",
                            help="Every installed classifier plugin is listed here.")
    selection, menus = [], []
    for name in chosen:
        menu = offered(name)
        menus.append(menu)
        choices = {c.value: c for c in menu}
        value = st.selectbox(f"{name} weights", list(choices), index=default_index(menu),
                             key=f"weights_{name}", format_func=lambda v, c=choices: c[v].label)
        if choices[value].demo and demo is not None:
            st.caption(f"A small MobileNetV3 that `xcam demo` trained on synthetic phantoms "
                       f"({demo.root.name}): for trying xcam out, not for real X-rays.")
        selection.append((name, choices[value]))
    return selection, needs_demo_hint(menus, demo, s.random_weights)


# The selectors' first entry: keep the profile's plugin (as an option left out on the command line).
# (A comment, not a docstring: Streamlit would show a bare string of the script on the page.)
PROFILE_CHOICE = ""


def method_summary(base: "ChainSettings") -> str:
    """The profile's CAM methods: ``layercam`` or ``gradcam; mobilenetv3: layercam + aug_smooth``."""

    def one(cam: Any) -> str:
        return cam.method + (" + aug_smooth" if cam.aug_smooth else "")

    own = [f"{clf}: {one(cam)}" for clf, cam in sorted(base.per_classifier.items()) if one(cam) != one(base.cam)]
    return "; ".join([one(base.cam), *own])


def choose_options(pm: "XcamPluginManager", s: UiSettings) -> dict[str, Any] | None:
    """Threshold, the settings profile and the plugins over it for CAMs, masks, boxes and
    consolidation (from the registry); ``None`` when the profile is broken (error shown)."""
    from xcam.chain.settings import DEFAULT_PROFILE, available_profiles, profile_settings

    st.header("Explanation")
    threshold = st.slider("Positive threshold", 0.0, 1.0, 0.5, 0.05, key="threshold")
    profiles = sorted(available_profiles(pm.config))
    default = s.profile or pm.config.defaults.get("profile") or DEFAULT_PROFILE
    profile = st.selectbox("Settings profile", profiles, index=profiles.index(default) if default in profiles else 0,
                           key="profile", help="Named settings (`xcam config`); the plugins below override them.")
    try:
        base = profile_settings(pm.config, profile)
    except XcamError as exc:
        st.error(f"Profile {profile}: {exc}")
        return None
    if base.description:
        st.caption(base.description)

    def select(label: str, table: dict[str, Any], key: str, current: str) -> str | None:
        names = [PROFILE_CHOICE, *sorted(table)]

        def describe(n: str) -> str:
            if n == PROFILE_CHOICE:
                return f"as the profile: {current}"
            return f"{n}: {table[n].description}" if table[n].description else n

        return st.selectbox(label, names, index=0, key=key, format_func=describe) or None

    options = engine.Options(
        profile=profile,
        method=select("CAM method", pm.cam_methods(), "cam_method", method_summary(base)),
        mask=select("Mask extractor", pm.mask_extractors(), "mask_extractor", base.mask),
        strategy=select("Box strategy", pm.bbox_strategies(), "bbox_strategy", base.strategy),
        ensembler=select("Consolidation (ensembler)", pm.ensemblers(), "ensembler", base.ensembler),
    )
    try:
        settings = options.settings(pm)
    except XcamError as exc:
        st.error(f"Settings: {exc}")
        return None
    return {"threshold": threshold, "options": options, "settings": settings}


def ground_truth_inputs() -> tuple[str, Any]:
    st.header("Ground truth")
    text = st.text_input("Box as Label,x,y,w,h (original pixels)", key="gt_text",
                         placeholder="Cardiomegaly,277.5,459,540,301")
    file = st.file_uploader("…or load a box file (Label,x,y,w,h lines or NIH BBox_List CSV)",
                            type=["csv", "txt"], key="gt_file")
    return text, file


# -- main area -----------------------------------------------------------------------------
def load_models(s: UiSettings, selection: list[tuple[str, state.VariantChoice]], device: str,
                quiet_missing: bool = False) -> list[engine.ModelSpec]:
    """Build (once per process) each selected model; a missing weight file is one error naming it
    (none with ``quiet_missing``: the page already says how to get weights)."""
    loaded = []
    for name, choice in selection:
        what = "random weights" if s.random_weights else choice.value
        with st.spinner(f"Loading {name} ({what}) …"):
            try:
                state.load_model(state.config_key(s), name, choice.value,
                                 str(s.weights_dir) if s.weights_dir else None, s.random_weights, device)
            except WeightsMissingError as exc:
                if not quiet_missing:
                    st.error(f"{name}: {exc}")
                continue
            except XcamError as exc:
                st.error(f"{name}: {exc}")
                continue
        loaded.append(engine.ModelSpec(name, choice.value))
    return loaded


def show_predictions(analysis: "ImageResult", threshold: float, weight_names: dict[str, str] | None = None) -> None:
    st.subheader("Predictions")
    names = weight_names or {}
    charts = [(f"**{r.model}** · `{names.get(r.weights, r.weights)}` · {r.backend}", r.predictions)
              for r in analysis.results]
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
                         labels: set[str], example: tuple[GroundTruth, ...] = ()) -> list[GroundTruth]:
    """The ground truth to score against: typed text, else a loaded file, else the example's own
    boxes (the demo's box list). From a file or an example: every box of the class
    :func:`~xcam.ui.groundtruth.pick` finds (as the chain takes a box list's rows). Errors raise."""
    from xcam.core.errors import UsageError
    from xcam.core.metrics import check_box_in_image

    if text and text.strip():
        found = [parse_text(text, image.width, image.height)]
    elif file is not None or example:
        known = {label_key(label) for label in labels}  # an example's boxes of other classes are not an error
        boxes = parse_file(file.getvalue(), name) if file is not None else \
            [g for g in example if label_key(g.label) in known]
        gt = pick(boxes, pathology)
        if gt is None:
            if file is not None:
                st.info(f"The loaded box file has no {pathology} box for {name}.")
            return []
        found = [g for g in boxes if label_key(g.label) == label_key(gt.label)]
        for g in found:
            check_box_in_image(g.box, image.width, image.height, what=f"ground truth {g.label}")
    else:
        return []
    if label_key(found[0].label) not in {label_key(label) for label in labels}:
        raise UsageError(f"unknown class {found[0].label!r} in the ground truth; the selected models predict: "
                         f"{', '.join(sorted(labels))}")
    return found


def show_explanations(grey: "np.ndarray", analysis: "ImageResult", alpha: float, files: dict[str, "np.ndarray"]) -> None:
    """P0 overlays side by side, each model's mask and boxes below its overlay (full resolution)."""
    from xcam.chain.outputs import finding_names, finding_prefix

    shown = [(r, r.findings[0]) for r in analysis.results if r.findings]
    for column, (r, f) in zip(st.columns(max(len(shown), MIN_COLUMNS)), shown):
        images = engine.finding_images(grey, analysis, r, f, alpha)
        files.update(images)
        names = finding_names(finding_prefix(r.model, f.pathology))
        boxes = f"{len(f.boxes)} boxes" if len(f.boxes) > 1 else "1 box" if f.boxes else \
            "no box (flat CAM)" if f.peak is None else "no box"
        with column:
            st.markdown(f"**{r.model}** · p = {f.probability:.3f}")
            show(images[names["P0"]], f"P0 overlay · {f.pathology} · {r.method}")
            show(images[names["P3"]], f"mask · {r.mask_extractor} · {100 * float(f.mask.mean()):.1f}% of the image")
            show(images[names["boxes"]], f"box · {r.strategy} · {boxes}")


def show_consolidated(grey: "np.ndarray", analysis: "ImageResult", alpha: float, files: dict[str, "np.ndarray"]) -> None:
    from xcam.chain.outputs import consolidated_names, consolidated_prefix

    c = analysis.consolidated[0]
    images = engine.consolidated_images(grey, analysis, c, alpha)
    files.update(images)
    names = consolidated_names(consolidated_prefix(c.pathology))
    st.subheader(f"Consolidated box ({c.ensembler} of {', '.join(c.models)})")
    columns = st.columns(MIN_COLUMNS)
    with columns[0]:
        show(images[names["boxes"]], "each model's box and the consolidated box")
    with columns[1]:
        show(images[names["P0"]], f"consolidated P0 overlay · {c.ensembler}")
    with columns[2]:
        show(images[names["P3"]], f"consolidated mask · {100 * float(c.mask.mean()):.1f}% of the image")


def show_metrics(analysis: "ImageResult") -> None:
    import pandas as pd

    rows = {r.model: f.metrics for r, f in analysis.findings if f.metrics}
    rows.update({"consolidated": c.metrics for c in analysis.consolidated if c.metrics})
    if rows:
        st.subheader("Metrics against the ground truth")
        st.dataframe(pd.DataFrame(rows).T.round(4), width="stretch")


def run_locked(chain: "Chain", image: "XrayImage") -> "ImageResult":
    with state.model_lock():
        return engine.analyze(chain, image)


def preset_pathology(picked: Picked, ordered: list[str]) -> None:
    """A newly picked example starts the pathology selector at the class of its (first) box."""
    if not picked.truth:
        st.session_state.pop("_xcam_example", None)
        return
    if st.session_state.get("_xcam_example") == picked.digest:
        return  # the user's own choice stays while the example does
    st.session_state["_xcam_example"] = picked.digest
    wanted = label_key(picked.truth[0].label)
    match = next((label for label in ordered if label_key(label) == wanted), None)
    if match is not None:
        st.session_state["pathology"] = match


def analyse(pm: "XcamPluginManager", s: UiSettings, picked: Picked, selection: list[tuple[str, state.VariantChoice]],
            choices: dict[str, Any], gt_input: tuple[str, Any], no_weights: bool = False) -> None:
    """Everything in the main area once an image is chosen."""
    image, name, digest, truth = picked
    try:
        device = state.device(s.device)
    except XcamError as exc:
        st.error(str(exc))
        return
    specs = load_models(s, selection, device, quiet_missing=no_weights)
    if not specs:
        if not no_weights:  # else the page already says how to get weights
            st.info("Select at least one model whose weights are available.")
        return
    settings: ChainSettings = choices["settings"]
    threshold = choices["threshold"]
    where = dict(store=state.store(str(s.weights_dir) if s.weights_dir else None), device=device,
                 random_init=s.random_weights)
    key = (digest, tuple(specs), s.random_weights, str(s.weights_dir), device)
    extra = dict(threshold=threshold, random_weights=s.random_weights, profile=settings.profile)
    try:
        with st.spinner("Classifying …"):  # probabilities only: the settings matter through the ensembler
            first = state.memo(("predict", *key, settings.ensembler, settings.model_weights),
                               lambda: run_locked(engine.build(pm, specs, settings, None, **where), image))
    except XcamError as exc:
        st.error(f"Classification failed: {exc}")
        return
    page = engine.document(first, name, settings, **extra)
    st.session_state["xcam_document"] = page
    show_predictions(first, threshold, {c.value: "demo model" for _, c in selection if c.demo})

    predictions = [r.predictions for r in first.results]
    labels = {label for p in predictions for label in p}
    ordered = sorted(labels, key=lambda lab: (-max(p.get(lab, 0.0) for p in predictions), lab))
    st.subheader("Explanations")
    left, right = st.columns(2)
    preset_pathology(picked, ordered)
    pathology = left.selectbox("Pathology", ordered, key="pathology",
                               help="Sorted by the highest probability any selected model gives it.")
    alpha = right.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="alpha")
    try:
        gts = resolve_ground_truth(*gt_input, image, name, pathology, labels, truth)
    except XcamError as exc:
        st.error(f"Ground truth: {exc}")
        gts = []
    if gts and label_key(gts[0].label) != label_key(pathology):
        label = gts[0].label
        st.warning(f"The ground truth is a {label} box; choose {label} as the pathology to score against it.")
        gts = []

    try:
        with st.spinner(f"{method_summary(settings)}: {pathology} …"):
            analysis = state.memo(("explain", *key, engine.settings_key(settings), pathology),
                                  lambda: run_locked(engine.build(pm, specs, settings, pathology, **where), image))
    except XcamError as exc:
        st.error(f"Explaining {pathology} failed: {exc}")
        return
    for model in engine.missing_class(analysis, pathology):
        known = next(r.predictions for r in analysis.results if r.model == model)
        st.error(f"{model} does not predict {pathology!r}; its classes: {', '.join(known)}")
    analysis = engine.with_ground_truth(analysis, [(g.label, g.box) for g in gts])
    page = engine.document(analysis, name, settings, **extra, pathology=pathology, opacity=alpha)
    st.session_state["xcam_document"] = page
    if not analysis.findings:
        return
    grey = image.to_uint8()
    files: dict[str, np.ndarray] = {"_input_image_.png": grey}
    show_explanations(grey, analysis, alpha, files)
    if analysis.consolidated:
        show_consolidated(grey, analysis, alpha, files)
    else:
        st.caption("Select two or more models that predict this pathology to see a consolidated box.")
    show_metrics(analysis)
    st.session_state["xcam_images"] = {n: tuple(a.shape) for n, a in files.items()}  # what the ZIP holds
    dicom = None
    if image.source_format == "dicom":  # SEG + SR + CAM overlays (xcam.interop.dicom), made once per view
        from xcam.interop.dicom import dicom_zip, weights_digests

        def make_dicom() -> bytes | str:
            try:
                chain = engine.build(pm, specs, settings, pathology, **where)
                return dicom_zip(analysis, digests=weights_digests(chain.models))
            except XcamError as exc:
                return str(exc)

        dicom = state.memo(("dicom", *key, engine.settings_key(settings), pathology), make_dicom)
    show_downloads(page, files, name, dicom)


def show_downloads(document: dict[str, Any], files: dict[str, "np.ndarray"], name: str,
                   dicom: bytes | str | None = None) -> None:
    from xcam.ui.export import safe_part, to_json, zip_bytes

    stem = safe_part(name.rsplit(".", 1)[0])
    st.subheader("Download")
    left, right, third = st.columns(MIN_COLUMNS)
    left.download_button("JSON of this page", to_json(document), file_name=f"{stem}_xcam.json",
                         mime="application/json", key="download_json")
    right.download_button("Images shown (ZIP)", zip_bytes(files, document), file_name=f"{stem}_xcam.zip",
                          mime="application/zip", key="download_zip")
    if isinstance(dicom, bytes):  # a DICOM input: its SEG, SR and CAM overlays (docs/dicom.md)
        third.download_button("DICOM SEG + SR (ZIP)", dicom, file_name=f"{stem}_xcam_dicom.zip",
                              mime="application/zip", key="download_dicom")
    elif isinstance(dicom, str):
        third.warning(f"No DICOM output: {dicom}")


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
    demo = find_demo()
    with st.sidebar:
        picked = choose_image(s, demo)
        if picked is not None:
            st.image(picked.image.to_uint8(), caption=f"{picked.name} · {picked.image.width}×{picked.image.height}",
                     width="stretch")
        selection, no_weights = choose_models(pm, s, demo)
        choices = choose_options(pm, s)
        gt_input = ground_truth_inputs()
    if no_weights:
        st.info(NO_WEIGHTS_HINT)
    if picked is None:
        if not no_weights:
            st.info("Upload a chest X-ray or pick one from the folder in the sidebar.")
        return
    if choices is None:
        return
    analyse(pm, s, picked, selection, choices, gt_input, no_weights)


def run() -> None:
    """``main`` with a last guard: an unexpected error is one line on the page, details in the log."""
    try:
        main()
    except Exception as exc:  # noqa: BLE001 - Streamlit's own control flow uses BaseException
        LOG.exception("xcam ui: unexpected error")
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        st.error(f"Unexpected error: {type(exc).__name__}: {message} (details in the server log)")


run()
