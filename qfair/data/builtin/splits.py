"""Splits of the built-in synthetic benchmark: an imbalanced training split (like MS1MV2), a balanced
verification split with 10 folds per group (like RFW), and an unlabelled synthetic-domain set (the
stand-in for GAN faces). All seeded; identities of the three splits come from disjoint random streams.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...utils.errors import DataError
from ..verification import ImageStore, VerificationSet
from .params import DEFAULT_GROUPS, GroupSpec, sample_identities
from .render import render_faces

TRAIN_SHARES = (0.60, 0.20, 0.12, 0.08)
# genuine (= impostor) pairs per group for each named size of the verification split
SIZES = {"tiny": 20, "small": 100, "default": 300, "large": 3000}
_STREAM = {"train": 1, "verify": 2, "synthetic": 3, "render": 4}
SYNTHETIC_NOTE = "built-in synthetic benchmark (generated faces, not real people; real conclusions need RFW)"


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAM[stream], *extra])


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def render_identities(params: np.ndarray, group_idx: np.ndarray, image_ids: np.ndarray, *, seed: int,
                      groups: Sequence[GroupSpec] = DEFAULT_GROUPS, nuisance: float = 1.0, domain: str = "real",
                      chunk: int = 16) -> torch.Tensor:
    """Render one image per entry of ``image_ids`` (indices into ``params``) -> uint8 (N, 3, 112, 112).

    Nuisance is scaled by the identity's group (``GroupSpec.nuisance``) times ``nuisance``.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    gen = _torch_gen(_rng(seed, "render", len(image_ids)))
    nscale = torch.tensor([groups[g].nuisance * nuisance for g in group_idx], dtype=torch.float32)
    extra = torch.tensor([groups[g].noise for g in group_idx], dtype=torch.float32)
    ptab = torch.from_numpy(np.asarray(params, dtype=np.float32))
    out = torch.empty((len(image_ids), 3, 112, 112), dtype=torch.uint8)
    # Chunks are small (cache-resident); intra-op threads only add barrier waits for them, and on a
    # shared machine those waits dominate. Parallelise across processes instead (DataLoader workers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in range(0, len(image_ids), chunk):
            ids = torch.from_numpy(image_ids[s:s + chunk])
            out[s:s + len(ids)] = render_faces(ptab[ids], gen=gen, nuisance_scale=nscale[ids],
                                               extra_noise=extra[ids], domain=domain)
    finally:
        torch.set_num_threads(threads)
    return out


def sample_group_identities(counts: Sequence[int], seed: int, stream: str, difficulty: float = 1.0,
                            groups: Sequence[GroupSpec] = DEFAULT_GROUPS) -> tuple[np.ndarray, np.ndarray]:
    """``counts[g]`` identities of each group -> (params (N, K) float32, group index (N,) int64)."""
    if len(counts) != len(groups):
        raise DataError(f"{len(counts)} counts for {len(groups)} groups")
    ps, gs = [], []
    for g, (spec, n) in enumerate(zip(groups, counts)):
        ps.append(sample_identities(spec, int(n), _rng(seed, stream, g), difficulty))
        gs.append(np.full(int(n), g, dtype=np.int64))
    return np.concatenate(ps), np.concatenate(gs)


