"""Image -> model tensor, with the paper's training augmentation or without any.

Both paths resize exactly as serving does (``fer_triton.images.to_wire``: PIL bilinear to the model's
image size) and then normalise with the model's own :class:`fer_triton.model.Preprocess` (the one
definition of the normalisation, also exported as the ensemble's preprocess graph), so a model sees
the same pixels in training, evaluation and on Triton. Randomness comes from torch's RNG only
(DataLoader seeds it per worker from the run's seed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import transforms

from fer_triton.images import to_wire
from fer_triton.model import Preprocess


def to_model_tensor(image: np.ndarray, preprocess: Preprocess | None = None) -> torch.Tensor:
    """UINT8 RGB [H, W, 3] -> normalised FP32 [3, S, S] (Resize, then ``preprocess``; S its image size).

    ``preprocess`` defaults to the paper's (ImageNet mean/std, 224x224); pass ``model.preprocess``.
    """
    preprocess = preprocess or Preprocess()
    wire = to_wire(image, preprocess.image_size)
    with torch.no_grad():
        return preprocess(torch.from_numpy(wire).unsqueeze(0))[0]


def add_gaussian_noise(image: np.ndarray, std: float) -> np.ndarray:
    """uint8 + N(0, std^2) noise, clipped to 0..255 and truncated back to uint8 (as the official add_g)."""
    noisy = torch.from_numpy(image.astype(np.float64)) + torch.randn(image.shape, dtype=torch.float64) * std
    return noisy.clamp(0, 255).numpy().astype(np.uint8)


class PaperAugment:
    """The official training transform, in its order:

    with p=``noise_p`` Gaussian noise (std sqrt(30)) on the uint8 image -> Resize 224 -> ToTensor ->
    Normalize (ImageNet) -> RandomHorizontalFlip(p=``flip_p``) -> RandomErasing(p=0.5, scale 0.02..0.25).

    Returns the tensor and whether it was flipped (so cached CLIP features of the flipped image can
    be used when caching is chosen).
    """

    def __init__(self, preprocess: Preprocess | None = None, noise_p: float = 0.5, noise_std: float = math.sqrt(30),
                 flip_p: float = 0.5, erase_p: float = 0.5, erase_scale: tuple[float, float] = (0.02, 0.25)):
        self.preprocess = preprocess or Preprocess()
        self.noise_p, self.noise_std, self.flip_p = noise_p, noise_std, flip_p
        self.erase = transforms.RandomErasing(p=erase_p, scale=erase_scale) if erase_p > 0 else None

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, bool]:
        if self.noise_p > 0 and torch.rand(()) < self.noise_p:
            image = add_gaussian_noise(image, self.noise_std)
        x = to_model_tensor(image, self.preprocess)
        flipped = bool(torch.rand(()) < self.flip_p)
        if flipped:
            x = x.flip(-1)
        if self.erase is not None:
            x = self.erase(x)
        return x, flipped


class NoAugment:
    """Resize + normalise only (evaluation, and training with ``--augment none``)."""

    def __init__(self, preprocess: Preprocess | None = None):
        self.preprocess = preprocess or Preprocess()

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, bool]:
        return to_model_tensor(image, self.preprocess), False


def make_augment(name: str, preprocess: Preprocess | None = None):
    """"paper" -> :class:`PaperAugment`, "none" -> :class:`NoAugment`; raises ValueError otherwise."""
    if name == "paper":
        return PaperAugment(preprocess)
    if name == "none":
        return NoAugment(preprocess)
    raise ValueError(f"augment must be 'paper' or 'none', not {name!r}")
