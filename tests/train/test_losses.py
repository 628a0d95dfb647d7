"""KD losses and the combined loss against hand formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from qfair.train.losses import KD_LOSSES, combined_loss, kd_cosine, kd_mse
from qfair.utils.errors import ConfigError


def test_mse_hand_vector():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0], [0.0, 5.0]])
    # unit: s -> (0.6, 0.8), (1, 0); t -> (0, 1), (0, 1)
    want = torch.tensor([((0.6 - 0) ** 2 + (0.8 - 1) ** 2) / 2, (1 + 1) / 2])
    assert torch.allclose(kd_mse(s, t), want, atol=1e-6)


def test_mse_batch_mean_is_reference_mse():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    ref = F.mse_loss(F.normalize(s), F.normalize(t))  # mean over B x D, as the reference recipes
    assert torch.allclose(kd_mse(s, t).mean(), ref, atol=1e-7)


def test_cosine_hand_vector():
    s = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    want = torch.tensor([1 - 1 / math.sqrt(2), 2.0])
    assert torch.allclose(kd_cosine(s, t), want, atol=1e-6)


@pytest.mark.parametrize("name", KD_LOSSES.names())
def test_every_kd_loss_is_zero_for_scaled_copies_and_differentiable(name):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(4, 8, generator=g)
    s = (3.0 * t).requires_grad_(True)
    fn = KD_LOSSES.get(name)
    assert fn(s, t).abs().max() < 1e-6
    s2 = torch.randn(4, 8, generator=g, requires_grad=True)
    fn(s2, t).mean().backward()
    assert s2.grad is not None and torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ConfigError, match="projection"):
        kd_mse(torch.randn(2, 4), torch.randn(2, 8))


class _ConstHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, emb, labels):
        self.seen = (emb.clone(), labels.clone())
        return self.w * emb.sum()


def test_combined_loss_is_margin_plus_lambda_kd_with_weights_and_unlabelled():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 2.0], [0.0, 5.0], [0.0, 1.0]])
    labels = torch.tensor([0, -1, 1])
    w = torch.tensor([2.0, 1.0, 0.0])
    head = _ConstHead()
    parts = combined_loss(s, t, kd="mse", kd_weight=10.0, head=head, labels=labels, margin_weight=0.5,
                          sample_weights=w)
    kd = (kd_mse(s, t) * w).mean()
    margin = 2.0 * (s[0].sum() + s[2].sum())  # the unlabelled row (label -1) never reaches the head
    assert torch.allclose(parts.total, 0.5 * margin + 10.0 * kd)
    assert torch.equal(head.seen[1], torch.tensor([0, 1]))
    assert torch.allclose(parts.kd_per_sample, kd_mse(s, t))


def test_combined_loss_kd_only_and_margin_only():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(combined_loss(s, t).total, kd_mse(s, t).mean())
    head = _ConstHead()
    only = combined_loss(s, None, head=head, labels=torch.tensor([0, 1, 1]))
    assert torch.allclose(only.total, 2.0 * s.sum())