@dataclass
class TrainSplit:
    """Imbalanced training split. ``images`` uint8 (N, 3, 112, 112); ``labels`` (N,) identity index;
    ``groups`` (N,) group index into ``group_names``; ``id_params`` / ``id_groups`` per identity."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    group_names: list[str]
    id_params: np.ndarray
    id_groups: np.ndarray
    seed: int = 0
    nuisance: float = 1.0
    meta: dict = field(default_factory=lambda: {"synthetic": True, "note": SYNTHETIC_NOTE})

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.id_params.shape[0])

    def batches(self, batch_size: int = 128, *, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(float (B, 3, 112, 112) normalised, labels (B,))`` over the stored images."""
        from ..preprocess import to_model_input

        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle \
            else torch.arange(len(self))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            yield to_model_input(self.images[idx]), self.labels[idx]

    def stream(self, batch_size: int = 128, steps: int = 100, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` batches of freshly rendered images (new pose/light/noise every time) drawn with the
        split's identity frequencies: unlimited augmentation without storing images."""
        from ..preprocess import to_model_input

        rng = np.random.default_rng([seed, 77])
        labels = self.labels.numpy()
        for step in range(steps):
            ids = labels[rng.integers(0, len(labels), batch_size)]
            imgs = render_identities(self.id_params, self.id_groups, ids, seed=seed * 100003 + step + 1,
                                     nuisance=self.nuisance)
            yield to_model_input(imgs), torch.from_numpy(ids)


def make_train(seed: int = 0, n_ids: int = 400, imgs_per_id: int = 16, shares: Sequence[float] = TRAIN_SHARES,
               difficulty: float = 1.0, nuisance: float = 1.0,
               groups: Sequence[GroupSpec] = DEFAULT_GROUPS) -> TrainSplit:
    """Imbalanced training split: ``n_ids`` identities shared among groups by ``shares`` (default
    60/20/12/8 %, like MS1MV2's skew), ``imgs_per_id`` images each."""
    if len(shares) != len(groups) or min(shares) < 0 or sum(shares) <= 0:
        raise DataError(f"shares must be {len(groups)} non-negative numbers, got {tuple(shares)}")
    if n_ids < len(groups) or imgs_per_id < 1:
        raise DataError(f"need n_ids >= {len(groups)} and imgs_per_id >= 1 (got {n_ids}, {imgs_per_id})")
    frac = np.asarray(shares, dtype=np.float64) / sum(shares)
    counts = np.maximum(np.floor(frac * n_ids).astype(int), (frac > 0).astype(int))
    counts[int(np.argmax(frac))] += n_ids - counts.sum()
    params, gidx = sample_group_identities(counts, seed, "train", difficulty, groups)
    image_ids = np.repeat(np.arange(len(params)), imgs_per_id)
    images = render_identities(params, gidx, image_ids, seed=seed * 7919 + 1, groups=groups, nuisance=nuisance)
    return TrainSplit(images=images, labels=torch.from_numpy(image_ids), groups=torch.from_numpy(gidx[image_ids]),
                      group_names=[g.name for g in groups], id_params=params, id_groups=gidx, seed=seed,
                      nuisance=nuisance)


def _group_pairs(n_pairs: int, n_ids: int, k: int, offset: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor pairs (image indices) for one group whose images are id*k + j + offset."""
    combos = np.array([(a, b) for a in range(k) for b in range(a + 1, k)])
    per_id = int(np.ceil(n_pairs / n_ids))
    gen = []
    for i in range(n_ids):
        pick = combos[rng.permutation(len(combos))[:per_id]]
        gen.append(i * k + pick)
    gen = np.concatenate(gen)[rng.permutation(n_ids * per_id)[:n_pairs]]
    imp: set[tuple[int, int]] = set()
    while len(imp) < n_pairs:
        a, b = rng.integers(0, n_ids, 2)
        if a == b:
            continue
        pa, pb = a * k + rng.integers(0, k), b * k + rng.integers(0, k)
        imp.add((int(min(pa, pb)), int(max(pa, pb))))
    imp_arr = np.array(sorted(imp))[rng.permutation(n_pairs)]
    return gen + offset, imp_arr + offset


def make_verification(seed: int = 0, pairs_per_group: int | str = 300, imgs_per_id: int = 4,
                      difficulty: float = 1.0, nuisance: float = 1.0, n_folds: int = 10,
                      groups: Sequence[GroupSpec] = DEFAULT_GROUPS, name: str = "builtin") -> VerificationSet:
    """Balanced verification split: per group ``pairs_per_group`` genuine and as many impostor pairs
    (impostors within the group, as in RFW), arranged in ``n_folds`` contiguous folds each holding equal
    shares of both. ``pairs_per_group`` may be a size name: tiny (20), small (100), default (300), large."""
    if isinstance(pairs_per_group, str) and pairs_per_group.isdigit():
        pairs_per_group = int(pairs_per_group)
    if isinstance(pairs_per_group, str):
        if pairs_per_group not in SIZES:
            raise DataError(f"unknown built-in size '{pairs_per_group}'; sizes: {', '.join(SIZES)} "
                            "or a number of genuine pairs per group (e.g. builtin:1000)")
        pairs_per_group = SIZES[pairs_per_group]
    spec = name.replace("builtin-", "builtin:", 1)
    if pairs_per_group < n_folds:
        raise DataError(f"built-in benchmark '{spec}': {pairs_per_group} genuine pairs per group cannot fill "
                        f"{n_folds} folds; use builtin:{n_folds} or more (or a size name: {', '.join(SIZES)})")
    if imgs_per_id < 2:
        raise DataError(f"built-in benchmark '{spec}': imgs_per_id must be >= 2 (genuine pairs need two images of "
                        f"an identity), got {imgs_per_id}")
    n_ids = max(int(np.ceil(pairs_per_group / ((imgs_per_id * (imgs_per_id - 1)) // 2) * 2)), 4)
    params, gidx = sample_group_identities([n_ids] * len(groups), seed, "verify", difficulty, groups)
    image_ids = np.repeat(np.arange(len(params)), imgs_per_id)
    images = render_identities(params, gidx, image_ids, seed=seed * 7919 + 2, groups=groups, nuisance=nuisance)
    rng = _rng(seed, "verify", 99)
    pairs, issame, gnames, folds = [], [], [], []
    for g, spec in enumerate(groups):
        gen, imp = _group_pairs(pairs_per_group, n_ids, imgs_per_id, g * n_ids * imgs_per_id, rng)
        for f, (gc, ic) in enumerate(zip(np.array_split(gen, n_folds), np.array_split(imp, n_folds))):
            pairs += [gc, ic]
            issame += [np.ones(len(gc), bool), np.zeros(len(ic), bool)]
            folds.append(np.full(len(gc) + len(ic), f))
        gnames.append(np.full(2 * pairs_per_group, spec.name))
    pairs_arr = np.concatenate(pairs)
    id_names = np.array([f"{groups[gidx[i]].name}/id{i:05d}" for i in range(len(params))])
    pair_ids = id_names[image_ids[pairs_arr]]
    names = [f"{id_names[i]}/{j}" for i, j in zip(image_ids, np.tile(np.arange(imgs_per_id), len(params)))]
    return VerificationSet(name=name, images=ImageStore(images, names), pairs=pairs_arr, issame=np.concatenate(issame),
                           groups=np.concatenate(gnames), pair_ids=pair_ids, folds=np.concatenate(folds),
                           meta={"synthetic": True, "note": SYNTHETIC_NOTE, "seed": seed, "difficulty": difficulty,
                                 "nuisance": nuisance, "format": "builtin"})


def make_synthetic_domain(n: int, seed: int = 0, group_mix: Sequence[float] | None = None, imgs_per_id: int = 1,
                          difficulty: float = 1.0, groups: Sequence[GroupSpec] = DEFAULT_GROUPS,
                          return_info: bool = False):
    """``n`` unlabelled faces of the synthetic domain (the stand-in for GAN faces): new identities drawn
    from ``group_mix`` (default: equal shares), rendered with the ``synthetic`` style.

    Returns uint8 (n, 3, 112, 112); with ``return_info`` also ``{"groups": (n,), "ids": (n,)}`` (hidden
    ground truth, for checking a group classifier -- a real GAN set has no such labels).
    """
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    mix = np.full(len(groups), 1 / len(groups)) if group_mix is None else np.asarray(group_mix, float)
    if len(mix) != len(groups) or mix.min() < 0 or mix.sum() <= 0:
        raise DataError(f"group_mix must be {len(groups)} non-negative numbers")
    n_ids = max(1, int(np.ceil(n / imgs_per_id)))
    counts = np.random.default_rng([seed, 5]).multinomial(n_ids, mix / mix.sum())
    params, gidx = sample_group_identities(counts, seed, "synthetic", difficulty, groups)
    ids = np.repeat(np.arange(len(params)), imgs_per_id)[:n]
    images = render_identities(params, gidx, ids, seed=seed * 7919 + 3, groups=groups, domain="synthetic")
    return (images, {"groups": gidx[ids], "ids": ids}) if return_info else images


def make_calibration(n: int, seed: int = 0, domain: str = "real", n_ids: int = 400,
                     shares: Sequence[float] = TRAIN_SHARES, groups: Sequence[GroupSpec] = DEFAULT_GROUPS) -> torch.Tensor:
    """``n`` uint8 images of the training distribution (same identities and group shares as
    :func:`make_train` with this ``seed``, new renderings): the built-in "real" calibration data."""
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    frac = np.asarray(shares, dtype=np.float64) / sum(shares)
    counts = np.maximum(np.floor(frac * n_ids).astype(int), (frac > 0).astype(int))
    counts[int(np.argmax(frac))] += n_ids - counts.sum()
    params, gidx = sample_group_identities(counts, seed, "train", 1.0, groups)
    ids = np.random.default_rng([seed, 6]).integers(0, len(params), n)
    return render_identities(params, gidx, ids, seed=seed * 7919 + 5, groups=groups, domain=domain)


def open_builtin(arg: str = "", **kw) -> VerificationSet:
    """Reader for ``--bench builtin`` / ``builtin:SIZE`` / ``builtin:SIZE:SEED``; SIZE is a size name or a
    number of genuine pairs per group (``builtin:1000``). File-reader options
    (``skip_corrupt``, ``validate``) are accepted and ignored: generated images cannot be corrupt."""
    kw.pop("skip_corrupt", None)
    kw.pop("validate", None)
    size, _, seed = str(arg or "default").partition(":")
    try:
        seed_i = int(seed) if seed else int(kw.pop("seed", 0))
    except ValueError:
        raise DataError(f"builtin benchmark seed must be an integer, got '{seed}'") from None
    name = "builtin" if size == "default" else f"builtin-{size}"
    return make_verification(seed=seed_i, pairs_per_group=size, name=name, **kw)
