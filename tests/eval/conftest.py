"""Shared small fixtures: synthetic per-pair data in four groups, a tiny face model and a tiny
VerificationSet-like object (no dependence on other teams' datasets)."""
from types import SimpleNamespace

import numpy as np
import pytest

GROUPS = ("Caucasian", "Indian", "Asian", "African")


def make_pairs(seed=0, per_group=600, n_ids=60, shift=(0.0, 0.05, 0.1, 0.15)):
    """Distances for 4 groups; genuine/impostor alternate in blocks; identities per group."""
    rng = np.random.default_rng(seed)
    dist, same, groups, ids = [], [], [], []
    for gi, g in enumerate(GROUPS):
        s = (np.arange(per_group) // 30) % 2 == 0
        a = rng.integers(0, n_ids, per_group)
        b = np.where(s, a, (a + rng.integers(1, n_ids, per_group)) % n_ids)
        d = np.where(s, rng.normal(0.9 + shift[gi], 0.25, per_group), rng.normal(1.7, 0.2, per_group))
        dist.append(np.clip(d, 0, 4))
        same.append(s)
        groups += [g] * per_group
        ids.append(np.stack([[f"{g}-{x}" for x in a], [f"{g}-{x}" for x in b]], 1))
    return np.concatenate(dist), np.concatenate(same), np.array(groups), np.concatenate(ids)


@pytest.fixture
def pairs4():
    return make_pairs()


class TinyNet:
    """Factory of a tiny embedding network (B, 3, 112, 112) -> (B, 8)."""

    @staticmethod
    def make(seed=0):
        import torch

        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(),
                                  torch.nn.Linear(3 * 14 * 14, 8, bias=False))
        net.embedding_size = 8
        return net


def make_vset(n_images=24, n_pairs=40, seed=0, groups=("A", "B"), store=True):
    """A VerificationSet-like namespace with an ImageStore-like object."""
    import torch

    rng = np.random.default_rng(seed)
    imgs = torch.from_numpy(rng.integers(0, 256, size=(n_images, 3, 112, 112), dtype=np.uint8))
    ids = rng.integers(0, 6, n_images)
    pairs = np.stack([rng.integers(0, n_images, n_pairs), rng.integers(0, n_images, n_pairs)], 1)
    issame = ids[pairs[:, 0]] == ids[pairs[:, 1]]
    issame[::2] = True
    pairs[::2, 1] = pairs[::2, 0]  # some genuine pairs of the same image
    g = np.array([groups[i * len(groups) // n_pairs] for i in range(n_pairs)])
    pair_ids = np.stack([ids[pairs[:, 0]].astype(str), ids[pairs[:, 1]].astype(str)], 1)
    if store:
        from qfair.data.verification import ImageStore

        images = ImageStore(imgs, names=[f"img_{i:03d}.png" for i in range(n_images)])
    else:
        images = imgs
    return SimpleNamespace(name="tiny", images=images, pairs=pairs, issame=issame, groups=g, pair_ids=pair_ids,
                           folds=None, meta={})


@pytest.fixture
def tiny_net():
    return TinyNet.make()


@pytest.fixture
def tiny_vset():
    return make_vset()
