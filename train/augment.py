"""Image -> model tensor, with the paper's training augmentation or without any.

Both paths resize exactly as serving does (``fer_triton.images.to_wire``: PIL bilinear to 224x224)
and normalise with ImageNet's mean/std, so a model sees the same pixels in training, evaluation and
on Triton. Randomness comes from torch's RNG only (DataLoader seeds it per worker from the run's seed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import transforms

from fer_triton.images import to_wire
from fer_triton.model import IMAGENET_MEAN, IMAGENET_STD, MODEL_IMAGE_SIZE

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def to_model_tensor(image: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> torch.Tensor:
    """UINT8 RGB [H, W, 3] -> normalised FP32 [3, size, size] (Resize, ToTensor, Normalize)."""
    from PIL import Image

    wire = to_wire(Image.fromarray(image), size)
    x = torch.from_numpy(np.array(wire, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32) / 255.0
    return (x - _MEAN) / _STD


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

    def __init__(self, size: int = MODEL_IMAGE_SIZE, noise_p: float = 0.5, noise_std: float = math.sqrt(30),
                 flip_p: float = 0.5, erase_p: float = 0.5, erase_scale: tuple[float, float] = (0.02, 0.25)):
        self.size = size
        self.noise_p, self.noise_std, self.flip_p = noise_p, noise_std, flip_p
        self.erase = transforms.RandomErasing(p=erase_p, scale=erase_scale) if erase_p > 0 else None

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, bool]:
        if self.noise_p > 0 and torch.rand(()) < self.noise_p:
            image = add_gaussian_noise(image, self.noise_std)
        x = to_model_tensor(image, self.size)
        flipped = bool(torch.rand(()) < self.flip_p)
        if flipped:
            x = x.flip(-1)
        if self.erase is not None:
            x = self.erase(x)
        return x, flipped


class NoAugment:
    """Resize + normalise only (evaluation, and training with ``--augment none``)."""

    def __init__(self, size: int = MODEL_IMAGE_SIZE):
        self.size = size

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, bool]:
        return to_model_tensor(image, self.size), False


def make_augment(name: str):
    if name == "paper":
        return PaperAugment()
    if name == "none":
        return NoAugment()
    raise ValueError(f"augment must be 'paper' or 'none', not {name!r}")
