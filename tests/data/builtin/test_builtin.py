import numpy as np
import pytest
import torch
from PIL import Image

from qfair.data.builtin import (
    DEFAULT_GROUPS,
    GROUP_NAMES,
    make_synthetic_domain,
    make_train,
    make_verification,
    sample_identities,
)
from qfair.data.sheet import write_contact_sheet
from qfair.utils.errors import DataError


@pytest.fixture(scope="module")
def vset():
    return make_verification(seed=3, pairs_per_group=20)


def test_verification_layout(vset):
    assert vset.meta["synthetic"] is True
    assert vset.group_names() == list(GROUP_NAMES)
    for g in GROUP_NAMES:
        m = vset.groups == g
        assert vset.issame[m].sum() == 20 and (~vset.issame[m]).sum() == 20
        folds = vset.folds[m]
        assert np.all(np.diff(folds) >= 0) and sorted(set(folds.tolist())) == list(range(10))
        for f in range(10):  # every fold holds genuine and impostor pairs
            assert set(vset.issame[m][folds == f].tolist()) == {True, False}
    # genuine pairs share an identity, impostors do not but stay within the group
    same_id = vset.pair_ids[:, 0] == vset.pair_ids[:, 1]
    assert np.array_equal(same_id, vset.issame)
    grp_of = np.char.partition(vset.pair_ids[:, 0].astype(str), "/")[:, 0]
    assert np.array_equal(grp_of, vset.groups)
    assert not np.any(vset.pairs[:, 0] == vset.pairs[:, 1])
    assert len(np.unique(vset.pairs, axis=0)) == len(vset.pairs)
    img = vset.images[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 112, 112)


def test_seeded(vset):
    again = make_verification(seed=3, pairs_per_group=20)
    assert torch.equal(again.images.uint8(), vset.images.uint8()) and np.array_equal(again.pairs, vset.pairs)
    other = make_verification(seed=4, pairs_per_group=20)
    assert not torch.equal(other.images.uint8(), vset.images.uint8())


def test_train_split_imbalanced():
    tr = make_train(seed=0, n_ids=50, imgs_per_id=2)
    counts = np.bincount(tr.id_groups, minlength=4)
    assert counts.tolist() == [30, 10, 6, 4] and len(tr) == 100 and tr.num_classes == 50
    x, _ = next(tr.batches(8, seed=1))
    assert x.shape == (8, 3, 112, 112) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    xs, ys = next(tr.stream(batch_size=4, steps=1))
    assert xs.shape == (4, 3, 112, 112) and ys.max() < 50
    with pytest.raises(DataError):
        make_train(n_ids=10, shares=(1, 1))


def test_groups_differ_in_spread_and_tone():
    rng = np.random.default_rng(0)
    spread = [sample_identities(g, 400, rng).std(0).mean() for g in DEFAULT_GROUPS]
    assert spread[0] > spread[-1]  # the rarest group is the hardest to tell apart
    skin = [sample_identities(g, 50, rng)[:, 20:23].mean() for g in DEFAULT_GROUPS]
    assert skin[0] > skin[-1]


def test_synthetic_domain_looks_different():
    real = make_verification(seed=0, pairs_per_group=10).images.uint8()[:32].float()
    syn, info = make_synthetic_domain(32, seed=0, return_info=True)
    assert syn.shape == (32, 3, 112, 112) and syn.dtype == torch.uint8 and len(info["groups"]) == 32
    # no sensor noise, more saturation: colour statistics differ
    sat = lambda x: (x.max(1).values - x.min(1).values).mean()
    assert sat(syn.float()) > sat(real)


def test_contact_sheet(tmp_path, vset):
    p = write_contact_sheet(vset.images.uint8()[:10], tmp_path / "sheet.png", ncol=5, title="builtin (synthetic)")
    im = Image.open(p)
    assert im.size[0] == 5 * 114 + 2 and im.size[1] > 2 * 114


def _auc(score, label):
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    n1, n0 = label.sum(), (~label).sum()
    return (ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_identity_signal():
    """Even raw face-region pixels separate genuine from impostor pairs better than chance: the images
    carry identity information (group difficulty is checked in parameter space above, and by training
    a model in the demo)."""
    vs = make_verification(seed=0, pairs_per_group=100)
    x = vs.images.uint8().float()[:, :, 30:90, 30:82].reshape(len(vs.images), -1)
    x = torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1).numpy()
    s = (x[vs.pairs[:, 0]] * x[vs.pairs[:, 1]]).sum(1)
    assert _auc(s, vs.issame) > 0.56
    assert abs(_auc(np.random.default_rng(0).random(len(s)), vs.issame) - 0.5) < 0.05  # the AUC helper itself


@pytest.mark.parametrize("spec", ["builtin:0", "builtin:5"])
def test_a_too_small_builtin_benchmark_names_the_spec_and_the_smallest_size(spec):
    from qfair.data import open_benchmark

    with pytest.raises(DataError, match=rf"'{spec}': \d+ genuine pairs per group cannot fill 10 folds; "
                                        r"use builtin:10 or more"):
        open_benchmark(spec)
