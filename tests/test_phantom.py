"""Synthetic phantoms: NIH file formats, determinism, anatomy of the lesions and their boxes, the CLI."""

from __future__ import annotations

import filecmp
import hashlib
from collections import Counter
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import shared_data_dir

from xcam.core.errors import UsageError
from xcam.datasets.phantom import (
    BBOX_HEADER,
    BOX_LABEL,
    CLASSES,
    DATA_ENTRY_HEADER,
    FIELD_OF_VIEW_MM,
    NO_FINDING,
    PhantomSet,
    generate_phantoms,
    load_boxes,
    load_labels,
    render_phantom,
)
from xcam.datasets.phantom_styled import render_styled, style_montage
from xcam.datasets.phantom_styles import DISTRACTOR_KINDS, RENDERING_NAMES, STYLES

SIZE = 160


def real_nih(name: str) -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real NIH fixtures not available (../shared/data or $XCAM_TEST_DATA)")
    path = root / "nih" / name
    if not path.exists():
        pytest.skip(f"real NIH fixture {path} not available (set XCAM_TEST_DATA)")
    return path


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> PhantomSet:
    return generate_phantoms(tmp_path_factory.mktemp("phantoms"), n=80, size=SIZE, seed=7)


@pytest.fixture(scope="module")
def entries(phantoms: PhantomSet) -> pd.DataFrame:
    return pd.read_csv(phantoms.data_entry_csv)


@pytest.fixture(scope="module")
def boxes(phantoms: PhantomSet) -> pd.DataFrame:
    return pd.read_csv(phantoms.bbox_csv)


def test_files_and_headers(phantoms: PhantomSet) -> None:
    assert phantoms.data_entry_csv.read_text().splitlines()[0] == DATA_ENTRY_HEADER
    assert phantoms.bbox_csv.read_text().splitlines()[0] == BBOX_HEADER
    pngs = sorted(phantoms.images_dir.glob("*.png"))
    assert len(pngs) == phantoms.n_images == 80
    img = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE)


def test_data_entry_parses_like_nih(entries: pd.DataFrame, phantoms: PhantomSet) -> None:
    assert list(entries.columns[:11]) == [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
        "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
    ]
    assert entries["Unnamed: 11"].isna().all()  # NIH's trailing comma
    assert (entries["OriginalImage[Width"] == SIZE).all() and (entries["Height]"] == SIZE).all()
    assert set(entries["View Position"]) == {"PA"} and set(entries["Patient Gender"]) <= {"M", "F"}
    labels = {lab for cell in entries["Finding Labels"] for lab in cell.split("|")}
    assert labels <= set(CLASSES) | {NO_FINDING}
    for cell in entries["Finding Labels"]:
        parts = cell.split("|")
        assert parts == sorted(parts) and (NO_FINDING not in parts or parts == [NO_FINDING])
    for name, follow, patient in entries[["Image Index", "Follow-up #", "Patient ID"]].itertuples(index=False):
        assert name == f"{patient:08d}_{follow:03d}.png"
        assert (phantoms.images_dir / name).exists()


def test_columns_match_the_real_nih_files(entries: pd.DataFrame, boxes: pd.DataFrame) -> None:
    real_entry = pd.read_csv(real_nih("Data_Entry_2017_subset.csv"))
    real_boxes = pd.read_csv(real_nih("BBox_List_2017_subset.csv"))
    assert list(entries.columns[: len(real_entry.columns)]) == list(real_entry.columns)
    for column in real_entry.columns:
        assert entries[column].dtype.kind == real_entry[column].dtype.kind, column
    assert list(boxes.columns) == list(real_boxes.columns)
    assert len(load_boxes(real_nih("BBox_List_2017.csv"))) == 984
    assert len(load_labels(real_nih("Data_Entry_2017_subset.csv"))) == 59


def test_patients_have_several_images(entries: pd.DataFrame) -> None:
    per_patient = entries.groupby("Patient ID")["Follow-up #"].agg(["count", "max"])
    assert per_patient["count"].max() >= 2 and (per_patient["count"] == per_patient["max"] + 1).all()
    assert per_patient["count"].mean() > 1.5
    ages = entries.groupby("Patient ID")["Patient Age"].agg(["min", "max"])
    assert (ages["max"] - ages["min"] <= 4).all()


