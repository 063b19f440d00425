"""Drawn cartoon faces with a chosen expression: SYNTHETIC data for tests, demos and benchmarks.

These are not photographs and say nothing about accuracy on real faces; they exist so that
every code path (reading, serving, retraining) can run on images the project makes itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_triton.labels import CLASSES


def draw_face(expression: int, size: int = 224, rng: np.random.Generator | None = None,
              background: tuple[int, int, int] | None = None) -> np.ndarray:
    """One drawn face, UINT8 RGB [size, size, 3]; ``expression`` is a RAF-DB class index.

    ``background``: a fixed RGB backdrop (one room/camera); random per face when None.
    """
    from PIL import Image, ImageDraw

    if not 0 <= expression < len(CLASSES):
        raise ValueError(f"expression must be a class index 0..{len(CLASSES) - 1}, not {expression}")
    rng = rng or np.random.default_rng()
    s = size / 224.0
    bg = tuple(int(v) for v in rng.integers(40, 200, 3))  # drawn even when fixed: same faces either way
    bg = bg if background is None else tuple(background)
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


def draw_faces(n: int, size: int = 224, seed: int = 0,
               background: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` drawn faces cycling through the classes: (faces UINT8 [n,size,size,3], labels [n])."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    return np.stack([draw_face(int(c), size, rng, background) for c in labels]), labels


# -- synthetic SITES: drawn faces as another camera/room would see them ----------------------------

@dataclass(frozen=True)
class SiteShift:
    """How a SYNTHETIC site's images differ from the plain drawn faces (1.0 / 0.0 = no change).

    brightness multiplies every pixel (a darker or brighter room); colour_cast multiplies the R, G, B
    channels (a tinted light or white balance); blur is a Gaussian radius in pixels (focus, motion);
    noise is the std of additive Gaussian sensor noise in 0..255 units.
    """

    brightness: float = 1.0
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0
    noise: float = 0.0

    def __post_init__(self):
        if self.brightness <= 0:
            raise ValueError(f"brightness must be > 0, not {self.brightness}")
        if len(self.colour_cast) != 3 or min(self.colour_cast) < 0:
            raise ValueError(f"colour_cast must be three factors >= 0 (R, G, B), not {self.colour_cast}")
        if self.blur < 0 or self.noise < 0:
            raise ValueError(f"blur and noise must be >= 0, not blur={self.blur}, noise={self.noise}")

    @property
    def is_identity(self) -> bool:
        return self == SiteShift()

    def apply(self, faces: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Shift UINT8 faces [B,H,W,3] (or one [H,W,3]) the way this site's camera would."""
        from PIL import Image, ImageFilter

        rng = rng or np.random.default_rng()
        single = faces.ndim == 3
        batch = faces[None] if single else faces
        out = batch.astype(np.float32) * self.brightness * np.asarray(self.colour_cast, np.float32)
        out = np.clip(out, 0, 255)
        if self.blur > 0:  # PIL's Gaussian blur per image, on the already tinted pixels
            out = np.stack([np.asarray(Image.fromarray(f.astype(np.uint8)).filter(ImageFilter.GaussianBlur(self.blur)),
                                       np.float32) for f in out])
        if self.noise > 0:
            out = out + rng.normal(0.0, self.noise, out.shape)
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out[0] if single else out


def draw_site(per_class: int, shift: SiteShift = SiteShift(), size: int = 224, seed: int = 0,
              background: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A SYNTHETIC site: ``per_class`` drawn faces of every class in front of one backdrop (drawn
    from ``seed`` unless given: one room, one camera), seen through ``shift``.

    Returns (faces UINT8 [7*per_class, size, size, 3], labels [7*per_class]), classes interleaved.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, not {per_class}")
    rng = np.random.default_rng(seed + 1)
    backdrop = background if background is not None else tuple(int(v) for v in rng.integers(60, 180, 3))
    faces, labels = draw_faces(per_class * len(CLASSES), size, seed, backdrop)
    return shift.apply(faces, rng), labels


def write_site(root: str | Path, per_class: int, shift: SiteShift = SiteShift(), *, size: int = 224,
               seed: int = 0, background: tuple[int, int, int] | None = None, layout: str = "folders") -> Path:
    """Write a SYNTHETIC site as PNGs: ``layout="folders"`` (root/<Class>/synthetic_*.png) or
    ``"csv"`` (root/images/*.png + root/labels.csv with columns path,label). Returns the data path
    to hand to ``fer-triton retrain --data``.
    """
    from PIL import Image

    if layout not in ("folders", "csv"):
        raise ValueError(f"layout must be 'folders' or 'csv', not {layout!r}")
    root = Path(root)
    faces, labels = draw_site(per_class, shift, size, seed, background)
    rows = []
    for i, (face, label) in enumerate(zip(faces, labels)):
        name = f"synthetic_{CLASSES[label].lower()}_{i:04d}.png"
        folder = root / CLASSES[label] if layout == "folders" else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(folder / name)
        rows.append((f"images/{name}", CLASSES[label]))
    if layout == "folders":
        return root
    csv_path = root / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return csv_path
