"""Review fixes (data side): mixed batches under DDP, teacher-cache keys of image stores, the cache's device,
and processes agreeing on NaN during range tracking."""
import contextlib
import hashlib

import pytest
import torch
import torch.multiprocessing as mp
from train_tiny import free_port as _free_port, join_gloo as _join, tiny_data, tiny_pair

from qfair.train import IndexedSource, MixedSource, fit
from qfair.train.batches import mix_pattern
from qfair.train.distributed import ranks_flagging
from qfair.train.teacher import TeacherCache, source_digest
from qfair.utils.digest import tensor_digest


# ---------------------------------------------------------------------------- 1. mixed batches and ranks
@pytest.mark.parametrize("n1,total", [(4, 8), (6, 8), (3, 8), (1, 8), (7, 8), (5, 12), (9, 12), (24, 32)])
def test_mix_pattern_gives_every_rank_its_share_of_each_source(n1, total):
    mask = mix_pattern(n1, total)
    assert mask.shape == (total,) and int(mask.sum()) == n1 and bool(mask[0])
    for world in (w for w in range(1, total + 1) if total % w == 0):
        per = [int(mask[r * total // world:(r + 1) * total // world].sum()) for r in range(world)]
        assert sum(per) == n1
        if n1 % world == 0:
            assert per == [n1 // world] * world, (world, per)
        else:  # as even as possible
            assert set(per) <= {n1 // world, n1 // world + 1}, (world, per)


def _mixed(store=lambda x: x, hflip=True, n1_ratio=0.5, batch_size=8):
    images, labels, groups = tiny_data()
    real = IndexedSource(store(images[:24]), labels[:24], groups[:24], batch_size=8, seed=1, hflip=hflip)
    syn = IndexedSource(store(images[24:]), None, None, batch_size=8, seed=2, hflip=hflip)
    return MixedSource(real, syn, n1_ratio, batch_size=batch_size)


@pytest.mark.parametrize("store", [lambda x: x, list], ids=["tensor", "list"])
def test_mixed_rank_slices_hold_both_sources_and_concatenate_to_the_one_process_batch(store):
    mix = _mixed(store)
    full = list(mix.epoch(1))
    assert len(full) == 6  # 24 / 4 of each source
    for world in (2, 4):
        shards = [list(mix.epoch(1, rank=r, world=world)) for r in range(world)]
        for b, parts in enumerate(zip(*shards)):
            for name in ("images", "labels", "index", "flipped"):
                assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(full[b], name)), name
            for p in parts:  # was: rank 0 all labelled rows, the last ranks none
                assert int((p.labels >= 0).sum()) == 4 // world and int((p.index < 24).sum()) == 4 // world
    # every row's image is its index's image, mirrored where flagged
    for b in full:
        for img, i, f in zip(b.images, b.index, b.flipped):
            src, j = (mix.first, int(i)) if i < 24 else (mix.second, int(i) - 24)
            want = src.load(torch.tensor([j]))[0]
            assert torch.equal(img, want.flip(-1) if f else want)
    assert any(bool(b.flipped.any()) for b in full)


def test_mixed_order_resumes_mid_epoch_and_a_rank_with_one_source_loads_from_a_store():
    mix = _mixed(list)
    full = [b.index.tolist() for b in mix.epoch(2)]
    assert [b.index.tolist() for b in mix.epoch(2, start=1)] == full[1:]
    one = _mixed(list, n1_ratio=0.125)  # 1 real + 7 synthetic rows: over 4 ranks, three get synthetic rows only
    with pytest.warns(UserWarning, match="does not split evenly over 4 processes"):
        parts = [next(iter(one.epoch(0, rank=r, world=4))) for r in range(4)]
    assert [int((p.index < 24).sum()) for p in parts] == [1, 0, 0, 0]
    assert torch.equal(torch.cat([p.images for p in parts]), next(iter(one.epoch(0))).images)


class _Stop(Exception):
    pass


def test_a_run_on_mixed_data_resumes_bit_exact(tmp_path, one_thread):
    settings = {"steps": 6, "lr": 0.05, "margin": "arcface", "margin_weight": 0.1, "num_classes": 6,
                "checkpoint_every": 2, "log_every": 1}

    def run(out, stop_at=None, resume=False):
        student, teacher = tiny_pair()

        def stopper(step, rec):
            if step == stop_at:
                raise _Stop

        try:
            fit(student, teacher, _mixed(list), out_dir=out, resume=resume, callbacks=[stopper], **settings)
        except _Stop:
            pass
        return student.state_dict()

    ref = run(tmp_path / "ref")
    run(tmp_path / "cut", stop_at=3)  # the last checkpoint is at step 2: resumes mid-epoch (6 batches an epoch)
    resumed = run(tmp_path / "cut", resume=True)
    for k, v in ref.items():
        assert torch.equal(resumed[k], v), k


KW = {"steps": 3, "lr": 0.05, "margin": "arcface", "margin_weight": 1.0, "kd_weight": 1.0, "freeze_bn": True,
      "log_every": 1, "grad_clip": 0, "num_classes": 6, "range_update_steps": 2}


def _mixed_run():
    from qfair.quant import QuantConfig, quantize

    student, teacher = tiny_pair()
    images = tiny_data()[0]
    q = quantize(student, QuantConfig(bits=6), [(images[:16].float() / 255 - 0.5) / 0.5])
    res = fit(q, teacher, _mixed(), **KW)
    return q, [(r["kd"], r["margin"]) for r in res.history]


def _mixed_worker(rank, world, port, out):
    import torch.distributed as dist

    _join(rank, world, port)
    try:
        q, logged = _mixed_run()
        state = {k: v.clone() for k, v in q.state_dict().items()}
        state["__logged"] = torch.tensor(logged)
        torch.save(state, f"{out}/mix{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_mixed_data_matches_one_process_margin_included(tmp_path):
    mp.spawn(_mixed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "mix0.pt", weights_only=True)
    q, logged = _mixed_run()
    # was: NaN (rank 1 had no labelled row), and the margin gradient was halved
    assert torch.isfinite(r0["__logged"]).all()
    assert torch.allclose(r0["__logged"], torch.tensor(logged), rtol=1e-4)
    for k, v in q.state_dict().items():
        assert torch.allclose(r0[k], v, atol=1e-5, rtol=1e-4), k


# ---------------------------------------------------------------------------- 2. teacher-cache keys
def test_stores_that_are_not_one_tensor_are_keyed_by_their_pictures(tmp_path):
    images = tiny_data()[0]
    a = IndexedSource(list(images), batch_size=8, hflip=False)
    b = IndexedSource(list(255 - images), batch_size=8, hflip=False)  # same count, type and name
    assert source_digest(a) != source_digest(b)
    assert source_digest(a) == source_digest(IndexedSource([x.numpy() for x in images], batch_size=8))
    one_pixel = images.clone()
    one_pixel[17, 2, 5, 5] ^= 1
    assert source_digest(a) != source_digest(IndexedSource(list(one_pixel), batch_size=8))
    # a tensor store keeps its former key (caches written before stay valid)
    h = hashlib.sha256()
    tensor_digest(h, images)
    assert source_digest(IndexedSource(images, batch_size=8)) == h.hexdigest()[:24]
    # the reviewer's case: b's cache was a's file (max error 1.70)
    teacher = tiny_pair()[1]
    ca, cb = TeacherCache.build(teacher, a, tmp_path), TeacherCache.build(teacher, b, tmp_path)
    assert ca.key != cb.key and len(list(tmp_path.glob("teacher-*.pt"))) == 2
    assert torch.allclose(cb.plain, TeacherCache.build(teacher, b, None).plain, atol=1e-6)


def test_a_source_with_its_own_load_is_keyed_by_what_the_teacher_sees():
    class Paths(IndexedSource):  # a lazy store: names, read by its own load
        def __init__(self, pics, **kw):
            super().__init__([f"img{i}.png" for i in range(len(pics))], batch_size=8, **kw)
            self.pics = pics

        def load(self, idx):
            return (self.pics[idx].float() / 255 - 0.5) / 0.5

    images = tiny_data()[0]
    assert source_digest(Paths(images)) != source_digest(Paths(255 - images))
    assert source_digest(Paths(images)) == source_digest(Paths(images.clone()))
    mix = MixedSource(Paths(images[:24]), IndexedSource(list(images[24:]), batch_size=1), 0.5, batch_size=8)
    swapped = MixedSource(Paths(images[:24]), IndexedSource(list(255 - images[24:]), batch_size=1), 0.5, batch_size=8)
    assert source_digest(mix) != source_digest(swapped)


# ---------------------------------------------------------------------------- 3. the cache's device
def test_cache_build_runs_the_teacher_on_the_given_device_and_moves_it_back():
    from train_tiny import Tiny

    seen = {"to": [], "input": []}

    class Recorder(Tiny):
        def to(self, *args, **kw):
            seen["to"].append(torch.device(args[0]))
            return super().to(*args, **kw)

        def forward(self, x):
            seen["input"].append(x.device)
            return super().forward(x)

    teacher = Recorder()
    teacher.train()
    cache = TeacherCache.build(teacher, IndexedSource(tiny_data()[0], batch_size=8), None, device="cpu")
    assert seen["to"] == [torch.device("cpu"), torch.device("cpu")]  # to the device, then back to where it was
    assert set(seen["input"]) == {torch.device("cpu")} and cache.plain.device.type == "cpu"
    assert teacher.training  # its mode restored


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cache_build_on_cuda_keeps_the_embeddings_on_the_cpu():
    teacher = tiny_pair()[1]
    src = IndexedSource(tiny_data()[0], batch_size=8)
    cache = TeacherCache.build(teacher, src, None, device="cuda")
    ref = TeacherCache.build(teacher, src, None, device="cpu")
    assert cache.plain.device.type == "cpu" and next(teacher.parameters()).device.type == "cpu"
    assert torch.allclose(cache.plain, ref.plain, atol=1e-4)


def test_distill_builds_the_teacher_cache_on_the_runs_device(tmp_path, monkeypatch):
    from qfair.train import api

    class _Stop(Exception):
        pass

    got = {}
    run_device = torch.device("cuda", 3)  # what 'auto' resolves to on rank 3 of a GPU node

    def fake_resolve(name, info):
        got["asked"] = name
        return run_device

    def fake_build(teacher, source, cache_dir, **kw):
        got.update(kw)
        raise _Stop

    monkeypatch.setattr(api, "resolve_device", fake_resolve)
    monkeypatch.setattr(api.TeacherCache, "build", fake_build)
    torch.manual_seed(0)
    from qfair.models import create_model

    torch.save(create_model("iresnet18", width=4, num_features=16).state_dict(), tmp_path / "t.pt")
    cfg = api.DistillConfig(teacher=str(tmp_path / "t.pt"), student_arch="iresnet18", student_kwargs={"width": 4},
                            steps=1, batch_size=8, data_n=16, margin="none")
    with pytest.raises(_Stop):
        api.distill(cfg, tmp_path / "d")
    assert got["asked"] == "auto" and got["device"] == run_device  # was: never passed, so the CPU


# ---------------------------------------------------------------------------- 4. NaN during range tracking
def _nan_tracking_worker(rank, world, port, out):
    import torch.distributed as dist

    from qfair.quant import QuantConfig, quantize

    _join(rank, world, port, timeout=20)
    assert ranks_flagging(rank == 1) == 1 and ranks_flagging(True) == world and ranks_flagging(False) == 0
    student, teacher = tiny_pair()
    images, labels, groups = tiny_data()
    q = quantize(student, QuantConfig(bits=6), [(images[:16].float() / 255 - 0.5) / 0.5])
    calls = []
    if rank == 1:  # rank 1's activations become NaN at step 2, while the ranges still track
        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 2 else output
        q.bn.register_forward_hook(poison)
    try:
        fit(q, teacher, IndexedSource(images, labels, groups, batch_size=8, seed=4), steps=4, lr=0.05,
            range_update_steps=3)
        outcome = "finished"
    except Exception as exc:  # noqa: BLE001 - the test records what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    from qfair.train.ranges import _GlobalObserver, act_quantizers

    left = [n for n, m in act_quantizers(q) if m._forward_pre_hooks or isinstance(m.observer, _GlobalObserver)]
    outcome += f"\nleft wrapped: {left}"  # synced_ranges removes its hooks and proxies also when a step raises
    with open(f"{out}/nan{rank}.txt", "w") as f:
        f.write(outcome)
    with contextlib.suppress(Exception):  # the peer may be gone already
        dist.destroy_process_group()


def _nan_outcomes(tmp_path):
    mp.spawn(_nan_tracking_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    return [(tmp_path / f"nan{r}.txt").read_text() for r in (0, 1)]


def test_ranks_flagging_in_one_process():
    assert ranks_flagging(True) == 1 and ranks_flagging(False) == 0


@pytest.mark.slow
def test_nan_during_range_tracking_stops_every_rank(tmp_path):
    r0, r1 = _nan_outcomes(tmp_path)
    # was: rank 0 waited in the observer's all_reduce until rank 1 left (RuntimeError) or the timeout
    for r in (r0, r1):
        assert r.startswith("DataError: training diverged at step 2: NaN or Inf reached the output of layer 'act'"), r
        assert r.endswith("\nleft wrapped: []"), r
    # rank 1 held the NaN; rank 0 says it was another process's (was: both read like the bad rank's)
    assert r0.startswith("DataError: training diverged at step 2: NaN or Inf reached the output of layer 'act' "
                         "in 1 other process(es)."), r0
    assert r1.startswith("DataError: training diverged at step 2: NaN or Inf reached the output of layer 'act'. "), r1
