"""Review fixes of the fine-tuning loop: float32 margin heads under autocast, the head left out of gradient
clipping, per-rank ElasticArcFace margins and global AdaFace statistics under DDP, the lr rule for the
user's batches, teacher_cache without indices, cosine after warm-up, non-finite gradients without clipping."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_tiny import join_gloo as _join, spawn_two_ranks, tiny_data, tiny_pair

from qfair.train import IndexedSource, fit
from qfair.train.heads import HEADS, AdaFace, ElasticArcFace, create_head
from qfair.train.losses import combined_loss
from qfair.train.optim import lr_at
from qfair.train.teacher import TeacherCache
from qfair.utils.errors import ConfigError, DataError


def _x(images):
    return (images.float() / 255 - 0.5) / 0.5


def _autocast_or_skip(dtype):
    try:
        with torch.autocast("cpu", dtype=dtype):
            F.linear(torch.ones(1, 2), torch.ones(2, 2))
    except (RuntimeError, TypeError) as exc:  # pragma: no cover - older CPU builds
        pytest.skip(f"CPU autocast with {dtype} unavailable: {exc}")
    return torch.autocast("cpu", dtype=dtype)


def _near_centres(head, noise=1e-4):
    g = torch.Generator().manual_seed(0)
    w = head.weight.detach()[:2]
    return (w * 100 + noise * torch.randn(w.shape, generator=g)).requires_grad_(True), torch.tensor([0, 1])


# ---- 1. margin heads in float32 under autocast


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", HEADS.names())
def test_heads_compute_float32_logits_and_finite_gradients_under_autocast(name, dtype):
    torch.manual_seed(0)
    head = create_head(name, 8, 4)
    emb, y = _near_centres(head)  # cos ~ 1 - 1e-12 with the centre: float16 / bfloat16 round it to 1
    ref_loss = head(emb, y)  # float32, no autocast
    (ref_grad,) = torch.autograd.grad(ref_loss, emb)
    torch.manual_seed(0)
    head = create_head(name, 8, 4)  # the same weights, statistics and (ElasticArcFace) margins again
    with _autocast_or_skip(dtype):
        loss = head(emb, y)
        assert head.logits(emb, y).dtype == torch.float32 and head.cosines(emb).dtype == torch.float32
        assert float(head.cosines(emb).detach().max()) < 1.0  # before: 1.0 (rounded), acos' gradient infinite
    (grad,) = torch.autograd.grad(loss, emb)
    assert loss.dtype == torch.float32
    assert torch.isfinite(grad).all() and torch.isfinite(loss)
    assert torch.allclose(loss, ref_loss, rtol=1e-5) and torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-9)


class _PlainArc(nn.Module):
    """A caller's head that does nothing about autocast itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(4, 8))

    def forward(self, emb, labels):
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels.view(-1, 1))) + 0.5)
        return F.cross_entropy(cos.scatter(1, labels.view(-1, 1), target) * 64, labels)


def test_combined_loss_runs_a_callers_head_in_float32_under_autocast():
    head = _PlainArc()
    emb, y = _near_centres(head)
    with _autocast_or_skip(torch.float16):
        parts = combined_loss(emb.half(), None, head=head, labels=y)
        assert parts.margin.dtype == torch.float32
    (grad,) = torch.autograd.grad(parts.total, emb)
    assert torch.isfinite(grad).all()  # before: Inf (acos of a float16 cosine of 1)


# ---- 2. the head is not clipped


def _one_step_grads(grad_clip):
    student, teacher = tiny_pair()
    images, labels, _ = tiny_data()
    torch.manual_seed(1)
    head = create_head("arcface", 8, 6)
    got = {}

    def grab(step, rec):
        got["head"] = head.weight.grad.clone()
        got["student"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in student.parameters()]))

    fit(student, teacher, [(_x(images[:16]), labels[:16])], head=head, steps=1, lr=0.01, kd_weight=10000.0,
        margin="arcface", grad_clip=grad_clip, range_update_steps=0, callbacks=[grab])
    return got


def test_gradient_clipping_leaves_the_margin_head_alone(one_thread):
    clipped, free = _one_step_grads(5.0), _one_step_grads(0.0)
    assert float(free["student"]) > 100  # lambda 10000: far above the clip norm
    assert float(clipped["student"]) == pytest.approx(5.0, rel=1e-4)  # the student (backbone) is clipped
    # the head's gradient is the unclipped one (before: scaled by 5 / the joint norm, ~1e-3)
    assert torch.equal(clipped["head"], free["head"])


# ---- 3. / 4. DDP: per-rank ElasticArcFace margins, global AdaFace statistics (simulated collectives)


def _simulated_reduce(others):
    """An in-place 'sum over the processes' where the other processes contribute ``others``."""
    return lambda t: t.add_(others.to(t))


