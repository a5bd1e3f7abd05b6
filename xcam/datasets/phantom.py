"""Synthetic PA chest radiographs ("phantoms") with lesion boxes, written in NIH ChestX-ray14 format.

Each image is rendered directly at its target size from an attenuation model: soft tissue of the
body (a cylinder-like path length), two lung fields of air, heart and mediastinum, ribs, clavicles,
spine, trachea, hila with branching vessels, diaphragm domes and abdomen; then a film-like display
curve, exposure/contrast/gamma, blur and noise. Lesions change that attenuation model (never the
final pixels), so they interact with anatomy as real findings do: a nodule has the contrast of a
rib, an effusion replaces lung air at a base, a pneumothorax removes lung markings at an apex.

Geometry is defined in *anatomical* coordinates: ``u`` across (0 = midline, ``u < 0`` = the
patient's right = the image left, as in a PA film) and ``v`` down (0 ≈ the top of the image,
1 ≈ the bottom). A per-image :class:`Frame` maps them to pixels with a small rotation, scale and
shift. Every box is the bounding box of the pixels where the lesion changed the attenuation (above
10 % of its peak change), so boxes are tight by construction.

Everything is deterministic given ``seed``: the image plan comes from ``default_rng([seed, 0])``,
a patient's anatomy from ``[seed, 1, patient]`` and each image from ``[seed, 2, index]`` (split
into anatomy, lesion and noise streams), so the output does not depend on ``workers``.

``style`` selects a named look (:mod:`.phantom_styles`); ``classic``, the default, is this module's
own drawing, unchanged; the others are drawn by :mod:`.phantom_styled` on the same streams plus
their own.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from xcam.core.errors import UsageError
from xcam.datasets.phantom_styles import STYLES, Style, get_style

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
NO_FINDING = "No Finding"
# Data_Entry spellings of the classes the generator draws.
CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax",
)
# NIH spells Infiltration "Infiltrate" in BBox_List_2017.csv.
BOX_LABEL: dict[str, str] = {"Infiltration": "Infiltrate"}
DATA_LABEL: dict[str, str] = {v: k for k, v in BOX_LABEL.items()}
CLASS_WEIGHTS: dict[str, float] = {
    "Nodule": 1.0, "Mass": 0.8, "Cardiomegaly": 0.8, "Effusion": 1.0,
    "Pneumothorax": 0.8, "Atelectasis": 1.0, "Infiltration": 0.7,
}
FIELD_OF_VIEW_MM = 366.0  # NIH originals: about 2560 px at 0.143 mm
STYLE_JSON = "phantom_style.json"  # the style (and settings) a set was drawn in
OBJECTS_CSV = "phantom_objects.csv"  # every drawn lesion (with its rendering) and distractor
OBJECTS_HEADER = "Image Index,Kind,Label,Rendering,x,y,w,h"
_SHIFT = 4  # fixed-point bits for cv2 drawing (1/16 px precision)
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion: its Data_Entry label, its box (x, y, w, h) in image pixels and the
    rendering that drew it (see ``phantom_styles.RENDERING_NAMES``)."""

    label: str
    box: tuple[float, float, float, float]
    rendering: str = "classic"


@dataclass(frozen=True)
class PhantomBox:
    """One row of a ``BBox_List_2017.csv`` file (label in BBox_List spelling)."""

    image: str
    label: str
    x: float
    y: float
    w: float
    h: float

    @property
    def data_label(self) -> str:
        """The label in Data_Entry spelling (``Infiltrate`` -> ``Infiltration``)."""
        return DATA_LABEL.get(self.label, self.label)


@dataclass(frozen=True)
class ImageSpec:
    """What one image should show, decided before rendering."""

    index: int
    name: str
    patient: int
    follow: int
    age: int
    gender: str
    findings: tuple[str, ...]


@dataclass(frozen=True)
class PhantomSet:
    """A generated data set: where its files are and what it holds."""

    root: Path
    images_dir: Path
    data_entry_csv: Path
    bbox_csv: Path
    size: int
    n_images: int
    n_patients: int
    image_counts: dict[str, int] = field(default_factory=dict)  # images per label, incl. No Finding
    box_counts: dict[str, int] = field(default_factory=dict)  # boxes per BBox_List label
    style: str = "classic"  # from phantom_style.json; "" when the folder has none (e.g. real NIH)

    @classmethod
    def load(cls, root: str | Path) -> "PhantomSet":
        """Describe an existing phantom (or NIH-format) folder from its two CSV files."""
        root = Path(root)
        entry, bbox = root / "Data_Entry_2017.csv", root / "BBox_List_2017.csv"
        labels = load_labels(entry)
        patients = {name.split("_")[0] for name in labels}
        image_counts = Counter(lab for labs in labels.values() for lab in labs)
        box_counts = Counter(b.label for b in load_boxes(bbox)) if bbox.exists() else Counter()
        first = next(iter(labels), None)
        size = 0
        if first and (root / "images" / first).exists():
            size = int(cv2.imread(str(root / "images" / first), cv2.IMREAD_GRAYSCALE).shape[1])
        return cls(root, root / "images", entry, bbox, size, len(labels), len(patients),
                   _ordered(image_counts), _ordered(box_counts), read_style_name(root))

    def summary(self) -> str:
        """One paragraph: counts per class and where the files are."""
        per_image = ", ".join(f"{k} {v}" for k, v in self.image_counts.items())
        per_box = ", ".join(f"{k} {v}" for k, v in self.box_counts.items()) or "none"
        return (
            f"Wrote {self.n_images} synthetic chest radiographs ({self.size}x{self.size} px, "
            f"{self.n_patients} patients) to {self.images_dir}. Images per label: {per_image}. "
            f"Boxes ({sum(self.box_counts.values())}): {per_box}. Labels: {self.data_entry_csv}; "
            f"boxes: {self.bbox_csv}." + (f" Style: {self.style}." if self.style else "")
        )


