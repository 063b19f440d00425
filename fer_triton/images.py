"""The one image reader of fer-triton: any file Pillow opens -> UINT8 RGB [H, W, 3], or a named error.

Every entry point that reads a still image (``infer``, ``stream`` image sources, ``retrain`` site data,
training datasets, ``demo --faces``) goes through :func:`read_image` / :func:`read_face`, so a file
reads the same everywhere and a bad file fails the same way everywhere: an :class:`ImageReadError`
naming the file, whatever the decoder raised (Pillow's decompression-bomb guard, malformed data, an
unsupported mode, a bug inside a codec). Callers report that one file and go on with the others.

How modes become 8-bit RGB (values kept: scaled to 0..255, never clamped):

=================  ===========================================================================
mode               conversion
=================  ===========================================================================
1, L, P, RGB, HSV, Pillow's own conversion (1 -> 0/255; P through its palette; YCbCr, CMYK and
YCbCr, CMYK, RGBX  HSV through Pillow's colour formulas). Grey levels are copied to R, G and B.
LA, La, PA, RGBA,  composited over black, as an RGB camera without alpha would see the face
RGBa, P+tRNS
I;16, I;16L/B/N    16-bit: ``round(v / 257)`` (65535 -> 255)
I                  32-bit integers: read as 16-bit (``round(v / 257)``) when all values lie in
                   0..65535 (what PNG/PGM/TIFF 16-bit files hold), refused otherwise
F                  32-bit floats: ``round(v * 255)`` when all values lie in 0..1, refused otherwise
LAB                CIE L*a*b* -> sRGB through LittleCMS (``PIL.ImageCms``)
multi-frame        MPO (camera JPEGs with a preview): the primary image, frame 0. Animations and
                   multi-page files (GIF, APNG, WebP, TIFF with more than one frame): refused
other modes        refused, naming the mode
=================  ===========================================================================

EXIF orientation (tag 274, values 1..8) is applied as a photo viewer shows the picture; a value
outside 1..8 or an EXIF block that cannot be parsed leaves the pixels as stored (what viewers do).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# The wire-size resize, shared with the served frames model (numpy + Pillow only).
from fer_triton.export.triton_python.face_crops import to_wire  # noqa: F401 - re-exported

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                  ".pnm", ".mpo"}

DEFAULT_MAX_PIXELS = 64_000_000
"""Images above this many pixels (width x height) are refused before their pixels are decoded.

64 megapixels is above a 50 MP phone photo and an 8K frame (33 MP); Pillow's own guard warns at
89.5 MP and refuses at twice that (``PIL.Image.MAX_IMAGE_PIXELS``). A 1-bit PNG of 14000x14000 pixels
is 24 KB on disk and 196 MB once decoded: a limit on pixels, not bytes, is what protects the host.
"""

_max_pixels = DEFAULT_MAX_PIXELS

# Pillow's alpha modes: composited over black (premultiplied ones are converted to straight first).
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
# Modes Pillow converts to RGB itself without losing range.
_DIRECT_MODES = {"1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK", "HSV"}
_UINT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class ImageReadError(ValueError):
    """An image cannot be read or decoded; the message starts with the file's name and says why."""


def set_max_pixels(limit: int) -> None:
    """Set the process-wide pixel limit that :func:`read_image` applies when not given one.

    ``limit``: width x height, at least 1. Pillow's own decompression-bomb guard is raised to stay
    above it, so that this limit is the one that decides (and names itself in the error).
    Raises ValueError for a limit below 1.
    """
    global _max_pixels
    from PIL import Image

    if limit < 1:
        raise ValueError(f"the pixel limit must be at least 1, not {limit}")
    _max_pixels = int(limit)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < _max_pixels:
        Image.MAX_IMAGE_PIXELS = _max_pixels


def max_pixels() -> int:
    """The process-wide pixel limit (width x height) in force; see :data:`DEFAULT_MAX_PIXELS`."""
    return _max_pixels


