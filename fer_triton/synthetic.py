"""Drawn cartoon faces with a chosen expression: SYNTHETIC data for tests, demos and benchmarks.

These are not photographs and say nothing about accuracy on real faces; they exist so that
every code path (reading, serving, retraining) can run on images the project makes itself.
"""

from __future__ import annotations

import numpy as np

from fer_triton.labels import CLASSES


def draw_face(expression: int, size: int = 224, rng: np.random.Generator | None = None) -> np.ndarray:
    """One drawn face, UINT8 RGB [size, size, 3]; ``expression`` is a RAF-DB class index."""
    from PIL import Image, ImageDraw

    if not 0 <= expression < len(CLASSES):
        raise ValueError(f"expression must be a class index 0..{len(CLASSES) - 1}, not {expression}")
    rng = rng or np.random.default_rng()
    s = size / 224.0
    bg = tuple(int(v) for v in rng.integers(40, 200, 3))
    skin = tuple(int(v) for v in rng.integers(150, 240, 1).repeat(3) * np.array([1.0, 0.85, 0.72]))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    jx, jy = rng.normal(0, 4 * s, 2)
    cx, cy = size / 2 + jx, size / 2 + jy
    rx, ry = 70 * s * rng.uniform(0.9, 1.1), 90 * s * rng.uniform(0.9, 1.1)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin, outline=(60, 40, 30), width=max(1, int(2 * s)))

    eye_y, eye_dx = cy - 25 * s, 28 * s
    eye_open = {0: 14, 1: 12, 2: 5, 3: 6, 4: 7, 5: 6, 6: 8}[expression] * s
    brow_tilt = {0: -8, 1: -6, 2: 4, 3: 0, 4: -6, 5: 9, 6: 0}[expression] * s
    for side in (-1, 1):
        ex = cx + side * eye_dx
        d.ellipse([ex - 10 * s, eye_y - eye_open / 2, ex + 10 * s, eye_y + eye_open / 2], fill=(255, 255, 255),
                  outline=(20, 20, 20))
        d.ellipse([ex - 4 * s, eye_y - 4 * s, ex + 4 * s, eye_y + 4 * s], fill=(30, 20, 10))
        by = eye_y - 18 * s
        d.line([ex - 12 * s, by + side * brow_tilt * -1 if expression in (5, 2) else by - brow_tilt,
                ex + 12 * s, by + side * brow_tilt if expression in (5, 2) else by + brow_tilt],
               fill=(40, 25, 15), width=max(1, int(4 * s)))

    my, mw = cy + 40 * s, 30 * s
    if expression == 0:      # Surprise: open round mouth
        d.ellipse([cx - 12 * s, my - 16 * s, cx + 12 * s, my + 16 * s], fill=(90, 20, 20))
    elif expression == 1:    # Fear: wide open, stretched
        d.ellipse([cx - mw, my - 8 * s, cx + mw, my + 10 * s], fill=(90, 20, 20))
    elif expression == 2:    # Disgust: asymmetric sneer
        d.line([cx - mw, my + 4 * s, cx, my - 4 * s, cx + mw, my + 8 * s], fill=(120, 30, 30), width=max(1, int(4 * s)))
    elif expression == 3:    # Happy: smile
        d.arc([cx - mw, my - 25 * s, cx + mw, my + 15 * s], 20, 160, fill=(120, 30, 30), width=max(1, int(5 * s)))
    elif expression == 4:    # Sad: frown
        d.arc([cx - mw, my, cx + mw, my + 35 * s], 200, 340, fill=(120, 30, 30), width=max(1, int(5 * s)))
    elif expression == 5:    # Angry: tight line, teeth
        d.rectangle([cx - mw, my - 4 * s, cx + mw, my + 6 * s], fill=(240, 240, 240), outline=(120, 30, 30))
    else:                    # Neutral: straight line
        d.line([cx - mw, my, cx + mw, my], fill=(120, 30, 30), width=max(1, int(4 * s)))
    return np.asarray(img, dtype=np.uint8)


def draw_faces(n: int, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` drawn faces cycling through the classes: (faces UINT8 [n,size,size,3], labels [n])."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    return np.stack([draw_face(int(c), size, rng) for c in labels]), labels