def read_style_name(root: str | Path) -> str:
    """The style recorded in a phantom folder's ``phantom_style.json`` ("" when absent or unreadable)."""
    try:
        return str(json.loads((Path(root) / STYLE_JSON).read_text(encoding="utf-8")).get("style", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _ordered(counts: Counter) -> dict[str, int]:
    """Counts sorted by label, with ``No Finding`` last."""
    keys = sorted(k for k in counts if k != NO_FINDING) + ([NO_FINDING] if NO_FINDING in counts else [])
    return {k: int(counts[k]) for k in keys}


def load_boxes(path: str | Path) -> list[PhantomBox]:
    """Read a ``BBox_List_2017.csv`` (phantom or real NIH) as records."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return [PhantomBox(r[0], r[1], *(float(v) for v in r[2:6])) for r in rows[1:] if len(r) >= 6 and r[0]]


def load_labels(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a ``Data_Entry_2017.csv`` as ``{image name: labels}`` (``("No Finding",)`` when none)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return {r[0]: tuple(r[1].split("|")) for r in rows[1:] if len(r) >= 2 and r[0]}


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Frame:
    """Maps anatomical coordinates (u across, v down) to pixel coordinates of one image."""

    size: int
    cx: float = 0.5  # pixel position of (u=0, v=0.5), as a fraction of the size
    cy: float = 0.5
    scale: float = 1.0
    angle: float = 0.0  # radians; positive turns the anatomy clockwise on screen

    def to_px(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical -> pixel coordinates (pixel centres at integers)."""
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64) - 0.5
        c, s, k = math.cos(self.angle), math.sin(self.angle), self.scale
        x = (self.cx + k * (c * u - s * v)) * self.size - 0.5
        y = (self.cy + k * (s * u + c * v)) * self.size - 0.5
        return x, y

    def to_uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel -> anatomical coordinates (the inverse of :meth:`to_px`)."""
        dx = (np.asarray(x, np.float32) + 0.5) / self.size - self.cx
        dy = (np.asarray(y, np.float32) + 0.5) / self.size - self.cy
        c, s, k = math.cos(self.angle), math.sin(self.angle), self.scale
        return (c * dx + s * dy) / k, (-s * dx + c * dy) / k + 0.5

    def grid(self, x0: int, y0: int, x1: int, y1: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical coordinates of the pixels in [x0, x1) x [y0, y1) (optionally every ``step``)."""
        off = (step - 1) / 2
        xs = np.arange(x0, x1, step, dtype=np.float32) + off
        ys = np.arange(y0, y1, step, dtype=np.float32) + off
        return self.to_uv(xs[None, :], ys[:, None])

    def px(self, length: float) -> float:
        """An anatomical length in pixels."""
        return length * self.scale * self.size

    def pts(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Fixed-point polygon points for cv2 drawing with ``shift=_SHIFT``."""
        x, y = self.to_px(u, v)
        return np.round(np.stack([x, y], -1) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _spline(points: Sequence[tuple[float, float]], per_segment: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A Catmull-Rom curve through ``points`` (open, ends included)."""
    p = np.asarray(points, np.float64)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t**3))
    out.append(p[-2][None])
    curve = np.vstack(out)
    return curve[:, 0], curve[:, 1]


