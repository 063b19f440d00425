"""The CAFE checkpoint: everything export needs to rebuild the exact trained model.

A ``torch.save`` dict (format "fer-triton/cafe", version 1):
    clip:       model_name, pretrained ("openai", a local file path, or None = random init),
                config (the open_clip config dict, so custom configs rebuild anywhere),
                state_dict (the image tower's weights; always stored for random init, since it
                cannot be rebuilt otherwise, optional for pretrained weights)
    mask_net:   state dict of MaskNet;  mask_net_init: "msceleb:<path>", "imagenet" or "random"
    head:       state dict of Head
    classes:    the 7 class names in output order
    preprocess: image_size, mean, std, resize
    meta:       free-form (training recipe, dataset, epochs, metrics...)
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fer_triton import clip_loader
from fer_triton.files import atomic_write
from fer_triton.labels import CLASSES
from fer_triton.model import CAFE, Head, MaskNet, Preprocess

log = logging.getLogger(__name__)

FORMAT = "fer-triton/cafe"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a fer-triton CAFE checkpoint."""


@dataclass
class CAFECheckpoint:
    clip_model: str
    clip_pretrained: str | None
    clip_config: dict
    mask_net: dict
    head: dict
    clip_state_dict: dict | None = None
    mask_net_init: str = "random"
    classes: tuple[str, ...] = CLASSES
    preprocess: dict = field(default_factory=lambda: Preprocess().config())
    meta: dict = field(default_factory=dict)

    @property
    def clip_is_random(self) -> bool:
        return self.clip_pretrained is None

    def provenance(self, path: str | Path) -> dict:
        """Where a repository exported from this checkpoint (read from ``path``) comes from: the ensemble
        metadata's ``clip_model``, ``clip_weights`` ("random" or the pretrained tag/path), ``mask_net_init``
        and ``checkpoint`` (absolute path). Clients read ``clip_weights`` to flag random-weight models."""
        return {
            "clip_model": self.clip_model,
            "clip_weights": "random" if self.clip_is_random else str(self.clip_pretrained),
            "mask_net_init": self.mask_net_init,
            "checkpoint": str(Path(path).resolve()),
        }

    def describe_weights(self) -> str:
        if self.clip_is_random:
            return f"CLIP {self.clip_model} with RANDOM weights (predictions are meaningless)"
        return f"CLIP {self.clip_model} pretrained={self.clip_pretrained}"

    # -- build ------------------------------------------------------------------------------
    def build_model(self) -> CAFE:
        """Rebuild the CAFE model in eval mode: CLIP weights and preprocessing as recorded.

        Raises CheckpointError when the recorded preprocessing cannot be honoured.
        """
        try:
            preprocess = Preprocess.from_config(self.preprocess)
        except ValueError as exc:
            raise CheckpointError(f"checkpoint of {self.clip_model}: {exc}") from exc
        clip_loader.register_model_config(self.clip_model, self.clip_config)
        if self.clip_state_dict is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # weights come from the checkpoint, not random init
                encoder = clip_loader.load_clip_image_encoder(self.clip_model, None)
            encoder.visual.load_state_dict(self.clip_state_dict)
        else:
            encoder = clip_loader.load_clip_image_encoder(self.clip_model, self.clip_pretrained)
        mask_net = MaskNet()
        mask_net.load_state_dict(self.mask_net)
        head = Head(num_classes=len(self.classes))
        head.load_state_dict(self.head)
        return CAFE(encoder, mask_net, head, preprocess).eval()

    # -- save / load ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "clip": {
                "model_name": self.clip_model,
                "pretrained": self.clip_pretrained,
                "config": self.clip_config,
                "state_dict": self.clip_state_dict,
            },
            "mask_net": self.mask_net,
            "mask_net_init": self.mask_net_init,
            "head": self.head,
            "classes": list(self.classes),
            "preprocess": self.preprocess,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint to ``path`` in one step (atomic rename); returns ``path``."""
        return atomic_write(path, lambda tmp: torch.save(self.to_dict(), tmp))  # never half a checkpoint

    @classmethod
    def load(cls, path: str | Path) -> "CAFECheckpoint":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a fer-triton CAFE checkpoint (no format={FORMAT!r} field)")
        if blob.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format version {blob['format_version']}; "
                f"this fer-triton reads up to {FORMAT_VERSION}: upgrade fer-triton"
            )
        clip = blob["clip"]
        return cls(
            clip_model=clip["model_name"],
            clip_pretrained=clip["pretrained"],
            clip_config=clip["config"],
            clip_state_dict=clip.get("state_dict"),
            mask_net=blob["mask_net"],
            mask_net_init=blob.get("mask_net_init", "random"),
            head=blob["head"],
            classes=tuple(blob["classes"]),
            preprocess=blob["preprocess"],
            meta=blob.get("meta", {}),
        )

    @classmethod
    def from_model(cls, model: CAFE, *, clip_model: str, clip_pretrained: str | None,
                   mask_net_init: str = "random", meta: dict | None = None,
                   embed_clip: bool = False) -> "CAFECheckpoint":
        """Snapshot a (trained) model. CLIP weights are embedded when they were random or asked for."""
        embed = embed_clip or clip_pretrained is None
        return cls(
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            clip_config=clip_loader.model_config(clip_model),
            clip_state_dict={k: v.detach().clone() for k, v in model.clip.visual.state_dict().items()} if embed else None,
            mask_net={k: v.detach().clone() for k, v in model.mask_net.state_dict().items()},
            head={k: v.detach().clone() for k, v in model.head.state_dict().items()},
            mask_net_init=mask_net_init,
            preprocess=model.preprocess.config(),
            meta=dict(meta or {}),
        )


def build_untrained(clip_model: str = clip_loader.DEFAULT_CLIP_MODEL,
                    clip_pretrained: str | None = clip_loader.DEFAULT_CLIP_PRETRAINED,
                    *, mask_net_init: str = "random", seed: int = 3407) -> tuple[CAFE, str]:
    """A CAFE model before training: CLIP as asked, mask net from ``mask_net_init``, a fresh head.

    ``mask_net_init`` is "random", "imagenet" or "msceleb:<path to resnet18_msceleb.pth>".
    Returns the model and a description of the mask-net init actually used.
    """
    torch.manual_seed(seed)
    encoder = clip_loader.load_clip_image_encoder(clip_model, clip_pretrained)
    mask_net = MaskNet()
    if mask_net_init.startswith("msceleb:"):
        mask_net.load_msceleb(mask_net_init.split(":", 1)[1])
    elif mask_net_init == "imagenet":
        mask_net.load_imagenet()
    elif mask_net_init != "random":
        raise ValueError(f"mask_net_init must be 'random', 'imagenet' or 'msceleb:<path>', not {mask_net_init!r}")
    return CAFE(encoder, mask_net, Head()).eval(), mask_net_init
