"""CAFE's training losses (paper recipe, as in the official ``code/ours_CAFE.py``).

Notation: F [B, C] are the masked CLIP features ``clip_features * sigmoid(mask_logits)`` (C = 512),
y [B] the labels, K = 7 groups of G = 73 consecutive channels (channels 0..510; with C = 512 the
last channel, 511, is in no group: max-pooling with kernel G and stride G).

    total = CE(logits, y) + 5 * L_div + 1.5 * L_sep
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NUM_GROUPS = 7
GROUP_SIZE = 73
DROP_PER_BLOCK = 10
DIV_WEIGHT = 5.0
SEP_WEIGHT = 1.5


def group_max(features: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """max over each group of ``group_size`` consecutive channels: [B, C] -> [B, C // group_size].

    ``group_max(F)[b, k] = max_{c in [k*G, (k+1)*G)} F[b, c]``; trailing channels (C mod G) are in no group.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be [batch, channels], got shape {list(features.shape)}")
    if features.shape[1] < group_size:
        raise ValueError(f"{features.shape[1]} channels cannot hold one group of {group_size}")
    return F.max_pool1d(features.unsqueeze(1), kernel_size=group_size, stride=group_size).squeeze(1)


def channel_drop_mask(num_channels: int = 512, num_groups: int = NUM_GROUPS, group_size: int = GROUP_SIZE,
                      drop_per_block: int = DROP_PER_BLOCK, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 0/1 float mask [C]: in each of ``num_groups`` blocks, ``drop_per_block`` random channels are 0.

    Blocks are [k*G, (k+1)*G) for k < K-1; the last block runs from (K-1)*G to C (74 channels for
    C = 512), so every channel, 511 included, can be dropped, as in the official code. One mask is
    drawn per step and shared by the whole batch.
    """
    if num_groups * group_size > num_channels:
        raise ValueError(f"{num_groups} groups of {group_size} channels do not fit in {num_channels} channels")
    if not 0 <= drop_per_block <= group_size:
        raise ValueError(f"drop_per_block must be in 0..{group_size}, not {drop_per_block}")
    mask = torch.ones(num_channels)
    for k in range(num_groups):
        start = k * group_size
        stop = num_channels if k == num_groups - 1 else start + group_size
        dropped = torch.randperm(stop - start, generator=generator)[:drop_per_block] + start
        mask[dropped] = 0.0
    return mask


def diversity_loss(features: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """L_div = 1 - mean_{b,k}( max_{c in group k} F[b, c] ) / G, on the UNdropped features.

    As in the official code; the paper prints the same term without the 1/G factor.
    """
    return 1.0 - group_max(features, group_size).mean() / group_size


def separation_loss(features: torch.Tensor, targets: torch.Tensor, drop_mask: torch.Tensor,
                    group_size: int = GROUP_SIZE) -> torch.Tensor:
    """L_sep = CE( group_max(F * m), y ): the K group maxima of the channel-dropped F act as K logits.

    Dropped channels become 0 (not removed), so 0 can be a group's maximum when its kept features
    are negative. Needs exactly one group per class.
    """
    scores = group_max(features * drop_mask.to(features), group_size)
    return F.cross_entropy(scores, targets)


@dataclass
class LossTerms:
    total: torch.Tensor
    ce: torch.Tensor
    div: torch.Tensor
    sep: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": self.total.item(), "ce": self.ce.item(), "div": self.div.item(), "sep": self.sep.item()}


def cafe_loss(logits: torch.Tensor, masked_features: torch.Tensor, targets: torch.Tensor,
              drop_mask: torch.Tensor, *, div_weight: float = DIV_WEIGHT, sep_weight: float = SEP_WEIGHT,
              group_size: int = GROUP_SIZE) -> LossTerms:
    """total = CE(logits, y) + div_weight * L_div(F) + sep_weight * L_sep(F, y, m)."""
    num_classes = logits.shape[1]
    groups = masked_features.shape[1] // group_size
    if groups != num_classes:
        raise ValueError(f"L_sep needs one channel group per class: {masked_features.shape[1]} channels in groups "
                         f"of {group_size} give {groups} groups for {num_classes} classes")
    ce = F.cross_entropy(logits, targets)
    div = diversity_loss(masked_features, group_size)
    sep = separation_loss(masked_features, targets, drop_mask, group_size)
    return LossTerms(ce + div_weight * div + sep_weight * sep, ce, div, sep)
