"""Review fixes (DDP, round 4): the margin term under DDP with unequal labelled counts per process is the mean over
the global batch's labelled rows (was: each process's own mean, averaged over processes; NaN in the log where a
process had no labelled row)."""
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from train_tiny import free_port as _free_port, join_gloo as _join, tiny_data, tiny_pair

from qfair.train import IndexedSource, MixedSource, fit
from qfair.train.heads import create_head
from qfair.train.losses import combined_loss, global_margin_mean


# ---------------------------------------------------------------------------- in one process
def _emb_head():
    torch.manual_seed(3)
    emb = torch.randn(8, 8, requires_grad=True)
    labels = torch.tensor([0, -1, 3, -1, 5, -1, -1, -1])  # 3 labelled rows: 2 on "rank 0", 1 on "rank 1"
    return emb, labels, create_head("arcface", 8, 6)


def test_one_process_margin_is_bit_identical_inside_the_context():
    emb, labels, head = _emb_head()
    calls = []

    def reduce(t):
        calls.append(t)
        return t

    plain = combined_loss(emb, None, head=head, labels=labels, margin_weight=0.5)
    with global_margin_mean(1, reduce):
        inside = combined_loss(emb, None, head=head, labels=labels, margin_weight=0.5)
    assert not calls  # W = 1: no count, no rescale
    assert torch.equal(plain.total, inside.total) and torch.equal(plain.margin, inside.margin)
    g1 = torch.autograd.grad(plain.total, [emb, head.weight])
    g2 = torch.autograd.grad(inside.total, [emb, head.weight])
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_shares_of_simulated_processes_average_to_the_global_mean_and_gradient():
    emb, labels, head = _emb_head()
    ref = combined_loss(emb, None, head=head, labels=labels)
    ref_grads = torch.autograd.grad(ref.total, [emb, head.weight])
    n_glob = int((labels >= 0).sum())
    terms, grads = [], []
    for rows in (slice(0, 4), slice(4, 8)):  # "rank 0" has 2 labelled rows, "rank 1" 1
        with global_margin_mean(2, lambda t: t.fill_(n_glob)):  # the all-reduced count
            part = combined_loss(emb[rows], None, head=head, labels=labels[rows])
        terms.append(part.margin.detach())
        grads.append(torch.autograd.grad(part.total, [emb, head.weight]))
    assert torch.allclose(sum(terms) / 2, ref.margin.detach(), rtol=1e-6)  # the logged sum / W
    for i in range(2):  # DDP's gradient: the average over the processes
        assert torch.allclose((grads[0][i] + grads[1][i]) / 2, ref_grads[i], rtol=1e-5, atol=1e-7)
    # a process without labelled rows: a share of 0, not NaN, and the head still in the graph
    with global_margin_mean(2, lambda t: t.fill_(n_glob)):
        idle = combined_loss(emb[5:], None, head=head, labels=labels[5:])
    assert idle.margin is not None and float(idle.margin) == 0.0
    assert torch.equal(torch.autograd.grad(idle.total, head.weight)[0], torch.zeros_like(head.weight))


# ---------------------------------------------------------------------------- two processes (gloo)
KW = {"steps": 3, "lr": 0.05, "margin": "arcface", "margin_weight": 1.0, "kd_weight": 1.0, "freeze_bn": True,
      "log_every": 1, "grad_clip": 0, "num_classes": 6}
RATIOS = (3 / 8, 1 / 8)  # labelled rows per global batch of 8: 3 -> [2, 1] over 2 processes; 1 -> [1, 0]


def _mixed(n1_ratio):
    images, labels, groups = tiny_data()
    real = IndexedSource(images[:24], labels[:24], groups[:24], batch_size=8, seed=1)
    syn = IndexedSource(images[24:], None, None, batch_size=8, seed=2)
    return MixedSource(real, syn, n1_ratio, batch_size=8)


def _run(n1_ratio):
    student, teacher = tiny_pair()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "does not split evenly")
        res = fit(student, teacher, _mixed(n1_ratio), **KW)
    return student.state_dict(), [(r["loss"], r["kd"], r["margin"]) for r in res.history]


def _worker(rank, world, port, out):
    import torch.distributed as dist

    _join(rank, world, port)
    try:
        for i, ratio in enumerate(RATIOS):
            state, logged = _run(ratio)
            state = {k: v.clone() for k, v in state.items()}
            state["__logged"] = torch.tensor(logged, dtype=torch.float64)
            state["__labelled"] = torch.tensor([int((b.labels >= 0).sum()) for b in _mixed(ratio).epoch(0, 0, rank,
                                                                                                      world)])
            torch.save(state, f"{out}/r{i}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_margin_with_unequal_labelled_counts_matches_one_process(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for i, ratio in enumerate(RATIOS):
        r0, r1 = (torch.load(tmp_path / f"r{i}_{r}.pt", weights_only=True) for r in (0, 1))
        n0, n1 = r0.pop("__labelled"), r1.pop("__labelled")
        assert int(n0[0]) != int(n1[0]) and int(n0[0] + n1[0]) == round(8 * ratio)  # unequal counts per process
        state, logged = _run(ratio)
        logged = torch.tensor(logged, dtype=torch.float64)
        for r in (r0, r1):
            got = r.pop("__logged")
            # was: the margin weighted per process (3 rows: 2 vs 1) and NaN where a process had none
            assert torch.isfinite(got).all(), (ratio, got)
            assert torch.allclose(got, logged, rtol=1e-4, atol=1e-6), (ratio, got, logged)
            for k, v in state.items():
                assert torch.allclose(r[k], v, atol=1e-5, rtol=1e-4), (ratio, k)
