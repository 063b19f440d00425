"""The model every benchmark measures: the true architecture (or the tiny test config) with RANDOM weights.

Speed does not depend on the weights, so benchmarks build an untrained CAFE model (random CLIP
weights, random mask net, untrained head), save it as a checkpoint and export it like a user's model.
Its labels are meaningless: these models measure speed and mechanics, never accuracy.
"""

from __future__ import annotations

import warnings
from pathlib import Path

CHECKPOINT_NAME = "cafe_random.pt"  # what export_random_repository saves in its workdir


def save_random_checkpoint(path: str | Path, clip_model: str, *, source: str, seed: int = 3407) -> Path:
    """An untrained CAFE checkpoint with random weights at ``path`` (``source`` is recorded in its meta)."""
    from fer_triton.checkpoint import CAFECheckpoint, build_untrained

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # open_clip warns that no pretrained weights were loaded: on purpose
        model, init = build_untrained(clip_model, None, seed=seed)
    return CAFECheckpoint.from_model(model, clip_model=clip_model, clip_pretrained=None, mask_net_init=init,
                                     meta={"trained": False, "source": source}).save(path)


def export_random_repository(workdir: str | Path, clip_model: str, *, source: str) -> Path:
    """:func:`save_random_checkpoint` into ``workdir`` and its default export to ``workdir/model_repository``."""
    from fer_triton.export.exporter import export_checkpoint

    workdir = Path(workdir)
    checkpoint = save_random_checkpoint(workdir / CHECKPOINT_NAME, clip_model, source=source)
    return export_checkpoint(checkpoint, workdir / "model_repository").repository
