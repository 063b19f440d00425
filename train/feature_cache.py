"""Cache the frozen CLIP encoder's features per image.

CLIP never trains, so its output for an image only changes when the image does. Where the pixels
CLIP sees are fixed, the features are computed once and reused:
- evaluation and the validation pass of every epoch (no augmentation): exact, no approximation;
- training with ``--augment none``: exact;
- training with the paper's augmentation only when asked (``--cache-clip-features``): CLIP then gets
  the clean image (or its mirror image, matching the random flip) while the mask network gets the
  fully augmented one (noise, erasing). That is an approximation of the paper's recipe, which runs
  CLIP on every augmented image at every step; it saves roughly two thirds of each step's compute.

On disk a cache file is keyed by a fingerprint of the encoder's weights and of the image list
(paths, sizes, modification times, labels, crop boxes), so a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fer_triton.files import atomic_write
from fer_triton.model import Preprocess
from fer_triton.train.augment import NoAugment
from fer_triton.train.datasets import FaceDataset, TorchFaces

log = logging.getLogger(__name__)


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def dataset_fingerprint(dataset: FaceDataset) -> str:
    digest = hashlib.sha1()
    for s in dataset.samples:
        stat = s.path.stat()
        digest.update(f"{s.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{s.label}|{s.box}\n".encode())
    return digest.hexdigest()[:16]


class ClipFeatureCache:
    """features [N, V, 512]: V = 1 (the clean image) or 2 (clean, horizontally flipped)."""

    def __init__(self, features: torch.Tensor):
        if features.ndim != 3 or features.shape[1] not in (1, 2):
            raise ValueError(f"cached features must be [N, 1 or 2, D], got {list(features.shape)}")
        self.features = features

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def has_flips(self) -> bool:
        return self.features.shape[1] == 2

    def lookup(self, indices: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        view = torch.zeros_like(indices) if flipped is None else flipped.long()
        if view.any() and not self.has_flips:
            raise ValueError("features of flipped images were not cached")
        return self.features[indices, view]


@torch.no_grad()
def compute_clip_features(encoder: torch.nn.Module, dataset: FaceDataset, *, flips: bool = False,
                          batch_size: int = 64, workers: int = 0, progress: bool = True,
                          preprocess: Preprocess | None = None) -> ClipFeatureCache:
    """Run the frozen encoder once over every (clean, and with ``flips`` mirrored) image.

    ``preprocess``: the model's (``model.preprocess``, on the CPU); default: the paper's.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    loader = DataLoader(TorchFaces(dataset, NoAugment(preprocess)), batch_size=batch_size, shuffle=False, num_workers=workers)
    parts = []
    for pixels, _, _, _ in tqdm(loader, desc=f"CLIP features {dataset.name}", disable=not progress, leave=False):
        pixels = pixels.to(device)
        views = [encoder(pixels).cpu()]
        if flips:
            views.append(encoder(pixels.flip(-1)).cpu())
        parts.append(torch.stack(views, dim=1))
    return ClipFeatureCache(torch.cat(parts))


def cached_clip_features(encoder: torch.nn.Module, dataset: FaceDataset, cache_dir: str | Path | None, *,
                         flips: bool = False, batch_size: int = 64, workers: int = 0,
                         progress: bool = True, preprocess: Preprocess | None = None) -> ClipFeatureCache:
    """Features from ``cache_dir`` when a matching file exists, else computed (and saved there).

    The file name keys the dataset, the encoder's weights and the preprocessing settings.
    """
    preprocess = preprocess or Preprocess()
    if cache_dir is None:
        return compute_clip_features(encoder, dataset, flips=flips, batch_size=batch_size, workers=workers,
                                     progress=progress, preprocess=preprocess)
    settings = hashlib.sha1(json.dumps(preprocess.config(), sort_keys=True).encode()).hexdigest()[:8]
    key = (f"{dataset_fingerprint(dataset)}-{encoder_fingerprint(encoder)}-{settings}-"
           f"{'flip' if flips else 'clean'}")
    path = Path(cache_dir) / f"{_safe(dataset.name)}-{dataset.split}-{key}.pt"
    if path.is_file():
        try:
            cache = ClipFeatureCache(torch.load(path, map_location="cpu", weights_only=True))
            if len(cache) == len(dataset):
                log.info("CLIP features of %s read from %s", dataset.name, path)
                return cache
        except Exception as exc:  # a damaged cache file is recomputed, not fatal
            log.warning("ignoring unreadable feature cache %s: %s", path, exc)
    cache = compute_clip_features(encoder, dataset, flips=flips, batch_size=batch_size, workers=workers,
                                  progress=progress, preprocess=preprocess)
    atomic_write(path, lambda tmp: torch.save(cache.features, tmp))
    log.info("CLIP features of %s saved to %s", dataset.name, path)
    return cache


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
