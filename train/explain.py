"""What a CAFE model relies on, as pictures.

- Grad-CAM over the mask network's last block (``trunk.layer4``): which face regions drive the
  channel mask towards the predicted class (gradients flow logit -> masked features -> mask -> layer4).
- Gradient x input through the frozen CLIP encoder: which pixels move the predicted logit through
  the CLIP branch (with the mask held at its value for this image).
- Channel keep rates: the mean of sigmoid(mask) per class over a set of images, and the channels the
  mask keeps most for each class. Channel c belongs to separation group c // 73 (channel 511 to none);
  L_sep trains group k to answer for class k.

Pictures are written with Pillow (a numpy colour map), so no plotting package is needed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_triton.labels import CLASSES, NUM_CLASSES
from fer_triton.model import CAFE
from fer_triton.train.losses import GROUP_SIZE


@dataclass
class Explanation:
    image: np.ndarray          # UINT8 RGB [224, 224, 3], what the model saw
    probabilities: np.ndarray  # [7]
    target: int                # the class explained (the prediction unless asked otherwise)
    gradcam: np.ndarray        # [224, 224] in 0..1, mask network
    clip_saliency: np.ndarray  # [224, 224] in 0..1, CLIP branch
    mask_keep: np.ndarray      # [512] sigmoid(mask_logits)


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x - x.min()
    top = x.max()
    return (x / top if top > 0 else x).detach().numpy()


def gradcam_mask_net(model: CAFE, pixels: torch.Tensor, clip_features: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM of logit[target] over mask_net.trunk.layer4, upsampled to the input size, in 0..1."""
    store = {}
    hook = model.mask_net.trunk.layer4.register_forward_hook(lambda m, i, o: store.update(act=o))
    try:
        mask_logits = model.mask_net(pixels)
    finally:
        hook.remove()
    act = store["act"]                                             # [1, 512, h, w]
    _, logits, _ = model.head(clip_features, mask_logits)
    grad, = torch.autograd.grad(logits[0, target], act)
    weights = grad.mean(dim=(2, 3), keepdim=True)                 # one weight per feature map
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return _normalise(cam)


