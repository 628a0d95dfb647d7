"""Training data for ``qfair qat`` / ``qfair distill`` from a source spec, as an indexed source.

Specs (the same words as calibration, ``qfair.data.calibration_batches``):

- ``builtin``: the built-in benchmark's imbalanced training split (identity and group labels);
- ``builtin-synthetic``: unlabelled faces of the built-in synthetic domain (stand-in for GAN faces);
- ``real:PATH`` / ``synthetic:PATH``: image folders or files read by ``qfair.data``;
- ``synthetic``: data-free images synthesised from the model's BatchNorm statistics.

Images are held as uint8 (N, 3, 112, 112) (37.6 KB per image), so the data
order can be a pure function of (seed, epoch) and a run can resume mid-epoch. A second spec can be
mixed in at a ratio (``MixedSource``); its samples are unlabelled for the margin head unless it has
labels of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..utils.errors import DataError, QfairError
from .batches import IndexedSource, MixedSource


@dataclass
class TrainImages:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor | None = None  # (N,) identity index
    groups: torch.Tensor | None = None  # (N,) group index into group_names
    group_names: list[str] | None = None
    name: str = "data"


def _from_float(x: torch.Tensor) -> torch.Tensor:
    """Normalised float [-1, 1] -> uint8 (exact inverse of (x / 255 - 0.5) / 0.5 for uint8 sources)."""
    return ((x.float() * 0.5 + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


def load_train_images(spec: str, n: int, *, seed: int = 0, model: Any = None) -> TrainImages:
    """Read about ``n`` training images from ``spec`` (see module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "builtin":
        from ..data.builtin import make_train

        per_id = int(arg) if arg else 8
        split = make_train(seed=seed, n_ids=max(4, -(-n // per_id)), imgs_per_id=per_id)
        return TrainImages(split.images, split.labels.long(), split.groups.long(), list(split.group_names), spec)
    if kind == "builtin-synthetic":
        from ..data.builtin import GROUP_NAMES, make_synthetic_domain

        images = make_synthetic_domain(n, seed=seed)
        return TrainImages(images, None, None, list(GROUP_NAMES), spec)
    try:
        from ..data import calibration_batches
    except (ImportError, AttributeError) as exc:  # pragma: no cover - depends on the data package
        raise DataError(f"training data '{spec}' needs qfair.data.calibration_batches ({exc})") from None
    images, labels = [], []
    try:
        for b in calibration_batches(spec, n, 64, model=model, seed=seed, with_labels=True):
            x, y = (b[0], b[1] if len(b) > 1 else None) if isinstance(b, (tuple, list)) else (b, None)
            images.append(x if x.dtype == torch.uint8 else _from_float(x))
            if y is not None:
                labels.append(torch.as_tensor(y).long())
    except QfairError as exc:  # the readers speak of calibration: say which setting this is
        msg = f"training data '{spec}' (--data / --mix-data): " + str(exc).replace("calibration source", "data source")
        try:
            err = type(exc)(msg)
        except TypeError:  # an error class with other constructor arguments
            err = DataError(msg)
        raise err from None
    if not images:
        raise DataError(f"training data '{spec}' yielded no images")
    lab = torch.cat(labels)[:n] if labels and len(labels) == len(images) else None
    if lab is not None:  # identities of a big .rec are sparse (e.g. 85,742 ids, a few sampled): 0..K-1
        lab = torch.unique(lab, return_inverse=True)[1]
    return TrainImages(torch.cat(images)[:n], lab, None, None, spec)


def build_source(data: str, n: int, batch_size: int, *, seed: int = 0, hflip: bool = True, mix_data: str | None = None,
                 mix_ratio: float = 0.7, model: Any = None) -> IndexedSource | MixedSource:
    """An indexed (optionally mixed) training source; ``mix_ratio`` is the fraction of each batch from ``data``."""
    first = load_train_images(data, n, seed=seed, model=model)
    src = IndexedSource(first.images, first.labels, first.groups, batch_size=batch_size, seed=seed, hflip=hflip,
                        group_names=first.group_names, name=first.name)
    if not mix_data:
        return src
    n2 = max(1, round(n * (1 - mix_ratio) / max(mix_ratio, 1e-9)))
    second = load_train_images(mix_data, n2, seed=seed + 1, model=model)
    if first.labels is not None and second.labels is not None:
        second.labels = second.labels + int(first.labels.max()) + 1  # different identities
    if second.groups is not None and second.group_names != first.group_names:
        second.groups = None  # group indices of another naming cannot be mixed
    src2 = IndexedSource(second.images, second.labels, second.groups, batch_size=1, seed=seed + 1, hflip=hflip,
                         group_names=second.group_names, name=second.name)
    return MixedSource(src, src2, mix_ratio, batch_size=batch_size)
