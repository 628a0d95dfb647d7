"""--resume under DDP (2 gloo processes) with margin heads that draw or track across processes: stop after step
5, resume from the step-4 checkpoint, and end with the weights of the uninterrupted 2-process run."""
import contextlib

import pytest
import torch
from train_tiny import join_gloo, spawn_two_ranks, tiny_data, tiny_pair

from qfair.train import IndexedSource, fit
from qfair.train.heads import create_head

KW = {"steps": 7, "lr": 0.05, "margin_weight": 0.5, "checkpoint_every": 2, "range_update_steps": 3, "hflip": True}


class _Stop(Exception):
    pass


def _run(margin, out, stop_at=None, resume=False):
    from qfair.quant import QuantConfig, quantize

    student, teacher = tiny_pair()
    images, labels, groups = tiny_data()
    student = quantize(student, QuantConfig(bits=6), [(images[:16].float() / 255 - 0.5) / 0.5])
    src = IndexedSource(images, labels, groups, batch_size=8, seed=2, hflip=True)
    torch.manual_seed(3)
    head = create_head(margin, 8, 6)

    def stopper(step, rec):
        if step == stop_at:
            raise _Stop

    try:
        fit(student, teacher, src, head=head, margin=margin, out_dir=out, resume=resume, callbacks=[stopper],
            **{k: v for k, v in KW.items() if k != "hflip"})
    except _Stop:
        return None
    return {**student.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}


def _worker(rank, world, port, out, margin):
    import torch.distributed as dist

    join_gloo(rank, world, port)
    try:
        ref = _run(margin, f"{out}/ref")
        assert _run(margin, f"{out}/cut", stop_at=5) is None
        resumed = _run(margin, f"{out}/cut", resume=True)
        torch.save({"ref": ref, "resumed": resumed}, f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("margin", ["elasticarcface", "adaface"])
def test_ddp_resume_with_margin_heads_ends_with_the_uninterrupted_weights(tmp_path, margin):
    r0, r1 = spawn_two_ranks(_worker, tmp_path, margin)
    assert torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["step"] == 7
    for k, v in r0["ref"].items():
        assert torch.equal(r0["resumed"][k], v), f"rank 0: {k} differs after resume"
        assert torch.equal(r1["resumed"][k], r1["ref"][k]), f"rank 1: {k} differs after resume"
        if "running_" not in k and "num_batches" not in k:  # BN statistics: each process's own last batch (DDP
            # broadcasts process 0's before every forward; process 0's are saved)
            assert torch.equal(r0["resumed"][k], r1["resumed"][k]), f"ranks disagree on {k}"