def test_boxes_inside_images_and_consistent_with_labels(phantoms: PhantomSet, entries: pd.DataFrame) -> None:
    records = load_boxes(phantoms.bbox_csv)
    assert len(records) == sum(phantoms.box_counts.values()) > 0
    for b in records:
        assert b.w >= 2 and b.h >= 2 and b.x >= 0 and b.y >= 0
        assert b.x + b.w <= SIZE and b.y + b.h <= SIZE
        assert b.label != "Infiltration"  # NIH's BBox_List spelling is "Infiltrate"
    boxed = {(b.image, b.data_label) for b in records}
    labelled = {(name, lab) for name, cell in zip(entries["Image Index"], entries["Finding Labels"])
                for lab in cell.split("|") if lab != NO_FINDING}
    assert boxed == labelled


def test_class_counts_and_normals(phantoms: PhantomSet, entries: pd.DataFrame, boxes: pd.DataFrame) -> None:
    counted = pd.Series([lab for cell in entries["Finding Labels"] for lab in cell.split("|")]).value_counts()
    assert phantoms.image_counts == {k: int(counted[k]) for k in phantoms.image_counts}
    assert set(phantoms.image_counts) == set(CLASSES) | {NO_FINDING}
    assert 0.15 <= phantoms.image_counts[NO_FINDING] / phantoms.n_images <= 0.6
    assert phantoms.box_counts == boxes["Finding Label"].value_counts().to_dict()
    assert "Infiltrate" in phantoms.box_counts
    again = PhantomSet.load(phantoms.root)
    assert (again.image_counts, again.box_counts, again.n_patients, again.size) == (
        phantoms.image_counts, phantoms.box_counts, phantoms.n_patients, SIZE)
    assert "Nodule" in phantoms.summary() and str(phantoms.images_dir) in phantoms.summary()


