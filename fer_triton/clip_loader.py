"""Build the frozen CLIP image encoder with open_clip.

Three sources of weights, recorded in every checkpoint so export can rebuild the same encoder:
- a pretrained tag known to open_clip (``"openai"``: downloaded once into open_clip's cache),
- a local checkpoint file (``"/path/to/open_clip_model.pt"``, for machines without internet),
- ``None``: an explicit random init, for tests and speed benchmarks only (predictions are meaningless).
"""

from __future__ import annotations

import json
import logging
import warnings
from importlib import resources
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# The paper's encoder: OpenAI CLIP ViT-B/32 with QuickGELU.
DEFAULT_CLIP_MODEL = "ViT-B-32-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"
# A 2-layer, 64-wide ViT with the same 512-d output, for fast tests of the real code paths.
TINY_CLIP_MODEL = "FER-Tiny-ViT-quickgelu"
CLIP_FEATURE_DIM = 512

# Package data (pyproject.toml [tool.setuptools.package-data]): a folder on disk in an installed wheel.
_CONFIG_DIR = Path(str(resources.files("fer_triton") / "clip_configs"))


class CLIPWeightsUnavailable(RuntimeError):
    """The requested CLIP weights could not be loaded (no internet, missing file...)."""


def _open_clip():
    import open_clip

    # Register this project's small configs once; open_clip keeps a global registry.
    if TINY_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)
    return open_clip


def register_model_config(name: str, config: dict) -> None:
    """Make an open_clip model config (as stored in a checkpoint) available under ``name``."""
    open_clip = _open_clip()
    if name in open_clip.list_models():
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def model_config(name: str) -> dict:
    """The open_clip config dict of ``name`` (so a checkpoint can carry it)."""
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}; known: {', '.join(open_clip.list_models())}")
    return cfg


class CLIPImageEncoder(nn.Module):
    """CLIP's image tower: normalised pixels [B,3,224,224] -> projected CLS embedding [B,512].

    Not L2-normalised, as in the official CAFE code (``encode_image(x)`` without normalize).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def load_clip_image_encoder(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    *,
    cache_dir: str | None = None,
) -> CLIPImageEncoder:
    """Create the frozen image encoder; raise CLIPWeightsUnavailable with the reason if loading fails."""
    open_clip = _open_clip()
    if pretrained is None:
        warnings.warn(
            f"CLIP {model_name} uses RANDOM weights: predictions are meaningless "
            "(fine for tests and speed benchmarks only)",
            stacklevel=2,
        )
    elif Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"} and not Path(pretrained).is_file():
        raise CLIPWeightsUnavailable(f"CLIP checkpoint file not found: {pretrained}")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, device="cpu")
    except Exception as exc:  # open_clip raises RuntimeError, OSError, HF hub errors...
        raise CLIPWeightsUnavailable(
            f"could not load CLIP {model_name} weights {pretrained!r}: {type(exc).__name__}: {exc}"
        ) from exc
    encoder = CLIPImageEncoder(model.visual)
    del model  # the text tower is not used by CAFE
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def load_clip_text_model(model_name: str, pretrained: str | None):
    """The whole CLIP model and its tokenizer, for zero-shot text-prompt heads."""
    open_clip = _open_clip()
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
    except Exception as exc:
        raise CLIPWeightsUnavailable(
            f"could not load CLIP {model_name} weights {pretrained!r}: {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    return model, open_clip.get_tokenizer(model_name)


def pretrained_weights_reachable(model_name: str = DEFAULT_CLIP_MODEL, tag: str = DEFAULT_CLIP_PRETRAINED,
                                 timeout_s: float = 3.0) -> bool:
    """True if open_clip can get ``tag`` weights now: already cached, or the hub answers quickly.

    Lets the demo fall back to random weights at once on offline machines instead of retrying
    downloads for a minute.
    """
    import socket
    from urllib.parse import urlparse

    open_clip = _open_clip()
    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    hub_id = (cfg.get("hf_hub") or "").rstrip("/")
    if hub_id:
        try:
            from huggingface_hub import constants, try_to_load_from_cache

            for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(hub_id, filename), str):
                    return True
            if constants.HF_HUB_OFFLINE:
                return False
            endpoint = urlparse(constants.ENDPOINT)
            with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s):
                return True
        except (OSError, ImportError):
            return False
    return bool(cfg.get("url"))
