"""Things on a radiograph that are not findings: ECG leads, lines and tubes, pacemakers, lead
markers and burned-in text, plus the display processing of a style (heel effect, edge
enhancement, collimation edges).

Devices are radio-opaque, so they are drawn as attenuation into the canvas (after the lesions,
whose boxes are already fixed); burned-in text is written into the final pixels. Each item is
returned as a :class:`Distractor` with its box, kept apart from the lesion boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from xcam.datasets.phantom import Canvas, _blur, _diaphragm, _ellipse_uv, _spline, _strokes
from xcam.datasets.phantom_styles import Style

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Distractor:
    """One drawn non-finding: its kind (see ``DISTRACTOR_KINDS``) and box (x, y, w, h) in pixels."""

    kind: str
    box: tuple[float, float, float, float]


def _commit(c: Canvas, kind: str, layer: np.ndarray, k: float) -> list[Distractor]:
    """Add a drawn uint8 layer as ``k`` attenuation per 255 and return its box."""
    x, y, w, h = cv2.boundingRect(layer)
    if w == 0 or h == 0:
        return []
    c.dense[y:y + h, x:x + w] += layer[y:y + h, x:x + w].astype(np.float32) * np.float32(k / 255)
    return [Distractor(kind, (float(x), float(y), float(w), float(h)))]


def _layer(c: Canvas) -> np.ndarray:
    return np.zeros((c.size, c.size), np.uint8)


def _curve(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    return _spline(points, 10)


def _ecg(c: Canvas, rng: np.random.Generator) -> list[Distractor]:
    """3-5 ECG electrodes (a ring with a snap) with their leads running off the image."""
    spots = [(-0.36, 0.2), (0.36, 0.2), (-0.35, 0.62), (0.35, 0.66), (0.1, 0.74), (-0.15, 0.45), (0.25, 0.45)]
    out = []
    for i in rng.choice(len(spots), int(rng.integers(3, 6)), replace=False):
        u, v = np.array(spots[i]) + rng.normal(0, 0.025, 2)
        layer = _layer(c)
        ring_u, ring_v = _ellipse_uv(u, v, 0.013, 0.013, 0.0, 36)
        _strokes(layer, c.frame, [(ring_u, ring_v)], 0.003, 255, closed=True)
        snap_u, snap_v = _ellipse_uv(u, v, 0.004, 0.004, 0.0, 16)
        cv2.fillPoly(layer, [c.frame.pts(snap_u, snap_v)], 255, cv2.LINE_AA, 4)
        exit_u = math.copysign(0.65, u) if rng.random() < 0.5 else float(rng.uniform(-0.3, 0.3))
        exit_v = float(rng.uniform(0.0, 0.9)) if abs(exit_u) > 0.5 else -0.15
        mid = [(u + (exit_u - u) * t + rng.normal(0, 0.05), v + (exit_v - v) * t + rng.normal(0, 0.05))
               for t in (0.35, 0.7)]
        _strokes(layer, c.frame, [_curve([(u, v), *mid, (exit_u, exit_v)])], 0.0025, 110)
        out += _commit(c, "ecg", layer, 0.55)
    return out


def _line(c: Canvas, rng: np.random.Generator) -> list[Distractor]:
    """1-2 of: a central venous catheter, a nasogastric tube, an endotracheal tube."""
    a = c.anatomy
    out = []
    for kind in rng.choice(["cvc", "ng", "ett"], int(rng.integers(1, 3)), replace=False):
        layer = _layer(c)
        if kind == "cvc":
            s = -1 if rng.random() < 0.7 else 1
            pts = [(s * 0.44, 0.1), (s * 0.3, 0.155), (s * 0.15, 0.19), (-0.04, 0.26),
                   (-0.04 + rng.normal(0, 0.01), rng.uniform(0.33, 0.4))]
            _strokes(layer, c.frame, [_curve(pts)], 0.004, 255)
            k = 0.25
        elif kind == "ng":
            dome = float(_diaphragm(a, np.array([0.14]))[0])
            pts = [(0.005, -0.15), (0.0, 0.2), (0.015, 0.45), (0.04, 0.62), (0.12, dome + 0.07),
                   (0.17 + rng.normal(0, 0.02), dome + 0.1)]
            _strokes(layer, c.frame, [_curve(pts)], 0.005, 255)
            k = 0.25
        else:
            end = 0.33 + 0.5 * (a.apex_v - 0.10) - rng.uniform(0.04, 0.08)
            tube = _curve([(0.0, -0.15), (0.001, 0.1), (0.003, end)])
            _strokes(layer, c.frame, [tube], 0.02, 60)
            _strokes(layer, c.frame, [tube], 0.003, 255)
            k = 0.3
        out += _commit(c, "line", layer, k)
    return out


def _pacemaker(c: Canvas, rng: np.random.Generator) -> list[Distractor]:
    """A pulse generator below a clavicle (usually the patient's left) with 1-2 leads to the heart."""
    a = c.anatomy
    s = 1 if rng.random() < 0.8 else -1
    gu, gv = s * rng.uniform(0.22, 0.3), a.apex_v + rng.uniform(0.06, 0.12)
    layer = _layer(c)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    tilt = rng.uniform(-0.4, 0.4)
    su = 0.06 * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.5  # a rounded rectangle (superellipse)
    sv = 0.045 * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.5
    can_u, can_v = gu + su * math.cos(tilt) - sv * math.sin(tilt), gv + su * math.sin(tilt) + sv * math.cos(tilt)
    cv2.fillPoly(layer, [c.frame.pts(can_u, can_v)], 255, cv2.LINE_AA, 4)
    tips = [(-0.07, a.heart_v - 0.06), (0.13, a.heart_v + 0.07)]  # atrium, ventricular apex (not the heart size)
    leads = []
    for tip in tips if rng.random() < 0.5 else tips[1:]:  # atrial and ventricular, or ventricular only
        pts = [(gu - s * 0.03, gv), (s * 0.16, a.apex_v + 0.12), (-0.035, 0.28), (-0.05, 0.42), tip]
        leads.append(_curve(pts))
    _strokes(layer, c.frame, leads, 0.004, 120)
    return _commit(c, "pacemaker", layer, 0.9)


def _marker(c: Canvas, rng: np.random.Generator) -> list[Distractor]:
    """A lead side marker ("L" or "R"), sometimes in a square, near an upper corner."""
    layer = _layer(c)
    scale = c.size / 256 * rng.uniform(0.5, 0.8)
    thick = max(1, int(round(c.size / 256 * 1.6)))
    letter = str(rng.choice(["L", "R"]))
    (w, h), _ = cv2.getTextSize(letter, _FONT, scale, thick)
    x = int(rng.uniform(0.03, 0.12) * c.size) if rng.random() < 0.5 else int(c.size * rng.uniform(0.88, 0.97)) - w
    y = int(rng.uniform(0.04, 0.12) * c.size) + h
    cv2.putText(layer, letter, (x, y), _FONT, scale, 255, thick, cv2.LINE_AA)
    if rng.random() < 0.5:
        pad = max(2, h // 3)
        cv2.rectangle(layer, (x - pad, y - h - pad), (x + w + pad, y + pad), 255, max(1, thick // 2))
    return _commit(c, "marker", layer, 0.9)


DEVICE_DRAWERS = {"ecg": _ecg, "line": _line, "pacemaker": _pacemaker, "marker": _marker}


def draw_devices(c: Canvas, style: Style, rng: np.random.Generator) -> list[Distractor]:
    """Draw the style's radio-opaque distractors into the canvas; one draw decides each kind."""
    out: list[Distractor] = []
    for kind, draw in DEVICE_DRAWERS.items():
        if rng.random() < style.distractors.get(kind, 0.0):
            out += draw(c, rng)
    return out


def post_process(img: np.ndarray, style: Style, rng: np.random.Generator) -> tuple[np.ndarray, list[Distractor]]:
    """Display processing of the style on the 8-bit image: heel-effect gradient, edge enhancement,
    bright collimation edges and burned-in text (the only distractor returned)."""
    size = img.shape[0]
    f = img.astype(np.float32)
    heel, sharpen = rng.uniform(*style.heel), rng.uniform(*style.sharpen)
    ang = rng.uniform(0, 2 * np.pi)
    if heel > 0:
        ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        f *= 1 + 2 * heel * (math.cos(ang) * ramp[None, :] + math.sin(ang) * ramp[:, None])
    if sharpen > 0:
        f += np.float32(sharpen) * (f - _blur(f, max(1.0, 0.012 * size)))
    if rng.random() < style.collimation:
        value = rng.uniform(200, 245)
        for side, on in enumerate(rng.random(4) < 0.6):
            width = int(rng.uniform(0.005, 0.025) * size) + 1
            if on:
                (f[:width] if side == 0 else f[-width:] if side == 1 else f[:, :width] if side == 2
                 else f[:, -width:])[...] = value
    out: list[Distractor] = []
    if style.text and rng.random() < style.distractors.get("text", 0.0):
        mask = np.zeros((size, size), np.uint8)
        label = str(rng.choice(list(style.text)))
        scale = size / 512 * rng.uniform(0.7, 1.0)
        thick = max(1, int(round(size / 400)))
        (w, h), _ = cv2.getTextSize(label, _FONT, scale, thick)
        x = int(rng.uniform(0.03, 0.06) * size) if rng.random() < 0.5 else size - w - int(0.04 * size)
        y = size - int(rng.uniform(0.03, 0.06) * size) if rng.random() < 0.6 else int(0.05 * size) + h
        cv2.putText(mask, label, (x, y), _FONT, scale, 255, thick, cv2.LINE_AA)
        x0, y0, w0, h0 = cv2.boundingRect(mask)
        if w0 and h0:
            f = np.maximum(f, mask.astype(np.float32) * np.float32(rng.uniform(0.85, 1.0)))
            out.append(Distractor("text", (float(x0), float(y0), float(w0), float(h0))))
    return np.clip(f + 0.5, 0, 255).astype(np.uint8), out