def test_elastic_margins_are_this_ranks_slice_of_one_global_draw():
    counts = [3, 5]  # labelled samples of rank 0 and rank 1 (unequal: unlabelled samples of a mixed batch)
    single = ElasticArcFace(8, 4)
    torch.manual_seed(7)
    whole = single._draw(sum(counts), torch.device("cpu"))
    after_one = torch.get_rng_state()
    got, states = [], []
    for rank in (0, 1):
        other = torch.zeros(2, dtype=torch.float64)
        other[1 - rank] = counts[1 - rank]
        head = ElasticArcFace(8, 4)
        head.set_distributed(rank, 2, _simulated_reduce(other))
        torch.manual_seed(7)
        got.append(head._draw(counts[rank], torch.device("cpu")))
        states.append(torch.get_rng_state())
    assert not torch.equal(got[0][:3], got[1][:3])  # before: every rank drew the same margins
    assert torch.equal(torch.cat(got), whole)  # the margins one process with the whole batch draws
    # every rank consumed the same random numbers (resume restores rank 0's RNG state on every rank)
    assert torch.equal(states[0], after_one) and torch.equal(states[1], after_one)
    # a rank without labelled samples takes part in the draw too
    head = ElasticArcFace(8, 4)
    head.set_distributed(1, 2, _simulated_reduce(torch.tensor([8.0, 0.0], dtype=torch.float64)))
    torch.manual_seed(7)
    head.idle_step()
    idle = torch.get_rng_state()
    torch.manual_seed(7)
    torch.normal(0.5, 0.05, size=(8,))
    assert torch.equal(idle, torch.get_rng_state())
    head.set_distributed()  # one process again
    torch.manual_seed(7)
    assert torch.equal(head._draw(4, torch.device("cpu")), whole[:4])


def test_adaface_statistics_are_those_of_the_global_batch():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 8, generator=g) * 3
    b = torch.randn(3, 8, generator=g) * 9 + 1
    one = AdaFace(8, 4)
    one.margin_scaler(torch.cat([a, b]))
    nb = b.norm(dim=1).clamp(0.001, 100.0).double()
    rank0 = AdaFace(8, 4)
    rank0.set_distributed(0, 2, _simulated_reduce(torch.stack([torch.tensor(3.0).double(), nb.sum(),
                                                               (nb * nb).sum()])))
    rank0.margin_scaler(a)
    alone = AdaFace(8, 4)
    alone.margin_scaler(a)
    assert not torch.allclose(alone.batch_std, one.batch_std, rtol=1e-4)  # before: rank 0's own statistics
    assert torch.allclose(rank0.batch_mean, one.batch_mean, rtol=1e-6)
    assert torch.allclose(rank0.batch_std, one.batch_std, rtol=1e-6)


DDP_KW = {"steps": 3, "lr": 0.05, "margin_weight": 0.5, "freeze_bn": True, "checkpoint_every": 0,
          "range_update_steps": 0}


def _ddp_setup(margin):
    student, teacher = tiny_pair()
    images, labels, _ = tiny_data()
    labels = labels.clone()
    # unlabelled samples (each rank's 4 rows of a batch hold 3 labelled ones: the per-process mean of the margin
    # loss then weighs samples as one process does; unequal counts are checked in the tests above)
    labels[::4] = -1
    src = IndexedSource(images, labels, None, batch_size=8, seed=2, shuffle=False, hflip=False)
    torch.manual_seed(3)
    head = create_head(margin, 8, 6)
    return student, teacher, src, head


def _run(margin):
    student, teacher, src, head = _ddp_setup(margin)
    margins = []
    fit(student, teacher, src, head=head, margin=margin, **DDP_KW,
        callbacks=[lambda s, r: margins.append(getattr(head, "last_margins", None))])
    return student, head, margins


