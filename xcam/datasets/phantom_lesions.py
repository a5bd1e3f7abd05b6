"""Alternative lesion renderings for phantom styles (the classic ones are in :mod:`.phantom`).

Every drawer has the classic drawers' contract: ``(canvas, rng) -> [Lesion]``; it changes the
attenuation layers of the canvas (never final pixels) and returns the tight box of the pixels it
changed by more than 10 % of its peak. Cardiomegaly renderings instead change the anatomy before it
is drawn (``(anatomy, rng) -> anatomy``), and the box is the drawn heart, as in the classic style.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import cv2
import numpy as np

from xcam.datasets.phantom import (
    _ONE,
    _SHIFT,
    FIELD_OF_VIEW_MM,
    Anatomy,
    Canvas,
    Lesion,
    _apply,
    _blob,
    _blur,
    _box_of,
    _count,
    _crop,
    pleural_gap,
    _diaphragm,
    _draw_atelectasis,
    _draw_effusion,
    _draw_infiltration,
    _draw_mass,
    _draw_nodule,
    _draw_pneumothorax,
    _enlarge_heart,
    _lateral_curve,
    _sample_in_lung,
    _smooth_noise,
    _smoothstep,
)

Box = tuple[float, float, float, float]
Drawer = Callable[[Canvas, np.random.Generator], list[Lesion]]


def _mm(c: Canvas, mm: float) -> float:
    """A length in millimetres (of an NIH-sized field of view) in pixels."""
    return c.frame.px(mm / FIELD_OF_VIEW_MM)


def _local(x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (yy, xx) of a crop."""
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return yy, xx


def _tex(rng: np.random.Generator, shape: tuple[int, int], cell: float, amount: float) -> np.ndarray:
    return np.clip(1 + amount * _smooth_noise(rng, shape, max(2.0, cell)), 0.3, None)


def _several(label: str, one: Callable[[Canvas, np.random.Generator], Box | None],
             probs: list[float]) -> Drawer:
    """A drawer of 1..len(probs) lesions of one kind, each with its own box."""

    def draw(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
        boxes = [one(c, rng) for _ in range(_count(rng, probs))]
        return [Lesion(label, b) for b in boxes if b]

    return draw


# --------------------------------------------------------------------------- nodules


def _sized_nodule(c: Canvas, rng: np.random.Generator) -> Box | None:
    """A solid nodule of 3-30 mm (log-uniform); small ones are fainter, as thinner spheres are."""
    d = math.exp(rng.uniform(math.log(3.0), math.log(30.0)))
    r = max(1.0, _mm(c, d / 2))
    pos = _sample_in_lung(c, rng, r * 1.3 + 1)
    if pos is None:
        return None
    amp = rng.uniform(0.9, 1.1) * (0.08 + 0.1 * min(1.0, d / 25))
    return _blob(c, rng, pos[0], pos[1], r, rng.uniform(0.0, 0.05), amp, 0.2)


def _calcified_nodule(c: Canvas, rng: np.random.Generator) -> Box | None:
    """A small (3-10 mm), very dense, sharp-edged granuloma."""
    r = max(1.0, _mm(c, rng.uniform(3.0, 10.0) / 2))
    pos = _sample_in_lung(c, rng, r * 1.5 + 1)
    if pos is None:
        return None
    x, y, _ = pos
    x0, y0, x1, y1 = _crop(c, x, y, r * 1.3 + 1, r * 1.3 + 1)
    yy, xx = _local(x0, y0, x1, y1)
    disc = _smoothstep((1.0 - np.hypot(xx - x, yy - y) / r) / 0.25 + 0.5)
    delta = rng.uniform(0.25, 0.4) * disc * c.lung_soft[y0:y1, x0:x1]
    return _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))


