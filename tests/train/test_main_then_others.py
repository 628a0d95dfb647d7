"""main_then_others: process 0 works first, the others follow; when process 0 fails, every process stops
(a barrier left the others waiting until the process group timed out)."""
import contextlib
import time

import pytest
import torch.multiprocessing as mp
from train_tiny import free_port, join_gloo

from qfair.train.distributed import main_then_others
from qfair.utils.errors import DataError, QfairError


def test_one_process_runs_the_main_function_only():
    calls = []
    assert main_then_others(lambda: calls.append("main") or 1, lambda: calls.append("other") or 2, what="x") == 1
    assert calls == ["main"]
    with pytest.raises(DataError, match="bad cache"):
        main_then_others(lambda: (_ for _ in ()).throw(DataError("bad cache")), what="x")


def _worker(rank, world, port, out, fail):
    import torch.distributed as dist

    join_gloo(rank, world, port, timeout=30)
    order = []

    def on_main():
        time.sleep(0.3)  # the others must wait for it
        order.append(("main", time.monotonic()))
        if fail:
            raise DataError("teacher cache: disk full")
        return "built"

    def on_others():
        order.append(("other", time.monotonic()))
        return "read"

    start = time.monotonic()
    try:
        got = main_then_others(on_main, on_others, what="building the teacher cache in /x")
        outcome = f"ok {got}"
    except Exception as exc:  # noqa: BLE001 - the test records what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    waited = time.monotonic() - start
    with open(f"{out}/r{rank}.txt", "w") as f:
        f.write(f"{outcome}\n{[k for k, _ in order]}\n{waited:.2f}")
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def _run(tmp_path, fail):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), fail), nprocs=2, join=True)
    return [(tmp_path / f"r{r}.txt").read_text().splitlines() for r in (0, 1)]


@pytest.mark.slow
def test_the_others_follow_process_0(tmp_path):
    (o0, k0, _), (o1, k1, waited1) = _run(tmp_path, fail=False)
    assert (o0, k0) == ("ok built", "['main']") and (o1, k1) == ("ok read", "['other']")
    assert float(waited1) >= 0.25  # rank 1 ran its part only after rank 0 finished


@pytest.mark.slow
def test_a_failure_in_process_0_stops_every_process(tmp_path):
    (o0, _, _), (o1, k1, waited1) = _run(tmp_path, fail=True)
    assert o0 == "DataError: teacher cache: disk full"
    assert o1.startswith("QfairError: process 0 failed while building the teacher cache in /x"), o1
    assert k1 == "[]" and float(waited1) < 20  # was: rank 1 waited in barrier() until the 30 s timeout
    assert issubclass(DataError, QfairError)


def _distill_worker(rank, world, port, out):
    import torch
    import torch.distributed as dist

    from qfair.train import api

    join_gloo(rank, world, port, timeout=30)

    def build(teacher, source, cache_dir, **kw):
        if dist.get_rank() == 0:
            raise DataError(f"cannot write {cache_dir}: disk full")
        raise AssertionError("rank 1 must not build before rank 0 succeeded")

    api.TeacherCache.build = build  # this spawned process's own copy
    cfg = api.DistillConfig(teacher=f"{out}/t.pt", student_arch="iresnet18", student_kwargs={"width": 4},
                            steps=1, batch_size=8, data_n=16, margin="none", teacher_cache="auto", device="cpu")
    torch.manual_seed(0)
    start = time.monotonic()
    try:
        api.distill(cfg, f"{out}/d")
        outcome = "finished"
    except Exception as exc:  # noqa: BLE001 - the test records what each rank raised
        outcome = f"{type(exc).__name__}: {exc}"
    with open(f"{out}/d{rank}.txt", "w") as f:
        f.write(f"{outcome}\n{time.monotonic() - start:.2f}")
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


@pytest.mark.slow
def test_distill_stops_every_process_when_process_0_cannot_build_the_teacher_cache(tmp_path):
    import torch

    from qfair.models import create_model

    torch.manual_seed(0)
    torch.save(create_model("iresnet18", width=4, num_features=16).state_dict(), tmp_path / "t.pt")
    mp.spawn(_distill_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    (o0, _), (o1, waited1) = [(tmp_path / f"d{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert o0 == f"DataError: cannot write {tmp_path}/d/teacher_cache: disk full", o0
    assert o1.startswith("QfairError: process 0 failed while building the teacher cache in "), o1
    assert float(waited1) < 25  # was: rank 1 waited in barrier() until the 30 s process-group timeout
