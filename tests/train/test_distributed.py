"""DDP on CPU (gloo, 2 processes): same weights and activation ranges as 1 process with the same total batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from train_tiny import tiny_data, tiny_pair

from qfair.quant import QuantConfig, quantize
from qfair.train import IndexedSource, fit

KW = dict(steps=6, lr=0.05, range_update_steps=4, margin="arcface", margin_weight=0.1, fair_kd=True,
          freeze_bn=True, hflip=True, log_every=2)


def _setup():
    student, teacher = tiny_pair()
    images, labels, groups = tiny_data()
    x = (images.float() / 255 - 0.5) / 0.5
    q = quantize(student, QuantConfig(bits=6), [x[:16]])
    src = IndexedSource(images, labels, groups, batch_size=8, seed=4, hflip=True, group_names=["a", "b", "c"])
    return q, teacher, src


def _worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        q, teacher, src = _setup()
        res = fit(q, teacher, src, **KW)
        state = {k: v.clone() for k, v in q.state_dict().items()}
        state["__loss"] = torch.tensor(res.loss)
        torch.save(state, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    q, teacher, src = _setup()
    res = fit(q, teacher, src, **KW)
    ref = q.state_dict()
    for k, v in ref.items():
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
        assert torch.allclose(r0[k], v, atol=1e-5, rtol=1e-4), k
    # the activation range covers both shards, as one process's does (exact for min/max ranges)
    key = "act.output_quantizer.scale"
    assert torch.allclose(r0[key], ref[key], rtol=1e-6)
    assert float(r0["__loss"]) == pytest.approx(res.loss, rel=1e-4)


def _observer_worker(rank, world, port, out, observer):
    import torch.distributed as dist

    from qfair.quant.quantizer import ActQuantizer
    from qfair.train.ranges import synced_ranges

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = torch.nn.Sequential(ActQuantizer(bits=8, symmetric=False, observer=observer,
                                             observer_options=_OPTIONS.get(observer)))
        m[0].track()
        for b in _observer_batches():
            shard = b[:5] if rank == 0 else b[5:]  # uneven shards, as the last batch of an epoch
            with synced_ranges(m, active=True):
                m(shard)
        torch.save({"scale": m[0].scale.clone(), "zp": m[0].zero_point.clone()}, f"{out}/obs{rank}.pt")
        dist.barrier()  # neither rank tears gloo down while the other is still in a collective
    finally:
        dist.destroy_process_group()


_OPTIONS = {"percentile": {"percentile": 99.0}}  # the default 99.99 is the max on so few values


def _observer_batches():
    g = torch.Generator().manual_seed(0)
    # heavy-tailed activations: a percentile range differs clearly from the min/max one
    return [torch.randn(9, 4, 6, 6, generator=g) ** 3 for _ in range(3)]


@pytest.mark.slow
@pytest.mark.parametrize("observer", ["percentile", "mse", "minmax"])
def test_two_ranks_observe_the_global_batch_for_every_observer(tmp_path, observer):
    from qfair.quant.quantizer import ActQuantizer

    mp.spawn(_observer_worker, args=(2, _free_port(), str(tmp_path), observer), nprocs=2, join=True)
    one = ActQuantizer(bits=8, symmetric=False, observer=observer, observer_options=_OPTIONS.get(observer))
    one.track()
    for b in _observer_batches():
        one(b)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"obs{rank}.pt", weights_only=True)
        # before: histogram observers saw only [global min, global max] and ended with the min/max range
        assert torch.allclose(got["scale"], one.scale, rtol=1e-6), (observer, got["scale"], one.scale)
        assert torch.equal(got["zp"], one.zero_point)


def _nan_worker(rank, world, port, out):
    """Rank 1's teacher returns NaN from its third call on: only rank 1's loss is non-finite."""
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a short timeout: a rank left waiting in backward's all-reduce fails within seconds instead of 30 minutes
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    student, teacher = tiny_pair()
    images, labels, groups = tiny_data()
    src = IndexedSource(images, labels, groups, batch_size=8, seed=4, group_names=["a", "b", "c"])
    calls = []
    if rank == 1:
        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 3 else output
        teacher.register_forward_hook(poison)
    try:
        fit(student, teacher, src, steps=6, lr=0.05)
        outcome = "finished"
    except Exception as exc:  # noqa: BLE001 - the test records what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    mp.spawn(_nan_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert r1.startswith("DataError: training diverged at step 3: the loss became nan"), r1
    assert r0.startswith("DataError: training diverged at step 3: the loss became NaN or Inf in 1 other"), r0