def _ground_glass_nodule(c: Canvas, rng: np.random.Generator) -> Box | None:
    """A faint subsolid nodule (8-25 mm) with a Gaussian profile, sometimes with a solid core."""
    r = max(1.5, _mm(c, rng.uniform(8.0, 25.0) / 2))
    pos = _sample_in_lung(c, rng, r * 1.2 + 1)
    if pos is None:
        return None
    x, y, _ = pos
    x0, y0, x1, y1 = _crop(c, x, y, r * 1.6, r * 1.6)
    yy, xx = _local(x0, y0, x1, y1)
    rr = np.hypot(xx - x, yy - y) / r
    profile = np.exp(-2.5 * rr**2) * _tex(rng, rr.shape, r / 3, 0.4)
    if rng.random() < 0.4:  # part-solid
        profile = profile + 1.5 * _smoothstep((0.35 - rr) / 0.1 + 0.5)
    delta = rng.uniform(0.04, 0.07) * profile * c.lung_soft[y0:y1, x0:x1]
    return _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))


# --------------------------------------------------------------------------- masses


def _lobulated(rng: np.random.Generator, theta: np.ndarray, lobes: float) -> np.ndarray:
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += lobes * rng.uniform(0.3, 1.0) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return radius


def _draw_spiculated_mass(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """A mass with spicules radiating from its border into the lung."""
    r = max(5.0, c.frame.px(rng.uniform(0.03, 0.055)))
    reach = rng.uniform(1.5, 2.0)
    pos = _sample_in_lung(c, rng, r * 1.05)
    if pos is None:
        return []
    x, y, _ = pos
    x0, y0, x1, y1 = _crop(c, x, y, r * reach + 1, r * reach + 1)
    yy, xx = _local(x0, y0, x1, y1)
    dx, dy = xx - x, yy - y
    rr = np.hypot(dx, dy) / (r * _lobulated(rng, np.arctan2(dy, dx), rng.uniform(0.04, 0.1)))
    core = np.sqrt(np.clip(1 - rr**2, 0, 1)) ** 0.8
    layer = np.zeros(core.shape, np.uint8)
    lines = []
    for ang in rng.uniform(0, 2 * np.pi, int(rng.integers(10, 22))):
        t = np.array([0.7, 0.7 + 0.5 * (reach - 0.7), reach * rng.uniform(0.8, 1.0)])
        wob = np.array([0.0, rng.normal(0, 0.12), rng.normal(0, 0.2)])
        px = x - x0 + r * t * np.cos(ang + wob)
        py = y - y0 + r * t * np.sin(ang + wob)
        lines.append(np.round(np.stack([px, py], -1) * _ONE).astype(np.int32).reshape(-1, 1, 2))
    cv2.polylines(layer, lines, False, 255, max(1, int(round(c.frame.px(0.0025)))), cv2.LINE_AA, _SHIFT)
    spic = _blur(layer, max(0.5, r * 0.04)).astype(np.float32) * (1.0 / 255)
    shape = np.maximum(core, 0.55 * spic * np.clip(1.4 - np.hypot(dx, dy) / (r * reach), 0, 1))
    delta = rng.uniform(0.13, 0.2) * shape * _tex(rng, shape.shape, r / 2.5, 0.3) * c.lung_soft[y0:y1, x0:x1]
    box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
    return [Lesion("Mass", box)] if box else []


def _draw_cavitary_mass(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """A thick-walled mass with a central lucency, sometimes with an air-fluid level."""
    r = max(5.0, c.frame.px(rng.uniform(0.035, 0.06)))
    pos = _sample_in_lung(c, rng, r * 1.05)
    if pos is None:
        return []
    x, y, _ = pos
    x0, y0, x1, y1 = _crop(c, x, y, r * 1.3, r * 1.3)
    yy, xx = _local(x0, y0, x1, y1)
    dx, dy = xx - x, yy - y
    rr = np.hypot(dx, dy) / (r * _lobulated(rng, np.arctan2(dy, dx), rng.uniform(0.03, 0.08)))
    profile = np.sqrt(np.clip(1 - rr**2, 0, 1)) ** 0.6
    ox, oy = rng.normal(0, 0.12 * r, 2)
    rc = rng.uniform(0.4, 0.6) * r
    cavity = _smoothstep((1 - np.hypot(dx - ox, dy - oy) / rc) / 0.2 + 0.5)
    if rng.random() < 0.5:  # fluid fills the lower part of the cavity, with a flat level
        cavity *= _smoothstep((y + oy + rng.uniform(-0.2, 0.4) * rc - yy) / 1.5 + 0.5)
    delta = rng.uniform(0.14, 0.2) * profile * (1 - 0.9 * cavity) * c.lung_soft[y0:y1, x0:x1]
    box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
    return [Lesion("Mass", box)] if box else []


def _draw_irregular_mass(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Several merged lobes with a ragged border."""
    r = max(5.0, c.frame.px(rng.uniform(0.03, 0.05)))
    pos = _sample_in_lung(c, rng, r * 1.3)
    if pos is None:
        return []
    x, y, _ = pos
    x0, y0, x1, y1 = _crop(c, x, y, r * 2.0, r * 2.0)
    yy, xx = _local(x0, y0, x1, y1)
    field = np.full(xx.shape, -1.0, np.float32)
    for k in range(int(rng.integers(3, 6))):
        ox, oy = (0.0, 0.0) if k == 0 else rng.normal(0, 0.55 * r, 2)
        ri = r * (1.0 if k == 0 else rng.uniform(0.45, 0.8))
        field = np.maximum(field, 1 - ((xx - x - ox) ** 2 + (yy - y - oy) ** 2) / ri**2)
    ragged = field + 0.3 * _smooth_noise(rng, field.shape, max(1.5, r / 6))
    shape = _smoothstep(ragged / 0.25) * (0.6 + 0.4 * np.clip(field, 0, 1))
    delta = rng.uniform(0.13, 0.2) * shape * _tex(rng, shape.shape, r / 2.5, 0.3) * c.lung_soft[y0:y1, x0:x1]
    box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
    return [Lesion("Mass", box)] if box else []


# --------------------------------------------------------------------------- effusion


def _fluid(c: Canvas, side: int, fluid: np.ndarray, crop: tuple[int, int, int, int], keep_vessels: float,
           least: float) -> list[Lesion]:
    """Replace lung air by ``fluid`` (0..1) in a crop, as the classic effusion does."""
    if not (fluid > least).any():
        return []
    x0, y0, x1, y1 = crop
    a = c.anatomy
    lung = c.lung[y0:y1, x0:x1]
    removed = 0.95 * fluid * lung
    delta = a.soft_k * a.air_k * c.body[y0:y1, x0:x1] * removed + 0.05 * fluid
    lung -= removed
    c.vessel[y0:y1, x0:x1] *= 1 - (1 - keep_vessels) * fluid
    c.dense[y0:y1, x0:x1] += 0.05 * fluid
    c.occupied[y0:y1, x0:x1] |= (fluid > 0.05).astype(np.uint8)
    box = _box_of(delta, x0, y0)
    return [Lesion("Effusion", box)] if box else []


def _base_grid(c: Canvas, side: int) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray, float]:
    """Crop, anatomical grid, envelope (0..1) and costophrenic level of one hemithorax."""
    a = c.anatomy
    crop = c.env_box[side]
    U, V = c.frame.grid(*crop)
    env = c.env[side][crop[1]:crop[3], crop[0]:crop[2]].astype(np.float32) * (1.0 / 255)
    return crop, U, V, env, a.cp_v + (a.left_drop if side > 0 else 0.0)


def _sides(rng: np.random.Generator, both: float) -> list[int]:
    return [-1, 1] if rng.random() < both else [int(rng.choice([-1, 1]))]


def _draw_meniscus_effusion(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Fluid whose surface climbs steeply along the lateral chest wall (a tall meniscus)."""
    out = []
    for side in _sides(rng, 0.15):
        crop, U, V, env, cp = _base_grid(c, side)
        a = c.anatomy
        t = np.clip((np.abs(U) - a.medial_u) / (a.lung_w - a.medial_u), 0, 1)
        level = cp - rng.uniform(0.04, 0.14) - rng.uniform(0.08, 0.2) * t ** rng.uniform(4, 8)
        out += _fluid(c, side, _smoothstep((V - level) / 0.02 + 0.5) * env, crop, 0.0, 0.5)
    return out


def _draw_layering_effusion(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Supine: fluid layers behind the lung, a veil that thickens towards the base, no level."""
    out = []
    for side in _sides(rng, 0.35):
        crop, U, V, env, cp = _base_grid(c, side)
        top = cp - rng.uniform(0.25, 0.45)
        fluid = rng.uniform(0.45, 0.75) * _smoothstep((V - top) / (cp - top)) ** 1.2 * env
        out += _fluid(c, side, fluid, crop, 0.7, 0.3)
    return out


def _draw_subpulmonic_effusion(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Fluid under the lung: an apparently raised hemidiaphragm whose peak lies laterally."""
    out = []
    for side in _sides(rng, 0.1):
        crop, U, V, env, cp = _base_grid(c, side)
        a = c.anatomy
        t = np.clip((np.abs(U) - a.medial_u) / (a.lung_w - a.medial_u), 0, 1)
        lift = rng.uniform(0.035, 0.07) * np.exp(-(((t - rng.uniform(0.55, 0.8)) / 0.35) ** 2))
        pseudo = _diaphragm(a, U) - lift
        out += _fluid(c, side, _smoothstep((V - pseudo) / 0.012 + 0.5) * env, crop, 0.0, 0.5)
    return out


# --------------------------------------------------------------------------- pneumothorax


def _air_gap(c: Canvas, side: int, wall_u: np.ndarray, wall_v: np.ndarray,
             depth: Callable[[np.ndarray, np.ndarray], np.ndarray], line_k: float) -> list[Lesion]:
    """Air between a stretch of chest wall and the lung edge, ``depth(U, V)`` px deep, with no
    vessel markings and a thin pleural line (the classic pneumothorax, with any wall and depth)."""
    x0, y0, x1, y1 = c.env_box[side]
    U, V = c.frame.grid(x0, y0, x1, y1)
    env = c.env[side][y0:y1, x0:x1]
    wall = np.full(env.shape, 255, np.uint8)
    wx, wy = c.frame.to_px(side * wall_u, wall_v)
    pts = np.round(np.stack([wx - x0, wy - y0], -1) * _ONE).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(wall, [pts], False, 0, 1, cv2.LINE_8, _SHIFT)
    return pleural_gap(c, wall, depth(U, V), env, (x0, y0, x1, y1), line_k)


def _draw_band_pneumothorax(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """A lucent band of even width along the lateral wall (mid or lower zone), below the apex."""
    a, side = c.anatomy, int(rng.choice([-1, 1]))
    cp = a.cp_v + (a.left_drop if side > 0 else 0.0)
    v0 = rng.uniform(0.2, 0.4)
    v1 = min(cp - 0.06, v0 + rng.uniform(0.2, 0.35))
    lu, lv = _lateral_curve(a, side)
    keep = (lv > v0 - 0.06) & (lv < v1 + 0.06) & (lu > 0.2)
    px = c.frame.px(rng.uniform(0.018, 0.04))

    def depth(U: np.ndarray, V: np.ndarray) -> np.ndarray:
        return px * _smoothstep((V - v0) / 0.05) * _smoothstep((v1 - V) / 0.05)

    return _air_gap(c, side, lu[keep], lv[keep], depth, rng.uniform(0.06, 0.1))


def _draw_large_pneumothorax(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """A large pneumothorax: the lung has fallen away from the whole apical and lateral wall."""
    a, side = c.anatomy, int(rng.choice([-1, 1]))
    cp = a.cp_v + (a.left_drop if side > 0 else 0.0)
    lu, lv = _lateral_curve(a, side)
    keep = lu >= 0.05
    px = c.frame.px(rng.uniform(0.07, 0.12))

    def depth(U: np.ndarray, V: np.ndarray) -> np.ndarray:
        taper = 0.55 + 0.45 * np.clip((cp - V) / (cp - a.apex_v), 0, 1)
        return px * taper * _smoothstep((cp - 0.02 - V) / 0.06)

    return _air_gap(c, side, lu[keep], lv[keep], depth, rng.uniform(0.08, 0.12))


def _draw_deep_sulcus_pneumothorax(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Supine: air collects anteriorly at the base, a deep lucent costophrenic sulcus."""
    a, side = c.anatomy, int(rng.choice([-1, 1]))
    cp = a.cp_v + (a.left_drop if side > 0 else 0.0)
    lu, lv = _lateral_curve(a, side)
    keep = lv > cp - 0.25
    du = np.linspace(a.lung_w, 0.17, 16)
    wall_u = np.concatenate([lu[keep], du])
    wall_v = np.concatenate([lv[keep], _diaphragm(a, side * du)])
    px = c.frame.px(rng.uniform(0.02, 0.04))
    top = cp - rng.uniform(0.15, 0.22)

    def depth(U: np.ndarray, V: np.ndarray) -> np.ndarray:
        return px * _smoothstep((V - top) / 0.08) * _smoothstep((np.abs(U) - 0.2) / 0.05)

    return _air_gap(c, side, wall_u, wall_v, depth, rng.uniform(0.04, 0.08))


# --------------------------------------------------------------------------- atelectasis


def _draw_linear_atelectasis(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Discoid (plate) atelectasis: 1-3 thin, long, nearly horizontal parallel lines."""
    length = c.frame.px(rng.uniform(0.09, 0.18))
    pos = _sample_in_lung(c, rng, 0.3 * length, v_range=(0.45, c.anatomy.cp_v - 0.03))
    if pos is None:
        return []
    x, y, _ = pos
    x0, y0, x1, y1 = _crop(c, x, y, length * 0.6, length * 0.6)
    layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
    ang = c.anatomy.angle + rng.uniform(-0.25, 0.25)
    n = _count(rng, [0.5, 0.35, 0.15])
    gap = c.frame.px(rng.uniform(0.012, 0.025))
    for k in range(n):
        off = (k - (n - 1) / 2) * gap
        cx, cy = x - x0 - off * math.sin(ang), y - y0 + off * math.cos(ang)
        half = length / 2 * rng.uniform(0.6, 1.0)
        thick = max(0.6, c.frame.px(rng.uniform(0.004, 0.008)) / 2)
        center = (int(round(cx * _ONE)), int(round(cy * _ONE)))
        cv2.ellipse(layer, center, (int(round(half * _ONE)), int(round(thick * _ONE))), math.degrees(ang),
                    0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    shape = _blur(layer, max(0.5, c.frame.px(0.002))).astype(np.float32) * (1.0 / 255)
    delta = rng.uniform(0.14, 0.22) * shape * _tex(rng, shape.shape, length / 10, 0.2) * c.lung_soft[y0:y1, x0:x1]
    box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
    return [Lesion("Atelectasis", box)] if box else []


def _draw_lobar_atelectasis(c: Canvas, rng: np.random.Generator) -> list[Lesion]:
    """Lobar collapse: a triangle from the hilum to the medial diaphragm (lower lobe, often behind
    the heart) or to the apex (upper lobe)."""
    a, side = c.anatomy, int(rng.choice([-1, 1]))
    hu, hv = side * rng.uniform(0.08, 0.11), a.heart_v - 0.14
    if rng.random() < 0.65:
        bu = side * np.linspace(a.medial_u + 0.005, rng.uniform(0.16, 0.24), 12)
        poly_u, poly_v = np.concatenate([[hu], bu]), np.concatenate([[hv], _diaphragm(a, bu) + 0.01])
    else:
        reach = rng.uniform(0.2, 0.3)
        poly_u = np.array([hu, side * (a.medial_u + 0.01), side * 0.12, side * reach])
        poly_v = np.array([hv, a.apex_v + 0.06, a.apex_v, a.apex_v + 0.04])
    x0, y0, x1, y1 = c.env_box[side]
    layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = c.frame.pts(poly_u, poly_v) - np.array([x0 * _ONE, y0 * _ONE], np.int32)
    cv2.fillPoly(layer, [pts], 255, cv2.LINE_AA, _SHIFT)
    env = c.env[side][y0:y1, x0:x1].astype(np.float32) * (1.0 / 255)
    shape = _blur(layer, max(0.5, c.frame.px(0.006))).astype(np.float32) * (1.0 / 255) * env
    delta = rng.uniform(0.1, 0.16) * shape * _tex(rng, shape.shape, c.frame.px(0.02), 0.2)
    if not (shape > 0.5).any():
        return []
    box = _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))
    return [Lesion("Atelectasis", box)] if box else []


# --------------------------------------------------------------------------- infiltration


def _region(c: Canvas, rng: np.random.Generator) -> tuple[float, float, float, float, tuple[int, int, int, int]] | None:
    rx, ry = c.frame.px(rng.uniform(0.05, 0.09)), c.frame.px(rng.uniform(0.05, 0.09))
    pos = _sample_in_lung(c, rng, 0.6 * min(rx, ry), v_range=(0.25, 0.75))
    if pos is None:
        return None
    return pos[0], pos[1], rx, ry, _crop(c, pos[0], pos[1], rx, ry)


def _consolidation(c: Canvas, rng: np.random.Generator) -> Box | None:
    """Dense, fairly homogeneous airspace opacity with air bronchograms."""
    reg = _region(c, rng)
    if reg is None:
        return None
    x, y, rx, ry, (x0, y0, x1, y1) = reg
    yy, xx = _local(x0, y0, x1, y1)
    d2 = ((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2
    shape = _smoothstep((1 - d2 + 0.35 * _smooth_noise(rng, d2.shape, max(2.0, min(rx, ry) / 3))) / 0.2)
    layer = np.zeros(d2.shape, np.uint8)
    hx, hy = c.frame.to_px(np.array([0.0]), np.array([c.anatomy.heart_v - 0.15]))
    toward = math.atan2(float(hy[0]) - y, float(hx[0]) - x)
    paths = []
    for _ in range(int(rng.integers(2, 5))):
        p = np.array([x - x0, y - y0]) + rng.normal(0, 0.3, 2) * [rx, ry]
        ang, pts = toward + math.pi + rng.normal(0, 0.5), [p]
        for _ in range(4):
            ang += rng.normal(0, 0.3)
            p = p + 0.25 * min(rx, ry) * np.array([math.cos(ang), math.sin(ang)])
            pts.append(p)
        paths.append(np.round(np.array(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2))
    cv2.polylines(layer, paths, False, 255, max(1, int(round(c.frame.px(0.003)))), cv2.LINE_AA, _SHIFT)
    bronchi = _blur(layer, 0.6).astype(np.float32) * (1.0 / 255)
    delta = rng.uniform(0.14, 0.2) * shape * (1 - 0.65 * bronchi) * c.lung_soft[y0:y1, x0:x1]
    return _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))


def _reticular(c: Canvas, rng: np.random.Generator) -> Box | None:
    """Interstitial opacity: a network of fine lines in a region."""
    reg = _region(c, rng)
    if reg is None:
        return None
    x, y, rx, ry, (x0, y0, x1, y1) = reg
    yy, xx = _local(x0, y0, x1, y1)
    d2 = ((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2
    net = np.exp(-((_smooth_noise(rng, d2.shape, max(2.0, min(rx, ry) / 5)) / 0.15) ** 2))
    delta = rng.uniform(0.12, 0.18) * _smoothstep((1 - d2) / 0.5) * (0.25 + 0.75 * net) * c.lung_soft[y0:y1, x0:x1]
    return _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))


def _nodular(c: Canvas, rng: np.random.Generator) -> Box | None:
    """Many small (1.5-3.5 mm) nodular opacities scattered over a region, with a faint haze."""
    reg = _region(c, rng)
    if reg is None:
        return None
    x, y, rx, ry, (x0, y0, x1, y1) = reg
    yy, xx = _local(x0, y0, x1, y1)
    d2 = ((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2
    layer = np.zeros(d2.shape, np.uint8)
    k = int(rng.integers(15, 40))
    rad, ang = np.sqrt(rng.random(k)), rng.uniform(0, 2 * np.pi, k)
    dots = np.stack([x - x0 + rx * rad * np.cos(ang), y - y0 + ry * rad * np.sin(ang)], -1)
    for (px, py), r in zip(dots, np.maximum(0.7, c.frame.px(1.0) * rng.uniform(0.002, 0.005, k))):
        cv2.circle(layer, (int(round(px * _ONE)), int(round(py * _ONE))), int(round(r * _ONE)), 255, -1,
                   cv2.LINE_AA, _SHIFT)
    spots = _blur(layer, 0.7).astype(np.float32) * (1.0 / 255)
    delta = (rng.uniform(0.15, 0.25) * spots + 0.02 * _smoothstep((1 - d2) / 0.5)) * c.lung_soft[y0:y1, x0:x1]
    return _apply(c, delta.astype(np.float32), (x0, y0, x1, y1))


# --------------------------------------------------------------------------- cardiomegaly


def _globular_heart(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """A globular ("water-bottle") heart: enlarged to both sides, rounder and more upright."""
    return replace(a, heart_a=a.heart_a * rng.uniform(1.3, 1.45), heart_b=a.heart_b * rng.uniform(1.2, 1.35),
                   heart_tilt=a.heart_tilt * rng.uniform(0.3, 0.6), heart_u=a.heart_u + rng.uniform(0.0, 0.012))


def _left_ventricular_heart(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Left-ventricular enlargement: a longer heart, its apex turned down and to the patient's left
    (``heart_v`` stays: the hila hang from it)."""
    return replace(a, heart_a=a.heart_a * rng.uniform(1.25, 1.4), heart_b=a.heart_b * rng.uniform(1.05, 1.15),
                   heart_tilt=a.heart_tilt + rng.uniform(0.15, 0.3), heart_u=a.heart_u + rng.uniform(0.03, 0.05))


# --------------------------------------------------------------------------- registry

RENDERINGS: dict[str, dict[str, Drawer]] = {
    "Nodule": {
        "classic": _draw_nodule,
        "sized": _several("Nodule", _sized_nodule, [0.65, 0.25, 0.10]),
        "calcified": _several("Nodule", _calcified_nodule, [0.6, 0.3, 0.1]),
        "ground-glass": _several("Nodule", _ground_glass_nodule, [0.75, 0.25]),
    },
    "Mass": {"classic": _draw_mass, "spiculated": _draw_spiculated_mass, "cavitary": _draw_cavitary_mass,
             "irregular": _draw_irregular_mass},
    "Effusion": {"classic": _draw_effusion, "meniscus": _draw_meniscus_effusion,
                 "layering": _draw_layering_effusion, "subpulmonic": _draw_subpulmonic_effusion},
    "Pneumothorax": {"classic": _draw_pneumothorax, "band": _draw_band_pneumothorax,
                     "large": _draw_large_pneumothorax, "deep-sulcus": _draw_deep_sulcus_pneumothorax},
    "Atelectasis": {"classic": _draw_atelectasis, "linear": _draw_linear_atelectasis,
                    "lobar": _draw_lobar_atelectasis},
    "Infiltration": {
        "classic": _draw_infiltration,
        "consolidation": _several("Infiltration", _consolidation, [0.75, 0.25]),
        "reticular": _several("Infiltration", _reticular, [0.8, 0.2]),
        "nodular": _several("Infiltration", _nodular, [0.85, 0.15]),
    },
}
HEARTS: dict[str, Callable[[Anatomy, np.random.Generator], Anatomy]] = {
    "classic": _enlarge_heart, "globular": _globular_heart, "left-ventricular": _left_ventricular_heart,
}
