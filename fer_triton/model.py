"""The CAFE model of "Generalizable Facial Expression Recognition" (ECCV 2024) in PyTorch.

    pixels -> CLIP image encoder (frozen) -> clip_features [B,512]
    pixels -> ResNet-18 trunk + avg pool  -> mask_logits   [B,512]  (>= 0: ReLU then pooling)
    masked_features = clip_features * sigmoid(mask_logits)
    logits = Linear(512, 7)(masked_features); probabilities = softmax(logits)

Each stage is its own module so that export can write one ONNX graph per Triton model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fer_triton.clip_loader import CLIP_FEATURE_DIM, CLIPImageEncoder
from fer_triton.labels import NUM_CLASSES

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_IMAGE_SIZE = 224


RESIZE_MODES = ("bilinear",)


class Preprocess(nn.Module):
    """UINT8 RGB face crops [B,H,W,3] -> ImageNet-normalised FP32 [B,3,224,224].

    ``(x / 255 - mean) / std`` per channel, mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225):
    the ImageNet statistics the official CAFE code (``ours_CAFE.py``) feeds to BOTH branches, not
    CLIP's own mean/std. Bilinear resize (half-pixel centres, no antialias, no centre crop) only when
    the wire size differs from ``image_size``. This module is the one definition of the model's
    preprocessing: export writes it as the ``cafe_preprocess`` graph, training and retraining call it,
    and a checkpoint records its settings (:meth:`config`, read back by :meth:`from_config`).
    """

    def __init__(self, image_size: int = MODEL_IMAGE_SIZE,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.image_size = image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # Fold /255 and the normalisation into one multiply-add.
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("offset", -mean_t / std_t, persistent=False)

    def config(self) -> dict:
        """The settings a checkpoint records: image_size, mean, std, resize."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std), "resize": "bilinear"}

    @classmethod
    def from_config(cls, config: dict) -> "Preprocess":
        """Rebuild from :meth:`config`'s dict; raises ValueError naming a field that cannot be honoured."""
        unknown = set(config) - {"image_size", "mean", "std", "resize"}
        if unknown:
            raise ValueError(f"preprocess settings: unknown field(s) {sorted(unknown)}")
        resize = config.get("resize", "bilinear")
        if resize not in RESIZE_MODES:
            raise ValueError(f"preprocess settings: resize {resize!r} is not supported (only {', '.join(RESIZE_MODES)})")
        mean, std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"preprocess settings: mean and std need 3 values each, std > 0 (got {mean}, {std})")
        size = int(config.get("image_size", MODEL_IMAGE_SIZE))
        if size < 1:
            raise ValueError(f"preprocess settings: image_size must be positive, not {size}")
        return cls(size, tuple(mean), tuple(std))

    def cpu_copy(self) -> "Preprocess":
        """The same preprocessing on the CPU (for DataLoader workers, whatever device the model is on)."""
        return Preprocess.from_config(self.config())

    def forward(self, faces: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """``faces``: UINT8 (or float 0..255) [B,H,W,3] -> FP32 [B,3,image_size,image_size]."""
        x = faces.permute(0, 3, 1, 2).to(torch.float32)
        if resize and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return x * self.scale + self.offset


class MaskNet(nn.Module):
    """torchvision ResNet-18 trunk (conv1..layer4) + global average pool -> 512 mask logits."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet18

        trunk = resnet18(weights=None)
        trunk.fc = nn.Identity()
        self.trunk = trunk

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels)

    def load_msceleb(self, path: str | Path) -> None:
        """Load ResNet-18 weights pretrained on MS-Celeb-1M (``resnet18_msceleb.pth``, user supplied).

        The file is a dict whose "state_dict" uses torchvision's resnet18 names; the fc layer is dropped.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MS-Celeb ResNet-18 checkpoint not found: {path}")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
        missing, unexpected = self.trunk.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} is not a torchvision-style ResNet-18 state dict: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )

    def load_imagenet(self) -> None:
        """torchvision's ImageNet weights (downloaded once into torch's cache)."""
        from torchvision.models import ResNet18_Weights

        state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        self.trunk.load_state_dict(state, strict=False)


class Head(nn.Module):
    """masked = clip_features * sigmoid(mask_logits); logits = Linear(512, 7)(masked)."""

    def __init__(self, in_features: int = CLIP_FEATURE_DIM, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, clip_features: torch.Tensor, mask_logits: torch.Tensor):
        masked = clip_features * torch.sigmoid(mask_logits)
        logits = self.fc(masked)
        return masked, logits, torch.softmax(logits, dim=1)


@dataclass
class CAFEOutput:
    clip_features: torch.Tensor
    mask_logits: torch.Tensor
    masked_features: torch.Tensor
    logits: torch.Tensor
    probabilities: torch.Tensor


class CAFE(nn.Module):
    """The whole model on normalised pixels. CLIP stays frozen (no_grad, eval) even in train().

    ``preprocess`` (UINT8 faces -> pixels) travels with the model so that every user of a model
    (export, training, retrain, checks) normalises as its checkpoint recorded; ``forward`` itself
    takes pixels, as the ensemble's CLIP and mask-net stages do.
    """

    def __init__(self, clip_encoder: CLIPImageEncoder, mask_net: MaskNet | None = None, head: Head | None = None,
                 preprocess: Preprocess | None = None):
        super().__init__()
        self.preprocess = preprocess or Preprocess()
        self.clip = clip_encoder
        self.clip.requires_grad_(False)
        self.mask_net = mask_net or MaskNet()
        self.head = head or Head()

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen: its dropout/normalisation statistics never change
        return self

    def forward(self, pixels: torch.Tensor, clip_features: torch.Tensor | None = None) -> CAFEOutput:
        """``clip_features`` may be passed in (cached) to skip the frozen encoder."""
        if clip_features is None:
            with torch.no_grad():
                clip_features = self.clip(pixels)
        mask_logits = self.mask_net(pixels)
        masked, logits, probs = self.head(clip_features, mask_logits)
        return CAFEOutput(clip_features, mask_logits, masked, logits, probs)