def clip_gradient_x_input(model: CAFE, pixels: torch.Tensor, mask_logits: torch.Tensor, target: int,
                          smooth: int = 9) -> np.ndarray:
    """|d logit[target] / d pixels * pixels| through the CLIP branch, summed over colour, smoothed, in 0..1."""
    x = pixels.detach().clone().requires_grad_(True)
    clip_features = model.clip(x)                                  # CLIP weights stay frozen
    _, logits, _ = model.head(clip_features, mask_logits.detach())
    grad, = torch.autograd.grad(logits[0, target], x)
    saliency = (grad * x).abs().sum(dim=1, keepdim=True)
    if smooth > 1:  # patch-sized ViT gradients are blocky and speckled; a box filter makes them readable
        saliency = F.avg_pool2d(saliency, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    saliency = saliency[0, 0]
    saliency = saliency.clamp(max=torch.quantile(saliency.flatten(), 0.99))
    return _normalise(saliency)


def explain_face(model: CAFE, face: np.ndarray, target: int | None = None) -> Explanation:
    """Explain one UINT8 RGB face [224, 224, 3] (the prediction, or class ``target``)."""
    if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
        raise ValueError(f"face must be UINT8 RGB [H, W, 3], got {face.dtype} {list(face.shape)}")
    if target is not None and not 0 <= target < NUM_CLASSES:
        raise ValueError(f"target must be a class index 0..{NUM_CLASSES - 1}, not {target}")
    model.eval()
    pixels = model.preprocess(torch.from_numpy(np.array(face)).unsqueeze(0))
    with torch.no_grad():
        out = model(pixels)
    target = int(out.probabilities.argmax()) if target is None else target
    return Explanation(
        image=face,
        probabilities=out.probabilities[0].numpy(),
        target=target,
        gradcam=gradcam_mask_net(model, pixels, out.clip_features, target),
        clip_saliency=clip_gradient_x_input(model, pixels, out.mask_logits, target),
        mask_keep=torch.sigmoid(out.mask_logits[0]).numpy(),
    )


# -- channel statistics ------------------------------------------------------------------------
@torch.no_grad()
def mask_keep_by_class(model: CAFE, faces: np.ndarray, labels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Mean sigmoid(mask) [7, 512] of the faces of each class (NaN rows for classes with no face)."""
    model.eval()
    keeps = []
    for start in range(0, len(faces), batch_size):
        pixels = model.preprocess(torch.from_numpy(faces[start:start + batch_size]))
        keeps.append(torch.sigmoid(model.mask_net(pixels)))
    keep = torch.cat(keeps).numpy()
    out = np.full((NUM_CLASSES, keep.shape[1]), np.nan)
    for c in range(NUM_CLASSES):
        if (labels == c).any():
            out[c] = keep[labels == c].mean(axis=0)
    return out


def channel_group(channel: int, num_groups: int = NUM_CLASSES, group_size: int = GROUP_SIZE) -> int | None:
    group = channel // group_size
    return group if group < num_groups else None


def top_channels(keep_by_class: np.ndarray, k: int = 10) -> list[dict]:
    """Rows (class, rank, channel, group, keep, keep minus the mean over classes) for the k most kept channels."""
    overall = np.nanmean(keep_by_class, axis=0)
    rows = []
    for c in range(keep_by_class.shape[0]):
        if np.isnan(keep_by_class[c]).all():
            continue
        for rank, ch in enumerate(np.argsort(-keep_by_class[c])[:k], 1):
            keep = float(keep_by_class[c, ch])
            rows.append({"class": CLASSES[c], "rank": rank, "channel": int(ch), "group": channel_group(int(ch)),
                         "keep": keep, "keep_vs_mean": keep - float(overall[ch])})
    return rows


# -- pictures ----------------------------------------------------------------------------------
def colour_map(values: np.ndarray) -> np.ndarray:
    """0..1 -> UINT8 RGB, a jet-like blue-cyan-yellow-red ramp."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return ((1 - alpha) * image + alpha * colour_map(heat)).astype(np.uint8)


def _caption(draw, xy, text):
    draw.rectangle([xy[0], xy[1], xy[0] + 6 * len(text) + 4, xy[1] + 12], fill=(0, 0, 0))
    draw.text((xy[0] + 2, xy[1]), text, fill=(255, 255, 255))


def save_explanation(explanation: Explanation, path: str | Path) -> Path:
    """One PNG: the face | Grad-CAM (mask network) | gradient x input (CLIP), captioned."""
    from PIL import Image, ImageDraw

    e = explanation
    panels = [e.image, overlay(e.image, e.gradcam), overlay(e.image, e.clip_saliency)]
    size = e.image.shape[0]
    canvas = Image.new("RGB", (size * 3, size + 16), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (i * size, 16))
    draw = ImageDraw.Draw(canvas)
    name = CLASSES[e.target]
    _caption(draw, (0, 0), f"{name} {100 * e.probabilities[e.target]:.1f}%")
    _caption(draw, (size, 0), "mask net Grad-CAM")
    _caption(draw, (2 * size, 0), "CLIP grad x input")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_channel_map(keep_by_class: np.ndarray, path: str | Path, row_height: int = 24) -> Path:
    """PNG heat map of the mask keep rate, one row per class, one column per channel (group borders ticked)."""
    from PIL import Image, ImageDraw

    classes, channels = keep_by_class.shape
    finite = keep_by_class[np.isfinite(keep_by_class)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    scaled = (np.nan_to_num(keep_by_class, nan=lo) - lo) / max(hi - lo, 1e-12)
    label_w, top = 70, 14
    heat = colour_map(np.repeat(scaled, row_height, axis=0))
    canvas = Image.new("RGB", (label_w + channels, top + classes * row_height), (255, 255, 255))
    canvas.paste(Image.fromarray(heat), (label_w, top))
    draw = ImageDraw.Draw(canvas)
    for c in range(classes):
        draw.text((2, top + c * row_height + row_height // 3), CLASSES[c], fill=(0, 0, 0))
    for g in range(classes + 1):
        x = label_w + g * GROUP_SIZE
        draw.line([x, top - 6, x, top - 1], fill=(0, 0, 0))
    draw.text((label_w, 0), f"sigmoid(mask) per class, {lo:.3f}..{hi:.3f}; ticks: groups of {GROUP_SIZE}",
              fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_top_channels(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["class", "rank", "channel", "group", "keep", "keep_vs_mean"])
        w.writeheader()
        for row in rows:
            w.writerow({**row, "group": "" if row["group"] is None else row["group"],
                        "keep": f"{row['keep']:.6f}", "keep_vs_mean": f"{row['keep_vs_mean']:.6f}"})
    return path
