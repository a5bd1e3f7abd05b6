"""Rendering a phantom in a named style (``varied``, ``portable``, ``alt``, or a custom :class:`Style`).

The pipeline is the classic one (:func:`xcam.datasets.phantom.render_phantom`) with four hooks:
the patient's habitus, the acquisition (rotation, scale, position, exposure, contrast, gamma,
noise, blur, inspiration, AP magnification), the rendering of each finding, and distractors plus
display processing. Style randomness comes from its own streams, so the classic streams are drawn
exactly as before: habitus from ``[seed, 4, patient]`` (shared by a patient's follow-ups),
acquisition, devices and processing from ``[seed, 3, index]`` and each class's rendering from
``[seed, 5, index, class]`` (so toggling one finding changes nothing else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable

import cv2
import numpy as np

from xcam.datasets.phantom import (
    CLASSES,
    LESION_DRAWERS,
    Anatomy,
    Lesion,
    _compose,
    _draw_anatomy,
    _heart_box,
    _image_anatomy,
    _patient_anatomy,
    check_findings,
)
from xcam.datasets.phantom_distractors import Distractor, draw_devices, post_process
from xcam.datasets.phantom_lesions import HEARTS, RENDERINGS
from xcam.datasets.phantom_styles import Style, get_style


@dataclass(frozen=True)
class StyledImage:
    """One rendered image: pixels (uint8), lesions (with their rendering) and distractors."""

    image: np.ndarray
    lesions: list[Lesion]
    distractors: list[Distractor]


def _habitus(a: Anatomy, style: Style, rng: np.random.Generator) -> Anatomy:
    """Thin (hyperinflated, narrow heart, little soft tissue), average, or broad (much soft tissue,
    high diaphragm, wider heart)."""
    names = list(style.habitus)
    p = np.array([style.habitus[k] for k in names], np.float64)
    kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    u = rng.uniform
    if kind == "thin":
        return replace(a, body_w=a.body_w - u(0.03, 0.06), soft_k=a.soft_k * u(0.75, 0.88),
                       lung_w=a.lung_w + u(0.0, 0.015), apex_v=a.apex_v - u(0.0, 0.015), cp_v=a.cp_v + u(0.01, 0.04),
                       dome_v=a.dome_v + u(0.02, 0.05), heart_a=a.heart_a * u(0.88, 0.96))
    if kind == "broad":
        return replace(a, body_w=a.body_w + u(0.04, 0.09), soft_k=a.soft_k * u(1.15, 1.35),
                       cp_v=a.cp_v - u(0.01, 0.03), dome_v=a.dome_v - u(0.02, 0.04), heart_a=a.heart_a * u(1.02, 1.08))
    return a


def _acquire(a: Anatomy, style: Style, rng: np.random.Generator) -> Anatomy:
    """The style's acquisition of one image, in place of the classic ranges."""
    u = rng.uniform
    breath, mag = u(*style.breath), u(*style.heart_mag)
    return replace(
        a, cx=0.5 + u(-style.shift, style.shift), cy=0.52 + u(-style.shift, style.shift), scale=u(*style.scale),
        angle=math.radians(u(-style.angle_deg, style.angle_deg)), cp_v=a.cp_v - breath, dome_v=a.dome_v - breath,
        heart_a=a.heart_a * mag, heart_b=a.heart_b * math.sqrt(mag), expo_k=u(*style.expo),
        contrast=u(*style.contrast), bias=u(*style.bias), gamma=u(*style.gamma), noise=u(*style.noise),
        blur=u(*style.blur),
    )


def pick_rendering(style: Style, label: str, seed: int, index: int) -> str:
    """The rendering of ``label`` in image ``index`` (its own stream: independent of other findings)."""
    choices = style.renderings.get(label) or {"classic": 1.0}
    names = list(choices)
    p = np.array([choices[k] for k in names], np.float64)
    rng = np.random.default_rng([seed, 5, index, CLASSES.index(label)])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def render_styled(findings: Iterable[str] = (), size: int = 1024, seed: int = 0, index: int = 0, patient: int = 1,
                  gender: str = "M", style: str | Style = "varied") -> StyledImage:
    """Render one radiograph in ``style``; same arguments and determinism as ``render_phantom``."""
    style = get_style(style)
    wanted = check_findings(findings)
    base = _patient_anatomy(np.random.default_rng([seed, 1, patient]), gender)
    base = _habitus(base, style, np.random.default_rng([seed, 4, patient]))
    r_anat, r_les, r_noise = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2, index]).spawn(3))
    r_acq, r_dev, r_post = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 3, index]).spawn(3))
    anatomy = _acquire(_image_anatomy(base, r_anat), style, r_acq)
    chosen = {label: pick_rendering(style, label, seed, index) for label in wanted}
    if "Cardiomegaly" in wanted:
        anatomy = HEARTS[chosen["Cardiomegaly"]](anatomy, r_les)
    canvas = _draw_anatomy(anatomy, size, r_anat)
    lesions = _heart_box(canvas) if "Cardiomegaly" in wanted else []
    for label in LESION_DRAWERS:
        if label in wanted:
            lesions += RENDERINGS[label][chosen[label]](canvas, r_les)
    lesions = [replace(les, rendering=chosen[les.label]) for les in lesions]
    devices = draw_devices(canvas, style, r_dev)
    img, burned = post_process(_compose(canvas, r_noise), style, r_post)
    return StyledImage(img, lesions, devices + burned)


def style_montage(style: str | Style, size: int = 256, seed: int = 0, cols: int = 2, rows: int = 2) -> np.ndarray:
    """A BGR grid of ``cols x rows`` images of a style, lesion boxes in green with their label and
    rendering, distractor boxes dotted in orange (for documentation)."""
    findings = [("Nodule", "Pneumothorax"), ("Mass", "Effusion"), ("Cardiomegaly", "Atelectasis"),
                ("Infiltration", "Nodule")]
    tiles = []
    for i in range(cols * rows):
        r = render_styled(findings[i % len(findings)], size, seed, i, patient=i + 1,
                          gender="MF"[i % 2], style=style)
        tile = cv2.cvtColor(r.image, cv2.COLOR_GRAY2BGR)
        for d in r.distractors:
            x, y, w, h = (int(round(v)) for v in d.box)
            for j in range(0, 2 * (w + h), 6):  # dotted outline
                px, py = (x + min(j, w), y) if j < w else (x + w, y + j - w) if j < w + h else \
                    (x + w - (j - w - h), y + h) if j < 2 * w + h else (x, y + h - (j - 2 * w - h))
                cv2.circle(tile, (px, py), 0, (0, 140, 255), -1)
        for les in r.lesions:
            x, y, w, h = (int(round(v)) for v in les.box)
            cv2.rectangle(tile, (x, y), (x + w - 1, y + h - 1), (0, 220, 0), 1)
            cv2.putText(tile, f"{les.label[:4]} {les.rendering}", (x, max(8, y - 2)), cv2.FONT_HERSHEY_PLAIN,
                        0.7, (0, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    grid = [np.hstack(tiles[r * cols:(r + 1) * cols]) for r in range(rows)]
    return np.vstack(grid)
