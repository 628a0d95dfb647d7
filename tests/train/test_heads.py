"""Margin heads against hand formulas (element by element with Python's math module)."""
import math

import pytest
import torch
import torch.nn.functional as F

from qfair.train.heads import HEADS, AdaFace, ArcFace, CosFace, ElasticArcFace, create_head


def _setup(seed=0, b=4, d=6, c=5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g) * 3
    labels = torch.randint(0, c, (b,), generator=g)
    return emb, labels


def _cos_table(head, emb):
    e = F.normalize(emb.double(), dim=1)
    w = F.normalize(head.weight.detach().double(), dim=1)
    return (e @ w.t()).tolist()


def _ce(logits, labels):
    out = 0.0
    for row, y in zip(logits, labels.tolist()):
        m = max(row)
        out += -(row[y] - m - math.log(sum(math.exp(v - m) for v in row)))
    return out / len(logits)


def _hand_logits(head, emb, labels, target_fn):
    cos = _cos_table(head, emb)
    logits = []
    for i, row in enumerate(cos):
        y = int(labels[i])
        logits.append([head.s * (target_fn(i, c) if j == y else c) for j, c in enumerate(row)])
    return logits


def _arc(c, m):
    """The original ArcFace target (insightface ArcMarginProduct, easy_margin off)."""
    return math.cos(math.acos(c) + m) if c > math.cos(math.pi - m) else c - math.sin(math.pi - m) * m


def test_arcface_hand_formula():
    emb, labels = _setup()
    head = ArcFace(6, 5)
    want = _hand_logits(head, emb, labels, lambda i, c: _arc(c, 0.5))
    got = head.logits(emb, labels)
    assert head.s == 64.0 and head.m == 0.5
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-3)
    assert abs(float(head(emb, labels).detach()) - _ce(want, labels)) < 1e-3


@pytest.mark.parametrize("cls", [ArcFace, ElasticArcFace])
def test_arc_margin_target_falls_as_the_angle_grows_past_pi_minus_m(cls):
    # a 2-D embedding at angle theta from class 0's centre: a worse angle must never give a larger logit
    head = cls(2, 2).eval()
    head.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    thetas = torch.linspace(0.05, math.pi - 0.01, 400, dtype=torch.float64)
    emb = torch.stack([torch.cos(thetas), torch.sin(thetas)], 1).float()
    target = head.logits(emb, torch.zeros(400, dtype=torch.long))[:, 0].detach().double() / head.s
    assert bool((target[1:] <= target[:-1] + 1e-6).all())  # before: rose again past theta = pi - m
    want = torch.tensor([_arc(math.cos(t), 0.5) for t in thetas.tolist()], dtype=torch.float64)
    assert torch.allclose(target, want, atol=1e-4)
    assert float(target[thetas > 2.7][0]) < -1.14  # about -1.144 at theta 2.7 (was -0.998)


def test_cosface_hand_formula():
    emb, labels = _setup(1)
    head = CosFace(6, 5, s=30.0, m=0.35)
    want = _hand_logits(head, emb, labels, lambda i, c: c - 0.35)
    assert torch.allclose(head.logits(emb, labels).double(), torch.tensor(want, dtype=torch.float64), atol=1e-3)
    assert abs(float(head(emb, labels).detach()) - _ce(want, labels)) < 1e-3


def test_elastic_arcface_uses_one_margin_per_sample_from_n_m_sigma():
    emb, labels = _setup(2, b=64)
    head = ElasticArcFace(6, 5)
    assert (head.s, head.m, head.sigma) == (64.0, 0.5, 0.05)
    got = head.logits(emb, labels)
    margins = head.last_margins.tolist()
    want = _hand_logits(head, emb, labels, lambda i, c: _arc(c, margins[i]))
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-3)
    m = torch.tensor(margins)
    assert abs(float(m.mean()) - 0.5) < 0.03 and 0.02 < float(m.std()) < 0.08
    head.eval()  # evaluation: the fixed margin m, i.e. ArcFace
    arc = ArcFace(6, 5)
    arc.weight.data.copy_(head.weight.data)
    assert torch.allclose(head.logits(emb, labels), arc.logits(emb, labels))


def test_adaface_hand_formula_and_running_stats():
    emb, labels = _setup(3, b=6)
    head = AdaFace(6, 5)
    assert (head.s, head.m, head.h) == (64.0, 0.4, 0.333)
    norms = [float(math.sqrt(sum(v * v for v in row))) for row in emb.tolist()]
    mean = sum(norms) / len(norms)
    std = math.sqrt(sum((n - mean) ** 2 for n in norms) / (len(norms) - 1))
    mu = 0.99 * 20.0 + 0.01 * mean  # EMA with t_alpha = 0.01 from the initial (20, 100)
    sd = 0.99 * 100.0 + 0.01 * std
    z = [max(-1.0, min(1.0, 0.333 * (n - mu) / (sd + 1e-3))) for n in norms]

    def target(i, c):
        theta = min(max(math.acos(c) - 0.4 * z[i], 1e-7), math.pi - 1e-7)
        return math.cos(theta) - (0.4 + 0.4 * z[i])

    want = _hand_logits(head, emb, labels, target)
    got = head.logits(emb, labels)
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-3)
    assert abs(float(head.batch_mean) - mu) < 1e-4 and abs(float(head.batch_std) - sd) < 1e-4


def test_adaface_depends_on_feature_norms():
    """README references [6]: same directions, different norms -> different margins and loss. Feeding unit
    vectors would make every z identical (AdaFace degenerates to a CosFace-like fixed margin)."""
    emb, labels = _setup(4, b=8)
    head = AdaFace(6, 5, h=1.0)
    head.batch_mean.fill_(5.0)
    head.batch_std.fill_(2.0)
    head.eval()  # freeze the running statistics for the comparison
    scale = torch.tensor([0.5, 1, 2, 4, 8, 1, 3, 6]).unsqueeze(1)
    a = head.logits(emb, labels)
    b = head.logits(emb * scale, labels)
    assert not torch.allclose(a, b)
    # non-target logits depend on directions only
    mask = F.one_hot(labels, 5).bool()
    assert torch.allclose(a[~mask], b[~mask])
    unit = head.margin_scaler(F.normalize(emb))
    assert torch.allclose(unit, unit[0].expand_as(unit))  # all samples get the same margin
    assert head.margin_scaler(emb * scale).std() > 0.1


@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_trains(name):
    emb, labels = _setup(5, b=16, c=4)
    emb.requires_grad_(True)
    head = create_head(name, 6, 4)
    loss = head(emb, labels)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0


def test_create_head_ignores_none_overrides_and_rejects_unknown():
    h = create_head("arcface", 4, 3, s=None, m=0.3)
    assert h.s == 64.0 and h.m == 0.3
    from qfair.utils.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="arcface"):
        create_head("arcfce", 4, 3)
