"""Deterministic data order (a function of (seed, epoch)), sharding and mixing."""
import pytest
import torch

from qfair.train.batches import Batch, IndexedSource, IterableSource, MixedSource, as_batch, to_model_input
from qfair.utils.errors import DataError


def _src(n=20, bs=4, seed=3, **kw):
    imgs = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return IndexedSource(imgs, torch.arange(n), torch.arange(n) % 2, batch_size=bs, seed=seed, **kw)


def test_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    a, b = _src(), _src()
    full = [x.index.tolist() for x in a.epoch(2)]
    assert full == [x.index.tolist() for x in b.epoch(2)]
    assert [x.index.tolist() for x in b.epoch(2, start=3)] == full[3:]
    assert full != [x.index.tolist() for x in a.epoch(3)]
    assert sorted(sum(full, [])) == list(range(20))
    assert full != [x.index.tolist() for x in _src(seed=4).epoch(2)]


def test_images_labels_and_flips_follow_the_index():
    src = _src(hflip=True)
    for batch in src.epoch(0):
        assert torch.equal(batch.labels, batch.index)
        want = to_model_input(src.images[batch.index])
        want[batch.flipped] = want[batch.flipped].flip(-1)
        assert torch.equal(batch.images, want)
    flips = torch.cat([b.flipped for b in src.epoch(0)])
    assert 0 < int(flips.sum()) < 20


def test_shards_partition_the_global_batch():
    src = _src()
    full = list(src.epoch(1))
    r0, r1 = list(src.epoch(1, rank=0, world=2)), list(src.epoch(1, rank=1, world=2))
    for f, a, b in zip(full, r0, r1):
        assert torch.equal(torch.cat([a.images, b.images]), f.images)
        assert torch.equal(torch.cat([a.index, b.index]), f.index)
    with pytest.raises(DataError, match="divisible"):
        list(_src(bs=5).epoch(0, world=2))


def test_mixed_source_ratio_and_unlabelled_second_source():
    real = _src(n=40)
    syn = IndexedSource(torch.zeros(30, 3, 2, 2, dtype=torch.uint8), batch_size=1, seed=9)
    mix = MixedSource(real, syn, 0.75, batch_size=8)
    batches = list(mix.epoch(0))
    assert len(batches) == min(40 // 6, 30 // 2)
    for b in batches:  # the 6 real rows are spread over the batch (mix_pattern), not all first
        real_rows = b.index < 40
        assert len(b) == 8 and int(real_rows.sum()) == 6
        assert (b.labels[real_rows] >= 0).all() and (b.labels[~real_rows] == -1).all()


def test_as_batch_accepts_tensors_tuples_and_dicts():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert torch.equal(as_batch(x).images, -torch.ones(2, 3, 4, 4))
    b = as_batch((torch.ones(2, 3, 4, 4), torch.tensor([1, 2]), torch.tensor([0, 1])))
    assert torch.equal(b.labels, torch.tensor([1, 2])) and torch.equal(b.groups, torch.tensor([0, 1]))
    assert isinstance(as_batch({"images": x}), Batch)
    with pytest.raises(DataError):
        as_batch("nope")
    it = IterableSource([x, x, x])
    assert it.batches_per_epoch() == 3 and len(list(it.epoch(0, start=1))) == 2