def read_image(source: str | Path | bytes, *, name: str | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Read one still image at its own size as UINT8 RGB [H, W, 3] (C-contiguous).

    ``source``: a path, or the encoded file's bytes (JPEG, PNG, ... anything Pillow opens).
    ``name``: what errors call the image (default: the path, or "image bytes").
    ``max_pixels``: refuse images of more pixels than this, checked from the header before the
    pixels are decoded (default: :func:`max_pixels`).
    Mode conversion and EXIF orientation: see the module's docstring.

    Raises ImageReadError (a ValueError) naming the image for every failure: missing file,
    unknown format, truncated or corrupt data, above the pixel limit, a mode or value range that
    cannot be converted without losing values, several frames, or any exception a decoder raises.
    """
    from PIL import Image

    label = name or (str(source) if isinstance(source, (str, Path)) else "image bytes")
    limit = _max_pixels if max_pixels is None else max_pixels
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ImageReadError(f"{label}: no such file")
        opened = lambda: Image.open(source)  # noqa: E731
    else:
        if not source:
            raise ImageReadError(f"{label}: empty (0 bytes)")
        opened = lambda: Image.open(io.BytesIO(source))  # noqa: E731
    try:
        with opened() as image:
            width, height = image.size
            if width * height > limit:
                raise ImageReadError(f"{label}: {width}x{height} = {width * height:,} pixels is above the pixel "
                                     f"limit of {limit:,} (--max-pixels); refused before decoding")
            if width == 0 or height == 0:
                raise ImageReadError(f"{label}: has no pixels ({width}x{height})")
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and image.format != "MPO":
                raise ImageReadError(f"{label}: holds {frames} frames ({image.format} animation or multi-page "
                                     "file); save the frame to classify as its own image, or pass a video")
            image.load()
            return _to_rgb_array(_exif_upright(image), label)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{label}: above Pillow's decompression-bomb limit, refused before decoding "
                             f"({exc}); --max-pixels sets the limit") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error, never the caller's
        reason = str(exc) or type(exc).__name__
        raise ImageReadError(f"{label}: not a readable image ({type(exc).__name__}: {reason})") from exc


def _exif_upright(image):
    """The image as a viewer shows it: EXIF orientation 1..8 applied; other values or bad EXIF ignored."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(274)
    except Exception:  # noqa: BLE001 - an EXIF block that cannot be parsed: viewers show the pixels as stored
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - as above
        return image


def _to_rgb_array(image, label: str) -> np.ndarray:
    """A loaded PIL image of any mode -> UINT8 RGB [H, W, 3] by the rules in the module docstring."""
    from PIL import Image

    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB"),
                          dtype=np.uint8)
    if mode in _DIRECT_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode == "LAB":
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return np.asarray(ImageCms.applyTransform(image, transform), dtype=np.uint8)
    if mode in _UINT16_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ImageReadError(f"{label}: mode {mode} holds values {low}..{high}, outside 0..65535; "
                                 "save it as an 8- or 16-bit image")
        return _grey_to_rgb(((values + 128) // 257).astype(np.uint8))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageReadError(f"{label}: mode F (32-bit float) holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ImageReadError(f"{label}: mode F (32-bit float) holds values {low:g}..{high:g}, outside 0..1; "
                                 "scale it to 0..1 or save it as an 8-bit image")
        return _grey_to_rgb(np.round(values * 255.0).astype(np.uint8))
    raise ImageReadError(f"{label}: Pillow mode {mode!r} has no conversion to RGB here; save it as RGB or greyscale")


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def read_face(source: str | Path | bytes, size: int, *, name: str | None = None,
              max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_image` then :func:`to_wire`: one face crop as UINT8 RGB [size, size, 3].

    Raises ImageReadError naming the file, as :func:`read_image` does.
    """
    return to_wire(read_image(source, name=name, max_pixels=max_pixels), size)


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into image files by suffix; keep explicit files as given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        else:
            found.append(p)
    return found
