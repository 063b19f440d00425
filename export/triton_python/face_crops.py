"""The one crop rule of fer-triton: a detector's face box -> the UINT8 RGB face the classifier sees.

Used on both sides of the wire, so a frame cropped by a client and the same frame cropped by the
served frames model give byte-identical faces:

- client side: ``fer_triton.client.faces`` (``square_box``, ``crop_face``) and
  ``fer_triton.images.to_wire`` import it;
- server side: ``fer-triton export`` copies this file next to the ``<prefix>_frames`` model's
  ``model.py`` (export/triton_python/frames_model.py), which imports it from its version folder.

So it imports numpy and Pillow only, never fer_triton. Boxes are plain ``(x, y, w, h)`` integer
tuples in frame pixels (left, top, width, height).

The rule: the square around the box's centre, its side ``max(w, h) * (1 + 2 * margin)`` (``margin``
of the side added on each side), rounded to whole pixels and clipped to the frame, then resized with
Pillow's bilinear filter to ``size`` x ``size`` (the resize training uses: torchvision's Resize on PIL
images is PIL bilinear). A region that touches the frame's edge is clipped, not padded, so such a
face is stretched a little rather than shifted.
"""

from __future__ import annotations

import numpy as np


def square_box(box, frame_w: int, frame_h: int, margin: float) -> tuple[int, int, int, int]:
    """The square region around ``box`` (x, y, w, h), widened by ``margin`` of its side, clipped to the frame.

    Returns ``(x, y, w, h)`` ints; width and height are at least 1 (a box outside the frame gives a
    1-pixel region at the nearest edge's clip rather than an empty one).
    """
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    x1, y1 = min(int(frame_w), int(round(cx + side / 2))), min(int(frame_h), int(round(cy + side / 2)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def crop_region(rgb: np.ndarray, box, margin: float) -> tuple[int, int, int, int]:
    """The region :func:`crop_face` cuts out of ``rgb`` for ``box``: the whole frame when ``box`` is the
    whole frame (sources that already send face crops), else :func:`square_box`."""
    h, w = rgb.shape[:2]
    box = tuple(int(v) for v in box)
    return box if box == (0, 0, w, h) else square_box(box, w, h, margin)


def to_wire(image, size: int) -> np.ndarray:
    """UINT8 RGB [H, W, 3] (array or PIL RGB image) -> UINT8 RGB [size, size, 3], PIL bilinear resize.

    The resize is the one training uses (torchvision Resize on PIL images is PIL bilinear), so a face
    sent at the wire size is the face the model was trained on. An image already ``size`` x ``size``
    is copied unchanged. Raises ValueError for an array that is not UINT8 [H, W, 3] or an image whose
    mode is not RGB.
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a UINT8 RGB array [H, W, 3], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(np.ascontiguousarray(image))
    elif image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r} (read files with read_image)")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.array(image, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def crop_face(rgb: np.ndarray, box, size: int, margin: float = 0.0) -> np.ndarray:
    """UINT8 RGB [size, size, 3]: the :func:`crop_region` of ``box`` (x, y, w, h) in the UINT8 RGB frame
    ``rgb`` [H, W, 3], resized by :func:`to_wire`. The whole frame (crops mode, margin 0) is resized as is.
    """
    x, y, w, h = crop_region(rgb, box, margin)
    return to_wire(rgb[y:y + h, x:x + w], size)