def _ddp_worker(rank, world, port, out, margin):
    import torch.distributed as dist

    _join(rank, world, port)
    try:
        student, teacher = tiny_pair()
        images, _, _ = tiny_data()
        try:  # the total batch of the user's batches is measured: 7 cannot be split over 2 processes
            fit(student, teacher, [_x(images[:7])], steps=1)
            odd = "no error"
        except ConfigError as exc:
            odd = str(exc)
        student, head, margins = _run(margin)
        state = {k: v.clone() for k, v in student.state_dict().items()}
        state.update({f"head.{k}": v.clone() for k, v in head.state_dict().items()})
        torch.save({"state": state, "margins": margins, "odd": odd}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("margin", ["elasticarcface", "adaface"])
def test_two_gloo_ranks_match_one_process_with_margin_heads(tmp_path, margin):
    r0, r1 = spawn_two_ranks(_ddp_worker, tmp_path, margin)
    assert "batch_size 7 cannot be split evenly over 2 processes" in r0["odd"]
    student, head, margins = _run(margin)
    ref = {**student.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}
    for k, v in ref.items():
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks disagree on {k}"
        assert torch.allclose(r0["state"][k], v, atol=1e-5, rtol=1e-4), k  # before (adaface): rank 0's statistics
    if margin == "elasticarcface":
        for step, (a, b, one) in enumerate(zip(r0["margins"], r1["margins"], margins)):
            n = min(len(a), len(b))
            assert not torch.equal(a[:n], b[:n]), step  # before: the same margins on every rank
            assert torch.equal(torch.cat([a, b]), one), step  # the global batch's margins, split by rank


# ---- 5. lr scaling rule for the user's batches


class _Reiterable:
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


@pytest.mark.parametrize("kind", ["list", "iterator", "reiterable"])
def test_lr_rule_uses_the_size_of_the_users_batches(kind, one_thread):
    images, _, _ = tiny_data()
    items = [_x(images[i:i + 8]) for i in range(0, 48, 8)]
    data = {"list": items, "iterator": iter(items), "reiterable": _Reiterable(items)}[kind]
    student, teacher = tiny_pair()
    res = fit(student, teacher, data, steps=6, log_every=1, range_update_steps=0, batch_size=128)
    assert res.steps == 6
    assert res.history[0]["lr"] == pytest.approx(0.1 * 8 / 512)  # before: 0.025, the rule at batch_size 128
    # the batch looked at first is still trained on, in its place: the same weights as with the list
    ref, teacher = tiny_pair()
    fit(ref, teacher, items, steps=6, lr=0.1 * 8 / 512, range_update_steps=0)
    for k, v in ref.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k


# ---- 6. teacher_cache needs indexed batches


def test_teacher_cache_with_batches_without_index_is_refused_before_training():
    images, labels, _ = tiny_data()
    student, teacher = tiny_pair()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cache = TeacherCache(F.normalize(torch.randn(48, 8), dim=1))
    batches = [(_x(images[i:i + 8]), labels[i:i + 8]) for i in range(0, 48, 8)]
    with pytest.raises(ConfigError, match="teacher_cache .* no index"):  # before: KD silently off (kd NaN)
        fit(student, None, batches, teacher_cache=cache, steps=3, margin="arcface", lr=0.01)
    with pytest.raises(ConfigError, match="teacher_cache"):
        fit(student, teacher, batches, teacher_cache=cache, steps=3, lr=0.01)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    # a later batch without index: stopped at that step, not trained without KD
    mixed = [{"images": _x(images[:8]), "labels": labels[:8], "index": torch.arange(8)}, (_x(images[8:16]),
                                                                                          labels[8:16])]
    with pytest.raises(DataError, match="step|no dataset index"):
        fit(student, None, mixed, teacher_cache=cache, steps=2, margin="arcface", lr=0.01)
    # an indexed source: KD from the cache
    res = fit(tiny_pair()[0], None, IndexedSource(images, labels, batch_size=8, seed=0, hflip=False),
              teacher_cache=cache, steps=2, log_every=1, lr=0.01, range_update_steps=0)
    assert all(math.isfinite(r["kd"]) for r in res.history)


# ---- 7. cosine schedule after warm-up


def test_cosine_starts_after_the_warmup_and_reaches_the_peak():
    kw = {"lr": 2.0, "total_steps": 20, "schedule": "cosine", "warmup_steps": 5, "min_lr_ratio": 0.1}
    lrs = [lr_at(s, **kw) for s in range(21)]
    assert lrs[:5] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])  # linear warm-up to the peak
    assert max(lrs) == pytest.approx(2.0)  # before: about 1.62 at most (the cosine decayed during warm-up)
    assert lrs[5] == pytest.approx(2.0)  # the cosine starts at the peak...
    assert lrs[20] == pytest.approx(0.2)  # ...and ends at min_lr_ratio * lr
    t = (12 - 5) / 15
    assert lrs[12] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))))
    assert all(lrs[s] >= lrs[s + 1] for s in range(5, 20))
    # without warm-up the curve is the plain cosine; step schedules keep absolute milestones
    assert lr_at(3, **{**kw, "warmup_steps": 0}) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(
        math.pi * 3 / 20))))
    assert lr_at(6, lr=1.0, total_steps=20, schedule="step", milestones=[6], warmup_steps=5) == pytest.approx(0.1)


# ---- 8. non-finite gradients stop training, also without clipping


@pytest.mark.parametrize("where,grad_clip", [("student", 0.0), ("head", 0.0), ("head", 5.0)])
def test_a_nan_gradient_stops_before_the_optimizer_step(where, grad_clip):
    images, labels, _ = tiny_data()
    student, teacher = tiny_pair()
    head = create_head("arcface", 8, 6)
    param = student.fc.weight if where == "student" else head.weight
    param.register_hook(lambda g: g * float("nan"))  # the loss stays finite
    before = {k: v.clone() for k, v in [*student.named_parameters(), *head.named_parameters()]}
    with pytest.raises(DataError, match="diverged at step 1: the gradient norm became nan"):
        fit(student, teacher, [(_x(images[:8]), labels[:8])], head=head, margin="arcface", steps=2, lr=0.01,
            grad_clip=grad_clip, range_update_steps=0)
    # before: with grad_clip 0 the NaN went into the weights (and with clipping a head's NaN was missed too)
    after = dict([*student.named_parameters(), *head.named_parameters()])
    assert all(torch.equal(before[k], after[k]) for k in before)
