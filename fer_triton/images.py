"""Read face images of any size and mode into the wire format: UINT8 RGB [H, W, 3]."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageReadError(ValueError):
    """An image file could not be read or decoded; the message names the file."""


def to_wire(image, size: int) -> np.ndarray:
    """A PIL image (any mode) -> UINT8 RGB [size, size, 3], bilinear resize (as training's Resize)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels become black, as an RGB camera frame would have no alpha.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_face(path: str | Path, size: int) -> np.ndarray:
    """Read one face crop from disk; raise ImageReadError naming the file when it is not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return to_wire(ImageOps.exif_transpose(image), size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into image files; keep explicit files as given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            found.append(p)
    return found
