"""CAFE's losses computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fer_triton.train import losses


def _feature_with_group_maxima(maxima: torch.Tensor, background: float = -1.0) -> torch.Tensor:
    """[B, 512] of ``background`` with maxima[b, k] placed at channel 73k + 5 (channel 511 set very high)."""
    b = maxima.shape[0]
    f = torch.full((b, 512), background)
    for k in range(7):
        f[:, 73 * k + 5] = maxima[:, k]
    f[:, 511] = 100.0  # in no group: must never count
    return f


def test_group_max_is_the_max_of_each_block_of_73_and_ignores_channel_511():
    torch.manual_seed(0)
    f = torch.randn(3, 512)
    f[:, 511] = 50.0
    expected = torch.stack([torch.stack([f[b, 73 * k:73 * (k + 1)].max() for k in range(7)]) for b in range(3)])
    assert torch.equal(losses.group_max(f), expected)
    assert losses.group_max(f).shape == (3, 7)


def test_channel_drop_mask_drops_ten_channels_in_each_block_including_the_last_74():
    g = torch.Generator().manual_seed(1)
    mask = losses.channel_drop_mask(generator=g)
    assert mask.shape == (512,) and set(mask.unique().tolist()) == {0.0, 1.0}
    blocks = [(73 * k, 73 * (k + 1)) for k in range(6)] + [(438, 512)]
    for start, stop in blocks:
        assert int((mask[start:stop] == 0).sum()) == 10
    assert int((mask == 0).sum()) == 70
    # Channel 511 belongs to the last block: over many draws it is sometimes dropped.
    assert any(losses.channel_drop_mask(generator=g)[511] == 0 for _ in range(200))
    again = losses.channel_drop_mask(generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)                                   # seeded: reproducible
    assert not torch.equal(mask, losses.channel_drop_mask(generator=g))  # a new mask each step


def test_diversity_loss_is_one_minus_mean_group_max_over_73():
    maxima = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    f = _feature_with_group_maxima(maxima)
    by_hand = 1.0 - (28.0 + 3.5) / 14 / 73
    assert losses.diversity_loss(f).item() == pytest.approx(by_hand, abs=1e-6)


def test_separation_loss_is_cross_entropy_of_dropped_group_maxima():
    maxima = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0, -3.0, 0.25]])
    f = _feature_with_group_maxima(maxima, background=-5.0)
    targets = torch.tensor([0])
    keep_all = torch.ones(512)
    scores = maxima[0].tolist()
    by_hand = -scores[0] + math.log(sum(math.exp(s) for s in scores))
    assert losses.separation_loss(f, targets, keep_all).item() == pytest.approx(by_hand, abs=1e-5)

    # Dropped channels are zeroed, not removed: dropping group 0's maximum (2.0) leaves 0 as its max,
    # since its other features are all negative; group 4 falls back to its next value (0.7).
    f[:, 73 * 4 + 6] = 0.7
    drop = torch.ones(512)
    drop[5] = 0.0
    drop[73 * 4 + 5] = 0.0
    dropped_scores = [0.0, -1.0, 0.5, 0.0, 0.7, -3.0, 0.25]
    by_hand = -dropped_scores[0] + math.log(sum(math.exp(s) for s in dropped_scores))
    assert losses.separation_loss(f, targets, drop).item() == pytest.approx(by_hand, abs=1e-5)


def test_total_loss_weights_ce_div_and_sep_as_the_paper():
    torch.manual_seed(2)
    logits = torch.randn(4, 7, requires_grad=True)
    f = torch.randn(4, 512, requires_grad=True)
    y = torch.tensor([0, 3, 6, 2])
    drop = losses.channel_drop_mask(generator=torch.Generator().manual_seed(0))
    terms = losses.cafe_loss(logits, f, y, drop)
    ce = torch.nn.functional.cross_entropy(logits, y)
    div = losses.diversity_loss(f)
    sep = losses.separation_loss(f, y, drop)
    assert terms.total.item() == pytest.approx((ce + 5 * div + 1.5 * sep).item(), abs=1e-5)
    assert terms.as_floats()["sep"] == pytest.approx(sep.item())
    terms.total.backward()
    assert f.grad is not None and logits.grad is not None
    # L_div and L_sep only reach the channels that are some group's maximum, plus the head via logits.
    assert (f.grad[:, 511] == 0).all()

    custom = losses.cafe_loss(logits, f, y, drop, div_weight=0.0, sep_weight=0.0)
    assert custom.total.item() == pytest.approx(ce.item(), abs=1e-6)


def test_losses_refuse_shapes_that_do_not_fit_the_groups():
    with pytest.raises(ValueError, match="one channel group per class"):
        losses.cafe_loss(torch.zeros(2, 5), torch.zeros(2, 512), torch.tensor([0, 1]), torch.ones(512))
    with pytest.raises(ValueError, match=r"\[batch, channels\]"):
        losses.group_max(torch.zeros(512))
    with pytest.raises(ValueError, match="do not fit"):
        losses.channel_drop_mask(num_channels=500)
    with pytest.raises(ValueError, match="drop_per_block"):
        losses.channel_drop_mask(drop_per_block=80)