def test_nodules_are_brighter_than_their_surroundings(phantoms: PhantomSet) -> None:
    diffs = []
    for b in load_boxes(phantoms.bbox_csv):
        if b.label not in ("Nodule", "Mass"):
            continue
        img = cv2.imread(str(phantoms.images_dir / b.image), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        x0, y0, x1, y1 = int(b.x), int(b.y), int(b.x + b.w), int(b.y + b.h)
        pad = max(2, int(0.5 * max(b.w, b.h)))
        outer = img[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
        inner = img[y0:y1, x0:x1]
        ring = (outer.sum() - inner.sum()) / (outer.size - inner.size)
        diffs.append(inner.mean() - ring)
    assert len(diffs) >= 5
    assert np.mean(diffs) > 3 and np.mean(np.array(diffs) > 0) > 0.7


@pytest.mark.parametrize("finding", CLASSES)
def test_boxes_tightly_cover_what_the_lesion_changed(finding: str) -> None:
    """Render with and without the finding (same anatomy and noise): the change lies in the boxes."""
    for index in range(2):
        with_it, lesions = render_phantom((finding,), 192, seed=5, index=index, patient=index + 1)
        without, none = render_phantom((), 192, seed=5, index=index, patient=index + 1)
        assert lesions and not none and {les.label for les in lesions} == {finding}
        diff = np.abs(with_it.astype(np.float64) - without.astype(np.float64))
        inside = np.zeros(diff.shape, bool)
        for les in lesions:
            x, y, w, h = les.box
            inside[max(0, int(y) - 2):int(y + h) + 2, max(0, int(x) - 2):int(x + w) + 2] = True
        assert diff[inside].sum() / diff.sum() > 0.9  # the change is in the boxes...
        strong = diff > 0.15 * diff.max()
        for les in lesions:  # ...and every box holds part of it
            x, y, w, h = (int(v) for v in les.box)
            assert strong[y:y + h, x:x + w].any()
        sign = -1 if finding == "Pneumothorax" else 1  # air darkens, everything else is denser
        assert sign * (with_it[inside].astype(float) - without[inside]).mean() > 2


def test_lesions_sit_in_the_right_places() -> None:
    img, lesions = render_phantom(("Cardiomegaly", "Effusion", "Pneumothorax"), 256, seed=1, index=3)
    by_label = {les.label: les.box for les in lesions}
    x, y, w, h = by_label["Cardiomegaly"]
    assert x < 128 < x + w and x + w / 2 > 128  # spans the midline, mostly on the image right
    for les in lesions:
        bx, by, bw, bh = les.box
        if les.label == "Effusion":
            assert by + bh / 2 > 128  # a lung base
        if les.label == "Pneumothorax":
            assert by < 90  # reaches the apex
    assert img.shape == (256, 256)


def test_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    a = generate_phantoms(tmp_path / "a", n=6, size=96, seed=11)
    b = generate_phantoms(tmp_path / "b", n=6, size=96, seed=11, workers=2)
    c = generate_phantoms(tmp_path / "c", n=6, size=96, seed=12)
    names = sorted(p.name for p in a.images_dir.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a.images_dir, b.images_dir, names, shallow=False)
    assert match == names and not mismatch and not errors
    for attr in ("data_entry_csv", "bbox_csv"):
        assert getattr(a, attr).read_bytes() == getattr(b, attr).read_bytes()
    assert a.data_entry_csv.read_bytes() != c.data_entry_csv.read_bytes() or any(
        (a.images_dir / n).read_bytes() != (c.images_dir / n).read_bytes() for n in names)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="n must be at least 1"):
        generate_phantoms(tmp_path, n=0)
    with pytest.raises(UsageError, match="size"):
        generate_phantoms(tmp_path, n=1, size=32)
    with pytest.raises(UsageError, match="lesion_rate"):
        generate_phantoms(tmp_path, n=1, size=64, lesion_rate=1.5)
    with pytest.raises(UsageError, match="unknown phantom finding"):
        render_phantom(("Hernia",), 64)


def test_lesion_rate_extremes(tmp_path: Path) -> None:
    normal = generate_phantoms(tmp_path / "normal", n=5, size=64, lesion_rate=0.0)
    assert normal.image_counts == {NO_FINDING: 5} and normal.box_counts == {}
    assert normal.bbox_csv.read_text() == BBOX_HEADER + "\n"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xcam.cli import main

    main(["phantom", "--out", str(tmp_path / "cli"), "--n", "4", "--size", "64", "--seed", "2"])
    out = capsys.readouterr().out
    assert "Wrote 4 synthetic chest radiographs" in out and "Data_Entry_2017.csv" in out
    assert len(list((tmp_path / "cli" / "images").glob("*.png"))) == 4
    for args, message in ((["--n", "0"], "--n"), (["--size", "32"], "--size"), (["--workers", "0"], "--workers")):
        with pytest.raises(SystemExit) as exc:
            main(["phantom", "--out", str(tmp_path / "bad"), *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "must be at least" in err and "Traceback" not in err


# --------------------------------------------------------------------------- styles

# Hashes of the classic output, recorded from the generator BEFORE styles were added (numpy 2 /
# opencv 4 of this project's environment): the default must stay byte-identical (tests, cached demos).
CLASSIC_SET_SHA256 = "9f00033305af071e84d834db1a4730b8e1697cc6e79a8ddf543af64ee7b97fb4"
CLASSIC_RENDER_SHA256 = "5846b79cea6d84414677a4c51d909fd3cda64901c05b135a9dbd9578aec18752"
NEW_STYLES = ("varied", "portable", "alt")


def _set_sha256(root: Path) -> str:
    """sha256 over the images and the two NIH tables (names and bytes), in name order."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("phantom_"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_classic_is_byte_identical_to_the_recorded_reference(tmp_path: Path) -> None:
    for style in ("classic", STYLES["classic"]):  # the default, by name and as a Style
        root = tmp_path / str(id(style))
        generate_phantoms(root, n=12, size=96, seed=3, style=style)
        assert _set_sha256(root) == CLASSIC_SET_SHA256
        assert json.loads((root / "phantom_style.json").read_text())["style"] == "classic"
    h = hashlib.sha256()
    for i, c in enumerate(CLASSES):
        img, les = render_phantom((c,), 128, seed=4, index=i, patient=i + 1, gender="F" if i % 2 else "M")
        h.update(img.tobytes())
        h.update(repr([(x.label, x.box) for x in les]).encode())
        assert {x.rendering for x in les} == {"classic"}
    assert h.hexdigest() == CLASSIC_RENDER_SHA256


@pytest.fixture(scope="module")
def styled_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PhantomSet]:
    root = tmp_path_factory.mktemp("styled")
    return {s: generate_phantoms(root / s, n=40, size=128, seed=1, style=s) for s in NEW_STYLES}


@pytest.mark.parametrize("style", NEW_STYLES)
def test_style_sets_hold_every_class_and_record_the_style(style: str, styled_sets: dict[str, PhantomSet]) -> None:
    ps = styled_sets[style]
    assert set(ps.box_counts) == {BOX_LABEL.get(c, c) for c in CLASSES}  # every class drawn
    assert ps.style == style and PhantomSet.load(ps.root).style == style and f"Style: {style}." in ps.summary()
    record = json.loads((ps.root / "phantom_style.json").read_text())
    assert record["style"] == style and record["settings"] == STYLES[style].as_json()
    entries = pd.read_csv(ps.data_entry_csv)
    assert set(entries["View Position"]) == {STYLES[style].view}
    objects = pd.read_csv(ps.root / "phantom_objects.csv")
    lesions, distractors = objects[objects["Kind"] == "lesion"], objects[objects["Kind"] == "distractor"]
    # the box list holds exactly the lesions, none of the distractors
    nih = sorted((b.image, b.data_label, b.x, b.y, b.w, b.h) for b in load_boxes(ps.bbox_csv))
    drawn = sorted(lesions[["Image Index", "Label", "x", "y", "w", "h"]].itertuples(index=False, name=None))
    assert nih == drawn
    assert len(distractors) > 0 and set(distractors["Label"]) <= set(DISTRACTOR_KINDS)
    normals = set(entries.loc[entries["Finding Labels"] == NO_FINDING, "Image Index"])
    assert normals & set(distractors["Image Index"])  # distractors on normal images: still "No Finding"
    for label, rendering in lesions[["Label", "Rendering"]].itertuples(index=False):
        assert rendering in STYLES[style].renderings[label]
    pairs = lesions[["Label", "Rendering"]].itertuples(index=False)
    assert record["lesion_renderings"] == dict(Counter(f"{a}/{b}" for a, b in pairs))


def test_alt_never_draws_a_rendering_of_varied() -> None:
    for label, choices in STYLES["alt"].renderings.items():
        assert not set(choices) & set(STYLES["varied"].renderings[label]), label


def test_portable_has_lower_contrast_and_more_devices(styled_sets: dict[str, PhantomSet],
                                                     phantoms: PhantomSet) -> None:
    def spread(ps: PhantomSet) -> float:  # median 5-95 % grey-level range of the central region
        values = []
        for p in sorted(ps.images_dir.glob("*.png"))[:30]:
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            s = img.shape[0]
            centre = img[s // 5:4 * s // 5, s // 5:4 * s // 5]
            values.append(np.percentile(centre, 95) - np.percentile(centre, 5))
        return float(np.median(values))

    assert spread(styled_sets["portable"]) < 0.85 * spread(phantoms)
    kinds = {s: json.loads((ps.root / "phantom_style.json").read_text())["distractors"]
             for s, ps in styled_sets.items()}
    assert sum(kinds["portable"].values()) > 2 * sum(kinds["varied"].values())
    assert kinds["portable"].get("ecg", 0) > 0 and kinds["portable"].get("text", 0) > 0


RENDERING_CASES = [(label, name) for label, names in RENDERING_NAMES.items() for name in names if name != "classic"]


@pytest.mark.parametrize(("finding", "rendering"), RENDERING_CASES)
def test_every_rendering_changes_only_its_box(finding: str, rendering: str) -> None:
    """With every kind of distractor on, toggling the finding changes the image inside its boxes."""
    style = replace(STYLES["varied"], name="one", renderings={finding: {rendering: 1.0}},
                    distractors={k: 1.0 for k in DISTRACTOR_KINDS})
    for index in range(2):
        with_it = render_styled((finding,), 192, seed=5, index=index, patient=index + 1, style=style)
        without = render_styled((), 192, seed=5, index=index, patient=index + 1, style=style)
        assert with_it.lesions and not without.lesions and with_it.distractors
        assert {(les.label, les.rendering) for les in with_it.lesions} == {(finding, rendering)}
        assert with_it.distractors == without.distractors
        diff = np.abs(with_it.image.astype(np.float64) - without.image.astype(np.float64))
        inside = np.zeros(diff.shape, bool)
        for les in with_it.lesions:
            x, y, w, h = les.box
            inside[max(0, int(y) - 2):int(y + h) + 2, max(0, int(x) - 2):int(x + w) + 2] = True
        assert diff[inside].sum() / diff.sum() > 0.9
        strong = diff > 0.15 * diff.max()
        for les in with_it.lesions:
            x, y, w, h = (int(v) for v in les.box)
            assert strong[y:y + h, x:x + w].any()
        sign = -1 if finding == "Pneumothorax" else 1
        assert sign * (with_it.image[inside].astype(float) - without.image[inside]).mean() > 2


def _boxes_of(finding: str, rendering: str, n: int, size: int = 256) -> list[tuple[float, float, float, float]]:
    style = replace(STYLES["classic"], name="one", renderings={finding: {rendering: 1.0}})
    return [les.box for i in range(n) for les in render_styled((finding,), size, 9, i, i + 1, style=style).lesions]


def test_sized_nodules_span_3_to_30_mm() -> None:
    mm = [max(w, h) * FIELD_OF_VIEW_MM / 256 for _, _, w, h in _boxes_of("Nodule", "sized", 24)]
    assert min(mm) < 8 and max(mm) > 20 and max(mm) < 45  # classic nodules: about 8-19 mm


def test_pneumothorax_renderings_differ_in_shape() -> None:
    band = _boxes_of("Pneumothorax", "band", 4)
    large = _boxes_of("Pneumothorax", "large", 4)
    classic = _boxes_of("Pneumothorax", "classic", 4)
    assert all(h > 1.8 * w for _, _, w, h in band)  # a narrow band along the lateral wall...
    assert all(y > 30 for _, y, _, _ in band)  # ...below the apex
    assert np.mean([w * h for *_, w, h in large]) > 1.3 * np.mean([w * h for *_, w, h in classic])


def test_distractor_boxes_hold_the_distractors() -> None:
    style = replace(STYLES["portable"], distractors={k: 1.0 for k in DISTRACTOR_KINDS})
    bare = replace(style, distractors={})
    for index in range(2):
        dressed = render_styled((), 160, seed=2, index=index, patient=1, style=style)
        plain = render_styled((), 160, seed=2, index=index, patient=1, style=bare)
        assert not dressed.lesions and not plain.distractors
        assert {d.kind for d in dressed.distractors} == set(DISTRACTOR_KINDS)
        diff = np.abs(dressed.image.astype(np.float64) - plain.image.astype(np.float64))
        inside = np.zeros(diff.shape, bool)
        for d in dressed.distractors:
            x, y, w, h = (int(v) for v in d.box)
            inside[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2] = True
        assert diff.max() > 60 and diff[inside].sum() / diff.sum() > 0.95


@pytest.mark.parametrize("style", NEW_STYLES)
def test_styles_are_deterministic(style: str, tmp_path: Path) -> None:
    a = generate_phantoms(tmp_path / "a", n=5, size=96, seed=11, style=style)
    b = generate_phantoms(tmp_path / "b", n=5, size=96, seed=11, style=style, workers=2 if style == "alt" else 1)
    c = generate_phantoms(tmp_path / "c", n=5, size=96, seed=12, style=style)
    assert _set_sha256(a.root) == _set_sha256(b.root) != _set_sha256(c.root)
    for name in ("phantom_objects.csv", "phantom_style.json"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    classic = generate_phantoms(tmp_path / "k", n=5, size=96, seed=11)
    assert a.data_entry_csv.read_text().split("\n")[1].split(",")[1] == \
        classic.data_entry_csv.read_text().split("\n")[1].split(",")[1]  # same plan...
    assert (a.images_dir / "00000001_000.png").read_bytes() != (classic.images_dir / "00000001_000.png").read_bytes()


def test_montage_of_a_style() -> None:
    grid = style_montage("portable", size=96)
    assert grid.shape == (192, 192, 3) and grid.dtype == np.uint8
    green = (grid[..., 1] > 200) & (grid[..., 0] < 50) & (grid[..., 2] < 50)
    assert green.sum() > 50  # lesion boxes drawn


def test_bad_styles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xcam.cli import main

    with pytest.raises(UsageError, match="unknown phantom style 'nope' .*varied"):
        generate_phantoms(tmp_path, n=1, size=64, style="nope")
    with pytest.raises(UsageError, match="bad renderings for Nodule"):
        render_phantom(("Nodule",), 64, style=replace(STYLES["varied"], renderings={"Nodule": {"round": 1.0}}))
    with pytest.raises(UsageError, match="unknown distractor"):
        generate_phantoms(tmp_path, n=1, size=64, style=replace(STYLES["alt"], distractors={"cat": 1.0}))
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "--out", str(tmp_path / "bad"), "--style", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--style" in err and "Traceback" not in err
    main(["phantom", "--out", str(tmp_path / "cli"), "--n", "3", "--size", "64", "--style", "alt"])
    assert "Style: alt." in capsys.readouterr().out
    assert PhantomSet.load(tmp_path / "cli").style == "alt"