def _fill(layer: np.ndarray, frame: Frame, u: np.ndarray, v: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(layer, [frame.pts(u, v)], int(value), cv2.LINE_AA, _SHIFT)


def _stroke(layer: np.ndarray, frame: Frame, u: np.ndarray, v: np.ndarray, width: float, value: int = 255) -> None:
    _strokes(layer, frame, [(u, v)], width, value)


def _strokes(layer: np.ndarray, frame: Frame, curves: Sequence[tuple[np.ndarray, np.ndarray]], width: float,
             value: int = 255, closed: bool = False) -> None:
    """Draw several open (or closed) curves of one width and value in one call."""
    thickness = max(1, int(round(frame.px(width))))
    cv2.polylines(layer, [frame.pts(u, v) for u, v in curves], closed, int(value), thickness, cv2.LINE_AA, _SHIFT)


def _fills(layer: np.ndarray, frame: Frame, polygons: Sequence[tuple[np.ndarray, np.ndarray]], value: int = 255) -> None:
    cv2.fillPoly(layer, [frame.pts(u, v) for u, v in polygons], int(value), cv2.LINE_AA, _SHIFT)


def _ellipse_uv(cu: float, cv_: float, a: float, b: float, tilt: float = 0.0, n: int = 72
                ) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = math.cos(tilt), math.sin(tilt)
    return cu + a * np.cos(t) * ca - b * np.sin(t) * sa, cv_ + a * np.cos(t) * sa + b * np.sin(t) * ca


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field with features about ``cell`` pixels wide."""
    h, w = shape
    gh, gw = max(2, int(h / max(cell, 1.0)) + 2), max(2, int(w / max(cell, 1.0)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones run on a downsampled copy (the result is smooth anyway)."""
    if sigma < 0.3:
        return img
    k = int(sigma / 2.0)
    if k < 2:
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / k, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """Shape, position and exposure parameters of one radiograph (anatomical units)."""

    cx: float = 0.5
    cy: float = 0.52
    scale: float = 1.0
    angle: float = 0.0
    apex_v: float = 0.10  # top of the lung apices
    cp_v: float = 0.74  # right costophrenic angle
    dome_v: float = 0.62  # top of the right hemidiaphragm
    dome_u: float = 0.19  # |u| of the dome tops
    left_drop: float = 0.025  # left hemidiaphragm lies lower
    medial_drop: float = 0.05  # the dome falls again towards the midline
    lung_w: float = 0.39  # |u| of the costophrenic angles
    medial_u: float = 0.03
    medi_w: float = 0.048  # half width of the upper mediastinum
    knob: float = 0.035  # aortic knob bulge (image right)
    heart_u: float = 0.06
    heart_v: float = 0.565
    heart_a: float = 0.165
    heart_b: float = 0.125
    heart_tilt: float = 0.4
    body_w: float = 0.48
    rib_gap: float = 0.062
    female: bool = False
    gastric: bool = True
    # attenuation weights
    soft_k: float = 0.60
    air_k: float = 0.8  # fraction of the body path that is air inside a lung
    bone_k: float = 0.08
    vessel_k: float = 0.09
    # display
    expo_k: float = 2.5
    contrast: float = 1.0
    bias: float = 0.0
    gamma: float = 1.0
    noise: float = 0.012
    blur: float = 1.0  # PSF sigma at 1024 px

    @property
    def cardiothoracic(self) -> float:
        """Approximate cardiothoracic ratio (heart width / thorax width)."""
        u, _ = _ellipse_uv(self.heart_u, self.heart_v, self.heart_a, self.heart_b, self.heart_tilt)
        return float((u.max() - u.min()) / (2 * self.lung_w + 0.04))


def _patient_anatomy(rng: np.random.Generator, gender: str) -> Anatomy:
    """The anatomy shared by all of a patient's images."""
    n = rng.normal
    big = n(0, 1)
    return Anatomy(
        apex_v=0.10 + n(0, 0.01), cp_v=0.74 + n(0, 0.02), dome_v=0.62 + n(0, 0.02),
        dome_u=0.19 + n(0, 0.01), left_drop=0.025 + n(0, 0.01), lung_w=0.385 + 0.012 * big,
        medi_w=0.048 + n(0, 0.004), knob=0.035 + n(0, 0.008), heart_u=0.06 + n(0, 0.008),
        heart_v=0.565 + n(0, 0.012), heart_a=0.165 + n(0, 0.009), heart_b=0.125 + n(0, 0.007),
        heart_tilt=0.4 + n(0, 0.08), body_w=0.48 + 0.012 * big, rib_gap=0.062 + n(0, 0.003),
        female=gender == "F", gastric=bool(rng.random() < 0.6), soft_k=0.60 + n(0, 0.04),
    )


def _image_anatomy(base: Anatomy, rng: np.random.Generator) -> Anatomy:
    """One image of a patient: position, rotation, inspiration and exposure vary."""
    u = rng.uniform
    breath = u(-0.02, 0.02)
    return replace(
        base,
        cx=0.5 + u(-0.03, 0.03), cy=0.52 + u(-0.03, 0.03), scale=u(0.9, 1.06),
        angle=math.radians(u(-4, 4)), cp_v=base.cp_v + breath, dome_v=base.dome_v + breath,
        expo_k=u(2.1, 3.0), contrast=u(0.92, 1.08), bias=u(-0.07, 0.03), gamma=u(0.85, 1.3),
        noise=u(0.006, 0.02), blur=u(0.6, 1.5),
    )


def _diaphragm(a: Anatomy, u: np.ndarray) -> np.ndarray:
    """v of the diaphragm (lung base) at each u; the left (u > 0) dome lies lower."""
    u = np.asarray(u, np.float32)
    au = np.abs(u)
    drop = np.where(u > 0, a.left_drop, 0.0).astype(np.float32)
    lat = np.clip((au - a.dome_u) / (a.lung_w - a.dome_u), 0.0, None)
    med = np.clip((a.dome_u - au) / a.dome_u, 0.0, 1.0)
    return a.dome_v + drop + (a.cp_v - a.dome_v) * lat**2 + a.medial_drop * med**2


@functools.lru_cache(maxsize=64)
def _lateral_curve(a: Anatomy, side: int) -> tuple[np.ndarray, np.ndarray]:
    """|u|, v of a lung's outline from the medial apex over the apex to the costophrenic angle."""
    cp = a.cp_v + (a.left_drop if side > 0 else 0.0)
    top, w = a.apex_v, a.lung_w
    ctrl = [(a.medial_u + 0.005, top + 0.07), (0.07, top + 0.014), (0.12, top),
            (0.18, top + 0.01), (w - 0.11, top + 0.055), (w - 0.045, top + 0.16),
            (w - 0.01, 0.5 * (top + cp) + 0.08), (w, cp)]
    return _spline(ctrl, 10)


def _envelope(a: Anatomy, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Outline (u, v) of one lung field before heart and mediastinum are cut out."""
    lu, lv = _lateral_curve(a, side)
    du = np.linspace(a.lung_w, a.medial_u, 28)
    dv = _diaphragm(a, side * du)
    return side * np.concatenate([lu, du]), np.concatenate([lv, dv])


def _heart_outline(a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """The cardiac silhouette: an ellipse cut off below by the diaphragm."""
    u, v = _ellipse_uv(a.heart_u, a.heart_v, a.heart_a, a.heart_b, a.heart_tilt, 96)
    return u, np.minimum(v, _diaphragm(a, u) + 0.004)


def _mediastinum_outline(a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Upper mediastinum: straight right border (SVC), aortic knob and pulmonary trunk on the left."""
    v = np.linspace(-0.1, a.heart_v, 48)
    right = -(a.medi_w + 0.018 * _smoothstep((v - 0.2) / 0.15) + 0.03 * _smoothstep((v - 0.36) / 0.12))
    left = (a.medi_w + 0.012 * _smoothstep((v - 0.3) / 0.15) + a.knob * np.exp(-((v - 0.275) / 0.035) ** 2)
            + 0.02 * np.exp(-((v - 0.355) / 0.03) ** 2))
    return np.concatenate([right, left[::-1]]), np.concatenate([v, v[::-1]])


@dataclass
class Canvas:
    """The attenuation layers of one image while it is being drawn (all float32 unless noted)."""

    anatomy: Anatomy
    frame: Frame
    body: np.ndarray  # soft tissue incl. abdomen and breasts
    lung: np.ndarray  # fraction of the body path that is lung air, 0..1 (scaled by air_k)
    lung_soft: np.ndarray  # antialiased lung mask 0..1
    lung_dist: np.ndarray  # distance to the lung edge, px
    env: dict[int, np.ndarray]  # uint8 lung envelope per side (-1 right, +1 left)
    env_box: dict[int, tuple[int, int, int, int]]  # x0, y0, x1, y1 of each envelope
    heart: np.ndarray  # uint8 heart silhouette
    bone: np.ndarray
    vessel: np.ndarray
    air: np.ndarray  # subtracted attenuation (trachea, bronchi, gastric bubble)
    dense: np.ndarray  # added attenuation of lesions
    occupied: np.ndarray  # uint8, where lesions already are

    @property
    def size(self) -> int:
        return self.frame.size


def _body_layer(a: Anatomy, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Soft tissue path length (body, neck, shoulders, abdomen, breasts), drawn at 1/4 scale."""
    size, step = frame.size, 4
    U, V = frame.grid(0, 0, size, size, step)
    hw_v = np.array([-0.2, -0.02, 0.02, 0.05, 0.08, 0.12, 0.18, 0.3, 0.45, 0.6, 0.9, 1.2], np.float32)
    hw = np.array([0.11, 0.115, 0.135, 0.23, 0.38, 0.5, 0.6, a.body_w + 0.06, a.body_w, a.body_w - 0.005,
                   a.body_w - 0.01, a.body_w - 0.02], np.float32)
    half = np.interp(V, hw_v, hw).astype(np.float32)
    body = np.sqrt(np.clip(1 - (U / half) ** 2, 0, 1)) * (0.85 + 0.15 * _smoothstep((V - 0.05) / 0.2))
    below = _smoothstep((V - _diaphragm(a, U)) / 0.02 + 0.5)
    body = body + 0.08 * below * np.sqrt(np.clip(1 - (U / half) ** 2, 0, 1))
    if a.female:
        for side in (-1, 1):
            du, dv = (U - side * 0.25) / 0.17, (V - (a.cp_v - 0.03)) / 0.13
            r = np.sqrt(du**2 + dv**2)
            body = body + 0.09 * _smoothstep((1 - r) / 0.25) * _smoothstep((V - a.cp_v + 0.14) / 0.1)
    body = body * (1 + 0.04 * _smooth_noise(rng, body.shape, 12))
    return cv2.resize(body.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def _lung_layers(a: Anatomy, frame: Frame) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Per-side envelopes, the heart silhouette and the antialiased lung mask (uint8)."""
    size = frame.size
    env: dict[int, np.ndarray] = {}
    lungs = np.zeros((size, size), np.uint8)
    for side in (-1, 1):
        e = np.zeros((size, size), np.uint8)
        _fill(e, frame, *_envelope(a, side))
        env[side] = e
        _fill(lungs, frame, *_envelope(a, side))
    heart = np.zeros((size, size), np.uint8)
    _fill(heart, frame, *_heart_outline(a))
    _fill(lungs, frame, *_heart_outline(a), value=0)
    _fill(lungs, frame, *_mediastinum_outline(a), value=0)
    return env, heart, lungs


def _rib_layers(a: Anatomy, frame: Frame) -> np.ndarray:
    """Posterior ribs (arched, with cortical margins), fainter anterior ribs, clavicles, humeri."""
    size = frame.size
    post = np.zeros((size, size), np.uint8)
    ant = np.zeros((size, size), np.uint8)
    ribs: dict[str, list] = {"post": [], "ant": []}
    widths = []
    for side in (-1, 1):
        lu, lv = _lateral_curve(a, side)
        v0 = a.apex_v - 0.035
        for i in range(11):
            if v0 > a.cp_v + 0.03:
                break
            back, front = _rib_curves(side, i, v0, lu, lv)
            ribs["post"].append(back)
            ribs["ant"].append(front)
            widths.append(0.019 + 0.004 * i / 10)
            v0 += a.rib_gap * (0.8 + 0.045 * i)
    width = float(np.mean(widths))
    _strokes(post, frame, ribs["post"], width, 255)
    _strokes(post, frame, ribs["post"], width * 0.55, 100)
    _strokes(ant, frame, ribs["ant"], 0.017, 255)
    lift = a.apex_v - 0.10
    cu, cv_ = _spline([(0.03, 0.178), (0.08, 0.172), (0.16, 0.158), (0.25, 0.128), (0.33, 0.112),
                       (0.40, 0.118)], 8)
    clavicles = [(side * cu, cv_ + lift) for side in (-1, 1)]
    _strokes(post, frame, clavicles, 0.028, 255)
    _strokes(post, frame, clavicles, 0.014, 170)
    _strokes(ant, frame, clavicles, 0.02, 255)
    hu, hv = _ellipse_uv(0.48, 0.125 + lift, 0.062, 0.068)
    _fills(post, frame, [(-hu, hv), (hu, hv)], 150)
    post_f = _blur(post, frame.px(0.0012)).astype(np.float32) * (1.0 / 255)
    ant_f = _blur(ant, frame.px(0.003)).astype(np.float32) * (0.4 / 255)
    return post_f + ant_f


def _rib_curves(side: int, i: int, v0: float, lu: np.ndarray, lv: np.ndarray
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """One rib: posterior arc from the spine to the lateral wall, anterior arc back down-medially."""
    level = v0 + 0.06
    reach = float(np.interp(level, lv, lu)) + 0.022 if level > lv[0] else 0.1
    t = np.linspace(0, 1, 28)
    rise = 0.055 if i < 2 else 0.045
    u = side * (0.022 + t * (reach - 0.022))
    v = (v0 - rise * np.sin(np.pi * np.minimum(t / 0.5, 1) / 2)
         + (0.07 + rise) * np.clip((t - 0.4) / 0.6, 0, 1) ** 1.5)
    s = np.linspace(0, 1, 18)
    au = reach - s * (reach - (0.12 + 0.008 * i))
    av = v[-1] + 0.14 * s - 0.035 * np.sin(np.pi * s)
    return (u, v), (side * au, av)


def _spine_layer(a: Anatomy, frame: Frame) -> np.ndarray:
    """Vertebral bodies, pedicles and spinous processes down the midline."""
    size = frame.size
    sp = np.zeros((size, size), np.uint8)
    bodies, pedicles, processes = [], [], []
    v, height = -0.1, 0.034
    while v < 1.1:
        h = height * (1 + 0.4 * max(0.0, v - 0.3))
        w = 0.028 + 0.012 * max(0.0, v - 0.2)
        bodies.append((np.array([-w, w, w, -w]), np.array([v, v, v + h, v + h])))
        pedicles += [_ellipse_uv(s * 0.7 * w, v + 0.3 * h, 0.006, 0.009, 0.0, 20) for s in (-1, 1)]
        processes.append(_ellipse_uv(0.0, v + 0.75 * h, 0.004, 0.011, 0.0, 20))
        v += h * 1.3
    _fills(sp, frame, bodies, 150)
    _strokes(sp, frame, pedicles, 0.003, 255, closed=True)
    _fills(sp, frame, processes, 230)
    return _blur(sp, frame.px(0.002)).astype(np.float32) * (1.0 / 255)


def _airway_layer(a: Anatomy, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Trachea, main bronchi and (sometimes) the gastric bubble, as air to subtract."""
    size = frame.size
    air = np.zeros((size, size), np.uint8)
    carina = (0.006, 0.33 + 0.5 * (a.apex_v - 0.10))
    _stroke(air, frame, np.array([0.0, 0.002, carina[0]]), np.array([-0.1, 0.15, carina[1]]), 0.036, 255)
    for side, end in ((-1, (-0.085, carina[1] + 0.085)), (1, (0.085, carina[1] + 0.065))):
        _stroke(air, frame, np.array([carina[0], end[0]]), np.array([carina[1], end[1]]), 0.014, 110)
    out = _blur(air, frame.px(0.004)).astype(np.float32) * (0.2 / 255)
    if a.gastric:
        g = np.zeros((size, size), np.uint8)
        gu = 0.15 + rng.uniform(-0.03, 0.03)
        top = float(_diaphragm(a, np.array([gu]))[0]) + 0.03
        eu, ev = _ellipse_uv(gu, top + 0.02, rng.uniform(0.03, 0.05), rng.uniform(0.018, 0.028))
        _fill(g, frame, eu, np.maximum(ev, top), 255)
        out += _blur(g, frame.px(0.004)).astype(np.float32) * (rng.uniform(0.08, 0.15) / 255)
    return out


def _vessel_layer(a: Anatomy, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Hila and branching pulmonary vessels that taper towards the periphery."""
    size = frame.size
    ves = np.zeros((size, size), np.uint8)
    hila = {-1: (-0.085, a.heart_v - 0.14), 1: (0.095, a.heart_v - 0.16)}  # heart_v: not changed by lesions
    starts, angles = [], []
    for side, (hu, hv) in hila.items():
        eu, ev = _ellipse_uv(hu, hv, 0.028, 0.045, 0.2 * side)
        _fill(ves, frame, eu, ev, 140)
        for du, dv in [(0.35, -1.0), (1.0, -0.35), (1.0, 0.25), (0.6, 1.0), (0.15, 1.0)]:
            starts.append((hu, hv))
            angles.append(math.atan2(dv, side * du))
    _vessel_trees(ves, frame, rng, np.array(starts), np.array(angles) + rng.normal(0, 0.12, len(angles)),
                  length=0.07, width=0.0085, depth=6)
    return _blur(ves, frame.px(0.0012)).astype(np.float32) * (1.0 / 255)


def _vessel_trees(layer: np.ndarray, frame: Frame, rng: np.random.Generator, starts: np.ndarray,
                  angles: np.ndarray, length: float, width: float, depth: int) -> None:
    """Binary vessel trees, one generation at a time: each segment bends a little and splits in two
    thinner, shorter children. All segments of a generation are drawn in one call."""
    p, ang = starts.astype(np.float64), angles.astype(np.float64)
    ln = np.full(len(ang), length)
    for d in range(depth + 1):
        bend = ang + rng.normal(0, 0.15, len(ang))
        mid = p + 0.5 * ln[:, None] * np.stack([np.cos(ang), np.sin(ang)], -1)
        end = mid + 0.5 * ln[:, None] * np.stack([np.cos(bend), np.sin(bend)], -1)
        seg = np.stack([p, mid, end], 1)  # (n, 3, 2)
        x, y = frame.to_px(seg[..., 0], seg[..., 1])
        pts = np.round(np.stack([x, y], -1) * _ONE).astype(np.int32)
        w = width * 0.7**d
        value = int(255 * min(1.0, max(0.3, w / 0.008)))
        cv2.polylines(layer, list(pts), False, value, max(1, int(round(frame.px(w)))), cv2.LINE_AA, _SHIFT)
        n = len(ang)
        spread = rng.uniform(0.25, 0.6, n)[:, None] * rng.uniform(0.6, 1.2, (n, 2)) * np.array([-1.0, 1.0])
        ang = (bend[:, None] + spread).ravel()
        p = np.repeat(end, 2, axis=0)
        ln = np.repeat(ln, 2) * rng.uniform(0.65, 0.85, 2 * n)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive) around the non-zero pixels of a mask, a pixel of margin included."""
    h, w = mask.shape
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return 0, 0, w, h
    return (max(0, int(cols[0]) - 1), max(0, int(rows[0]) - 1), min(w, int(cols[-1]) + 2), min(h, int(rows[-1]) + 2))


def _draw_anatomy(a: Anatomy, size: int, rng: np.random.Generator) -> Canvas:
    """All normal anatomy of one image as attenuation layers."""
    frame = Frame(size, a.cx, a.cy, a.scale, a.angle)
    env, heart, lungs8 = _lung_layers(a, frame)
    binary = (lungs8 >= 128).astype(np.uint8)
    dist = cv2.distanceTransform(binary, cv2.DIST_L2, 3)
    soft = lungs8.astype(np.float32) * (1.0 / 255)
    lung = np.sqrt(np.minimum(dist * (1.0 / frame.px(0.04)), 1.0)) * soft
    behind = cv2.min(heart, cv2.max(env[-1], env[1]))  # lung in front of and behind the heart
    lung += _blur(behind, frame.px(0.03)).astype(np.float32) * (0.14 / 255)
    texture = (0.03 * _smooth_noise(rng, (size, size), size / 40) + 0.03 * _smooth_noise(rng, (size, size), size / 12)
               + 0.025 * _smooth_noise(rng, (size, size), size / 150))
    lung = lung * (1 + texture)
    boxes = {side: _mask_box(e) for side, e in env.items()}
    bone = _rib_layers(a, frame) * a.bone_k + _spine_layer(a, frame) * 0.05
    return Canvas(
        anatomy=a, frame=frame, body=_body_layer(a, frame, rng), lung=lung, lung_soft=soft, lung_dist=dist,
        env=env, env_box=boxes, heart=heart, bone=bone, vessel=_vessel_layer(a, frame, rng),
        air=_airway_layer(a, frame, rng), dense=np.zeros((size, size), np.float32),
        occupied=np.zeros((size, size), np.uint8),
    )


def _compose(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Attenuation -> 8-bit display: film curve, exposure, gamma, blur and noise."""
    a = c.anatomy
    t = c.lung * np.float32(-a.air_k)
    t += 1.0
    t *= c.body
    t *= np.float32(a.soft_k)
    t += c.bone
    t += cv2.multiply(c.vessel, c.lung_soft, scale=a.vessel_k)
    t += c.dense
    t -= c.air
    np.maximum(t, 0, out=t)
    gain = a.contrast / (1 - math.exp(-a.expo_k * (a.soft_k * 1.45)))
    t *= np.float32(-a.expo_k)
    img = cv2.exp(t)  # 1 - exp(-kT) is the film curve; fold the "1 -" into the gain and bias
    img *= np.float32(-gain)
    img += np.float32(gain + a.bias)
    np.clip(img, 1e-6, 1, out=img)
    img = cv2.pow(img, a.gamma)
    img = _blur(img, a.blur * c.size / 1024)
    grain = rng.standard_normal(img.shape, dtype=np.float32)
    if c.size >= 512:
        grain = _blur(grain, 0.6 * c.size / 1024)
    noise = img + np.float32(0.4)
    noise *= grain
    noise *= np.float32(a.noise * 255)
    img *= np.float32(255)
    img += noise
    img += np.float32(0.5)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- lesions


def _box_of(delta: np.ndarray, x0: int, y0: int, frac: float = 0.1) -> tuple[float, float, float, float] | None:
    """Tight box of the pixels where ``|delta|`` exceeds ``frac`` of its peak."""
    mag = np.abs(delta)
    peak = float(mag.max()) if mag.size else 0.0
    if peak <= 0:
        return None
    ys, xs = np.nonzero(mag > frac * peak)
    return (float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1))


def _crop(c: Canvas, cx: float, cy: float, rx: float, ry: float) -> tuple[int, int, int, int]:
    size = c.size
    return (max(0, int(cx - rx) - 1), max(0, int(cy - ry) - 1),
            min(size, int(math.ceil(cx + rx)) + 2), min(size, int(math.ceil(cy + ry)) + 2))


def _sample_in_lung(c: Canvas, rng: np.random.Generator, margin: float, v_range: tuple[float, float] = (0.0, 1.0),
                    side: int | None = None, tries: int = 400) -> tuple[float, float, int] | None:
    """A random pixel inside a lung, ``margin`` px from its edge, away from other lesions."""
    for _ in range(tries):
        s = side if side is not None else int(rng.choice([-1, 1]))
        x0, y0, x1, y1 = c.env_box[s]
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        xi, yi = int(x), int(y)
        if not (0 <= xi < c.size and 0 <= yi < c.size) or c.lung_dist[yi, xi] <= margin:
            continue
        _, v = c.frame.to_uv(np.float32(x), np.float32(y))
        if not v_range[0] <= float(v) <= v_range[1]:
            continue
        r = int(margin)
        if c.occupied[max(0, yi - r):yi + r + 1, max(0, xi - r):xi + r + 1].any():
            continue
        return x, y, s
    return None


def _apply(c: Canvas, delta: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float, float, float] | None:
    """Add a lesion's attenuation, mark it occupied and return its tight box."""
    x0, y0, x1, y1 = box
    c.dense[y0:y1, x0:x1] += delta
    c.occupied[y0:y1, x0:x1] |= (np.abs(delta) > 0).astype(np.uint8)
    return _box_of(delta, x0, y0)


def _blob(c: Canvas, rng: np.random.Generator, x: float, y: float, r: float, lobes: float, amp: float,
          texture: float) -> tuple[float, float, float, float] | None:
    """A round (nodule) or lobulated (mass) opacity with a spherical profile and texture."""
    x0, y0, x1, y1 = _crop(c, x, y, r * (1 + 2 * lobes), r * (1 + 2 * lobes))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - x, yy - y
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += lobes * rng.uniform(0.3, 1.0) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rr = np.sqrt(dx**2 + dy**2) / (r * radius)
    profile = np.sqrt(np.clip(1 - rr**2, 0, 1)) ** 0.8
    tex = 1 + texture * _smooth_noise(rng, profile.shape, max(2.0, r / 2.5))
    delta = amp * profile * np.clip(tex, 0.3, None) * c.lung_soft[y0:y1, x0:x1]
    return _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))


def _count(rng: np.random.Generator, probs: Sequence[float]) -> int:
    return int(rng.choice(len(probs), p=probs)) + 1


def _draw_nodule(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    out = []
    for _ in range(_count(rng, [0.65, 0.25, 0.10])):
        r = max(2.5, c.frame.px(rng.uniform(0.011, 0.026)))
        pos = _sample_in_lung(c, rng, r * 1.3)
        if pos is None:
            continue
        box = _blob(c, rng, pos[0], pos[1], r, rng.uniform(0.0, 0.06), rng.uniform(0.10, 0.17), 0.25)
        if box:
            out.append(Lesion("Nodule", box))
    return out


def _draw_mass(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    r = max(5.0, c.frame.px(rng.uniform(0.035, 0.065)))
    pos = _sample_in_lung(c, rng, r * 1.05)
    if pos is None:
        return []
    box = _blob(c, rng, pos[0], pos[1], r, rng.uniform(0.08, 0.18), rng.uniform(0.13, 0.21), 0.35)
    return [Lesion("Mass", box)] if box else []


def _draw_infiltration(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    out = []
    for _ in range(_count(rng, [0.75, 0.25])):
        rx, ry = c.frame.px(rng.uniform(0.045, 0.085)), c.frame.px(rng.uniform(0.045, 0.085))
        pos = _sample_in_lung(c, rng, 0.6 * min(rx, ry), v_range=(0.25, 0.75))
        if pos is None:
            continue
        x, y, _ = pos
        x0, y0, x1, y1 = _crop(c, x, y, rx, ry)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d2 = ((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2
        patch = _smoothstep(_smooth_noise(rng, d2.shape, max(2.0, min(rx, ry) / 3)) * 0.6 + 0.55)
        delta = rng.uniform(0.09, 0.14) * patch * _smoothstep((1 - d2) / 0.6) * c.lung_soft[y0:y1, x0:x1]
        box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
        if box:
            out.append(Lesion("Infiltration", box))
    return out


def _draw_atelectasis(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Plate-like band or a wedge pointing to the hilum, confined to the lung."""
    out = []
    for _ in range(_count(rng, [0.8, 0.2])):
        length = c.frame.px(rng.uniform(0.07, 0.15))
        pos = _sample_in_lung(c, rng, 0.25 * length, v_range=(0.4, c.anatomy.cp_v - 0.03))
        if pos is None:
            continue
        x, y, side = pos
        x0, y0, x1, y1 = _crop(c, x, y, length * 0.75, length * 0.75)
        layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
        if rng.random() < 0.55:
            ang = c.anatomy.angle + rng.uniform(-0.35, 0.35)
            thick = c.frame.px(rng.uniform(0.010, 0.024))
            center = (int(round((x - x0) * _ONE)), int(round((y - y0) * _ONE)))
            axes = (int(round(length / 2 * _ONE)), int(round(thick / 2 * _ONE)))
            cv2.ellipse(layer, center, axes, math.degrees(ang), 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        else:
            out_dir = np.array([side * math.cos(c.anatomy.angle), math.sin(c.anatomy.angle)])
            out_dir = out_dir + rng.normal(0, 0.3, 2)
            out_dir /= np.linalg.norm(out_dir)
            normal = np.array([-out_dir[1], out_dir[0]])
            apex = np.array([x - x0, y - y0]) - out_dir * length * 0.45
            base = apex + out_dir * length
            half = rng.uniform(0.18, 0.32) * length
            tri = np.stack([apex, base + normal * half, base - normal * half])
            cv2.fillPoly(layer, [np.round(tri * _ONE).astype(np.int32).reshape(-1, 1, 2)], 255, cv2.LINE_AA, _SHIFT)
        shape = _blur(layer, max(0.5, length * 0.03)).astype(np.float32) * (1.0 / 255)
        tex = np.clip(1 + 0.25 * _smooth_noise(rng, shape.shape, max(2.0, length / 10)), 0.4, None)
        delta = rng.uniform(0.11, 0.17) * shape * tex * c.lung_soft[y0:y1, x0:x1]
        box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
        if box:
            out.append(Lesion("Atelectasis", box))
    return out


def _draw_effusion(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    sides = [-1, 1] if rng.random() < 0.2 else [int(rng.choice([-1, 1]))]
    return [les for side in sides for les in _effusion_side(c, rng, side)]


def _effusion_side(c: Canvas, rng: np.random.Generator, side: int) -> list[Lesion]:
    """Fluid at a lung base: blunted costophrenic angle with a meniscus rising laterally."""
    a = c.anatomy
    cp = a.cp_v + (a.left_drop if side > 0 else 0.0)
    h_lat = rng.uniform(0.07, 0.22)
    h_men = rng.uniform(0.05, 0.1)
    x0, y0, x1, y1 = c.env_box[side]
    U, V = c.frame.grid(x0, y0, x1, y1)
    t = np.clip((np.abs(U) - a.medial_u) / (a.lung_w - a.medial_u), 0, 1)
    level = cp - h_lat + h_men * (1 - t**2)
    env = c.env[side][y0:y1, x0:x1].astype(np.float32) * (1.0 / 255)
    fluid = _smoothstep((V - level) / 0.025 + 0.5) * env
    fluid *= 0.9 + 0.1 * _smoothstep((V - level) / 0.06)
    lung = c.lung[y0:y1, x0:x1]
    removed = 0.95 * fluid * lung
    delta = a.soft_k * a.air_k * c.body[y0:y1, x0:x1] * removed + 0.05 * fluid
    if not (fluid > 0.5).any():
        return []
    lung -= removed
    c.vessel[y0:y1, x0:x1] *= 1 - fluid
    c.dense[y0:y1, x0:x1] += 0.05 * fluid
    c.occupied[y0:y1, x0:x1] |= (fluid > 0.05).astype(np.uint8)
    box = _box_of(delta, x0, y0)
    return [Lesion("Effusion", box)] if box else []


def _draw_pneumothorax(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Air between chest wall and lung at an apex/side: no markings, and a thin pleural line."""
    a, side = c.anatomy, int(rng.choice([-1, 1]))
    v_end = rng.uniform(0.3, 0.45) if rng.random() < 0.5 else rng.uniform(0.5, 0.66)
    depth = c.frame.px(rng.uniform(0.025, 0.06))
    x0, y0, x1, y1 = c.env_box[side]
    U, V = c.frame.grid(x0, y0, x1, y1)
    env = c.env[side][y0:y1, x0:x1]
    wall = np.full(env.shape, 255, np.uint8)  # distance to the apical/lateral chest wall only
    lu, lv = _lateral_curve(a, side)
    keep = lu >= 0.09
    wx, wy = c.frame.to_px(side * lu[keep], lv[keep])
    pts = np.round(np.stack([wx - x0, wy - y0], -1) * _ONE).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(wall, [pts], False, 0, 1, cv2.LINE_8, _SHIFT)
    d = depth * np.clip((v_end - V) / (v_end - a.apex_v), 0, 1) ** 0.6
    return pleural_gap(c, wall, d, env, (x0, y0, x1, y1), 0.07)


def pleural_gap(c: Canvas, wall: np.ndarray, depth: np.ndarray, env: np.ndarray, box: tuple[int, int, int, int],
                line_k: float) -> list[Lesion]:
    """A pneumothorax from its depth map: air (no lung, no vessels) wherever the distance to the
    chest wall (``wall``: 0 on the wall line) is below ``depth``, and a thin pleural line at the edge."""
    a = c.anatomy
    x0, y0, x1, y1 = box
    dist = cv2.distanceTransform(wall, cv2.DIST_L2, 3)
    envf = env.astype(np.float32) * (1.0 / 255)
    gap = np.clip(depth - dist, 0, 1) * envf
    lw = max(0.7, c.frame.px(0.0015))
    line = np.exp(-(((dist - depth) / lw) ** 2)) * (depth > 1.5) * envf
    if not (gap > 0.5).any():
        return []
    lung, vessels = c.lung[y0:y1, x0:x1], c.vessel[y0:y1, x0:x1]
    added = gap * np.clip(0.97 - lung, 0, None)
    delta = a.soft_k * a.air_k * c.body[y0:y1, x0:x1] * added + a.vessel_k * vessels * gap + line_k * line
    lung += added
    vessels *= 1 - gap
    c.dense[y0:y1, x0:x1] += line_k * line
    c.occupied[y0:y1, x0:x1] |= ((gap + line) > 0.05).astype(np.uint8)
    found = _box_of(delta, x0, y0)
    return [Lesion("Pneumothorax", found)] if found else []


def _enlarge_heart(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Cardiomegaly: a wider, lower-reaching heart (cardiothoracic ratio well above 0.5)."""
    return replace(a, heart_a=a.heart_a * rng.uniform(1.3, 1.5), heart_b=a.heart_b * rng.uniform(1.1, 1.25),
                   heart_u=a.heart_u + rng.uniform(0.01, 0.03))


def _heart_box(c: Canvas) -> list[Lesion]:
    ys, xs = np.nonzero(c.heart >= 128)
    if not len(xs):
        return []
    return [Lesion("Cardiomegaly", (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                    float(ys.max() - ys.min() + 1)))]


# Drawing order: diffuse findings first, focal ones avoid what is already there.
LESION_DRAWERS: dict[str, Callable[[Canvas, np.random.Generator], list[Lesion]]] = {
    "Effusion": _draw_effusion,
    "Pneumothorax": _draw_pneumothorax,
    "Atelectasis": _draw_atelectasis,
    "Mass": _draw_mass,
    "Nodule": _draw_nodule,
    "Infiltration": _draw_infiltration,
}


# --------------------------------------------------------------------------- rendering


def check_findings(findings: Iterable[str]) -> set[str]:
    """The findings as a set; an unknown one is a :class:`UsageError`."""
    wanted = set(findings)
    unknown = wanted - set(CLASSES)
    if unknown:
        raise UsageError(f"unknown phantom finding(s): {', '.join(sorted(unknown))} (known: {', '.join(CLASSES)})")
    return wanted


def _is_classic(style: str | Style) -> bool:
    return style == "classic" or style == STYLES["classic"]


def render_phantom(findings: Iterable[str] = (), size: int = 1024, seed: int = 0, index: int = 0,
                   patient: int = 1, gender: str = "M", style: str | Style = "classic"
                   ) -> tuple[np.ndarray, list[Lesion]]:
    """Render one radiograph (uint8, size x size) with the given findings; returns it and its lesions.

    The same ``(seed, patient)`` gives the same patient anatomy, ``(seed, index)`` the same image
    variation and noise, so a finding can be toggled with everything else unchanged. ``style``
    names a phantom style (or is a :class:`Style`); its distractors are drawn but not returned
    (``phantom_styled.render_styled`` returns them too).
    """
    if not _is_classic(style):
        from xcam.datasets.phantom_styled import render_styled  # imports this module

        styled = render_styled(findings, size, seed, index, patient, gender, style)
        return styled.image, styled.lesions
    wanted = check_findings(findings)
    base = _patient_anatomy(np.random.default_rng([seed, 1, patient]), gender)
    r_anat, r_les, r_noise = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2, index]).spawn(3))
    anatomy = _image_anatomy(base, r_anat)
    if "Cardiomegaly" in wanted:
        anatomy = _enlarge_heart(anatomy, r_les)
    canvas = _draw_anatomy(anatomy, size, r_anat)
    lesions = _heart_box(canvas) if "Cardiomegaly" in wanted else []
    for label, draw in LESION_DRAWERS.items():
        if label in wanted:
            lesions += draw(canvas, r_les)
    return _compose(canvas, r_noise), lesions


def plan_images(n: int, seed: int = 0, images_per_patient: tuple[int, int] = (1, 4),
                lesion_rate: float = 0.65, class_weights: dict[str, float] | None = None) -> list[ImageSpec]:
    """Decide patients, follow-ups, ages, sexes and findings of ``n`` images."""
    rng = np.random.default_rng([seed, 0])
    weights = class_weights or CLASS_WEIGHTS
    names = sorted(weights)
    p = np.array([weights[k] for k in names], np.float64)
    p /= p.sum()
    lo, hi = images_per_patient
    specs: list[ImageSpec] = []
    patient = 0
    while len(specs) < n:
        patient += 1
        count = min(int(rng.integers(lo, hi + 1)), n - len(specs))
        age, gender = int(rng.integers(18, 86)), str(rng.choice(["M", "F"]))
        for follow in range(count):
            findings: tuple[str, ...] = ()
            if rng.random() < lesion_rate:
                k = min(len(names), _count(rng, [0.62, 0.28, 0.10]))
                findings = tuple(sorted(rng.choice(names, size=k, replace=False, p=p).tolist()))
            specs.append(ImageSpec(len(specs), f"{patient:08d}_{follow:03d}.png", patient, follow,
                                   min(95, age), gender, findings))
            age += int(rng.integers(0, 2))
    return specs


def _render_job(job: tuple[ImageSpec, int, int, str, Style]) -> tuple[int, list[Lesion], list]:
    """Worker: render one image, write its PNG, return its lesions and distractors."""
    spec, size, seed, images_dir, style = job
    distractors: list = []
    if _is_classic(style):
        img, lesions = render_phantom(spec.findings, size, seed, spec.index, spec.patient, spec.gender)
    else:
        from xcam.datasets.phantom_styled import render_styled  # imports this module

        styled = render_styled(spec.findings, size, seed, spec.index, spec.patient, spec.gender, style)
        img, lesions, distractors = styled.image, styled.lesions, styled.distractors
    cv2.imwrite(str(Path(images_dir) / spec.name), img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    return spec.index, lesions, distractors


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _check_args(n: int, size: int, images_per_patient: tuple[int, int], lesion_rate: float, workers: int) -> None:
    if n < 1:
        raise UsageError(f"n must be at least 1 (got {n})")
    if size < 64:
        raise UsageError(f"size must be at least 64 px (got {size})")
    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise UsageError(f"images_per_patient must be (lo, hi) with 1 <= lo <= hi (got {images_per_patient})")
    if not 0.0 <= lesion_rate <= 1.0:
        raise UsageError(f"lesion_rate must be within [0, 1] (got {lesion_rate})")
    if workers < 1:
        raise UsageError(f"workers must be at least 1 (got {workers})")


def generate_phantoms(out_dir: str | Path, n: int = 1000, size: int = 1024, seed: int = 0,
                      images_per_patient: tuple[int, int] = (1, 4), lesion_rate: float = 0.65,
                      workers: int = 1, class_weights: dict[str, float] | None = None,
                      style: str | Style = "classic") -> PhantomSet:
    """Write ``n`` phantom radiographs plus ``Data_Entry_2017.csv`` and ``BBox_List_2017.csv``.

    ``lesion_rate`` is the fraction of images with at least one finding (the rest are
    ``No Finding``). ``workers > 1`` renders in that many processes with identical output.
    ``style`` names a phantom style (``classic``, the default, ``varied``, ``portable``, ``alt``)
    or is a :class:`Style`; it is recorded in ``phantom_style.json``, and every drawn lesion (with
    its rendering) and distractor in ``phantom_objects.csv``. Distractors never enter the box list.
    """
    _check_args(n, size, images_per_patient, lesion_rate, workers)
    chosen = get_style(style)
    root = Path(out_dir)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    specs = plan_images(n, seed, images_per_patient, lesion_rate, class_weights)
    jobs = [(s, size, seed, str(images), chosen) for s in specs]
    if workers == 1:
        done = [_render_job(j) for j in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            done = list(pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    results = {index: lesions for index, lesions, _ in done}
    distractors = {index: items for index, _, items in done}
    result = _write_tables(root, specs, results, size, chosen.view)
    _write_style_records(root, specs, results, distractors, chosen, seed, lesion_rate)
    return replace(result, style=chosen.name)


def _write_style_records(root: Path, specs: list[ImageSpec], results: dict[int, list[Lesion]],
                         distractors: dict[int, list], style: Style, seed: int, lesion_rate: float) -> None:
    """``phantom_style.json`` (style, its settings, seed, counts) and ``phantom_objects.csv``."""
    lines = [OBJECTS_HEADER]
    renderings: Counter = Counter()
    kinds: Counter = Counter()
    for spec in specs:
        for les in results[spec.index]:
            renderings[f"{les.label}/{les.rendering}"] += 1
            lines.append(f"{spec.name},lesion,{les.label},{les.rendering}," + ",".join(repr(float(v)) for v in les.box))
        for d in distractors[spec.index]:
            kinds[d.kind] += 1
            lines.append(f"{spec.name},distractor,{d.kind},," + ",".join(repr(float(v)) for v in d.box))
    (root / OBJECTS_CSV).write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = {"style": style.name, "seed": seed, "n_images": len(specs), "lesion_rate": lesion_rate,
              "lesion_renderings": dict(sorted(renderings.items())), "distractors": dict(sorted(kinds.items())),
              "settings": style.as_json()}
    (root / STYLE_JSON).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _pixel_spacing(size: int) -> float:
    return round(FIELD_OF_VIEW_MM / size, 6)


def _write_tables(root: Path, specs: list[ImageSpec], results: dict[int, list[Lesion]], size: int,
                  view: str = "PA") -> PhantomSet:
    """Write both CSV files exactly in NIH's layout and describe the set."""
    spacing = _pixel_spacing(size)
    entry_lines, box_lines = [DATA_ENTRY_HEADER], [BBOX_HEADER]
    image_counts: Counter = Counter()
    box_counts: Counter = Counter()
    for spec in specs:
        lesions = results[spec.index]
        labels = sorted({les.label for les in lesions}) or [NO_FINDING]
        image_counts.update(labels)
        entry_lines.append(f"{spec.name},{'|'.join(labels)},{spec.follow},{spec.patient},{spec.age},"
                           f"{spec.gender},{view},{size},{size},{spacing},{spacing},")
        for les in lesions:
            label = BOX_LABEL.get(les.label, les.label)
            box_counts[label] += 1
            box_lines.append(f"{spec.name},{label}," + ",".join(repr(float(v)) for v in les.box))
    entry, bbox = root / "Data_Entry_2017.csv", root / "BBox_List_2017.csv"
    entry.write_text("\n".join(entry_lines) + "\n", encoding="utf-8")
    bbox.write_text("\n".join(box_lines) + "\n", encoding="utf-8")
    return PhantomSet(root, root / "images", entry, bbox, size, len(specs), len({s.patient for s in specs}),
                      _ordered(image_counts), _ordered(box_counts))
