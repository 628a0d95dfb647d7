"""Group classifier: a linear head on a frozen face model's embeddings, trained on group-labelled images
(BUPT-Balancedface's four groups, or the built-in benchmark's). It reports held-out accuracy (identities
held out, so it measures generalisation to new people) and gives soft labels for any image set: the
group composition of a synthetic set (how study A explained its effect) and the scores that
:func:`~qfair.data.mixing.balanced_identity_sample` uses.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.digest import model_digest
from ..utils.errors import DataError


def _heldout_units(units: np.ndarray, y: np.ndarray, holdout: float, seed: int) -> set[str]:
    """The identities (units) held out: ``holdout`` of each group's, at least one of every group that has two or
    more, so that every such group gets a held-out accuracy (a draw over all identities could miss a small
    group entirely). An identity belongs to the group of its first image."""
    rng = np.random.default_rng(seed)
    uniq, first = np.unique(units, return_index=True)
    held: set[str] = set()
    for g in np.unique(y):
        mine = uniq[y[first] == g]
        if len(mine) >= 2:
            k = min(len(mine) - 1, max(1, round(holdout * len(mine))))
            held.update(rng.choice(mine, size=k, replace=False).tolist())
    if not held and len(uniq) >= 2:  # every group has a single identity: hold one out anyway
        held.add(str(rng.choice(uniq)))
    return held


def embed_batches(model: Any, batches: Iterable[Any]) -> np.ndarray:
    """L2-normalised embeddings (N, D) float32 of normalised float batches (or (images, labels) tuples)."""
    import torch

    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for b in batches:
            x = b[0] if isinstance(b, (tuple, list)) else b
            out.append(torch.nn.functional.normalize(model(x).float(), dim=1))
    model.train(was)
    if not out:
        raise DataError("no images to embed")
    return torch.cat(out).numpy()


@dataclass
class GroupClassifier:
    """Multinomial logistic regression on unit embeddings. ``weight`` (G, D), ``bias`` (G,)."""

    group_names: list[str]
    weight: np.ndarray
    bias: np.ndarray
    heldout_accuracy: float = float("nan")
    heldout_per_group: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, emb: np.ndarray, groups: Sequence[Any], identities: Sequence[Any] | None = None, *,
            group_names: Sequence[str] | None = None, holdout: float = 0.2, epochs: int = 30, lr: float = 0.05,
            weight_decay: float = 1e-4, seed: int = 0) -> GroupClassifier:
        """Train on ``emb`` (N, D) with group labels (N,); ``holdout`` of the identities (or images, if
        ``identities`` is None) is kept out for the accuracy report, then the head is refitted on all."""
        import torch

        emb = np.asarray(emb, dtype=np.float32)
        names = list(group_names) if group_names is not None else sorted(set(map(str, groups)))
        lookup = {g: i for i, g in enumerate(names)}
        try:
            y = np.array([lookup[str(g)] for g in groups], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"group label {exc.args[0]!r} is not one of {names}") from None
        if len(y) != len(emb) or len(set(y.tolist())) < 2:
            raise DataError("the group classifier needs one label per image and at least two groups")
        units = np.asarray(identities if identities is not None else np.arange(len(y))).astype(str)
        held = _heldout_units(units, y, holdout, seed)
        test = np.array([u in held for u in units])

        def train(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            torch.manual_seed(seed)
            lin = torch.nn.Linear(x.shape[1], len(names))
            opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
            xt, tt = torch.from_numpy(x) * 8.0, torch.from_numpy(t)  # scale unit embeddings for faster fitting
            g = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                for idx in torch.randperm(len(xt), generator=g).split(256):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(lin(xt[idx]), tt[idx]).backward()
                    opt.step()
            return lin.weight.detach().numpy() * 8.0, lin.bias.detach().numpy()

        clf = cls(names, *train(emb[~test], y[~test]))
        if test.any() and (~test).any():
            pred = clf.predict_proba(emb[test]).argmax(1)
            clf.heldout_accuracy = float((pred == y[test]).mean())
            clf.heldout_per_group = {n: float((pred[y[test] == i] == i).mean()) for i, n in enumerate(names)
                                     if (y[test] == i).any()}
        final = cls(names, *train(emb, y), heldout_accuracy=clf.heldout_accuracy,
                    heldout_per_group=clf.heldout_per_group)
        final.meta = {"train_images": len(y), "heldout_images": int(test.sum()), "units_heldout": len(held),
                      "heldout_images_per_group": {n: int((y[test] == i).sum()) for i, n in enumerate(names)}}
        return final

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """Soft labels (N, G): softmax of the linear head on unit embeddings."""
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.weight.shape[1]:
            raise DataError(f"the group head reads {self.weight.shape[1]}-dim embeddings but got shape {emb.shape}: "
                            f"it was trained on another face model. Train a head on this model with "
                            f"`qfair groups train --model ...`")
        z = emb @ self.weight.T.astype(np.float64) + self.bias
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(1, keepdims=True)).astype(np.float32)

    def composition(self, emb: np.ndarray) -> dict[str, dict[str, float]]:
        """Per group: mean probability and share of images whose most likely group it is."""
        p = self.predict_proba(emb)
        hard = np.bincount(p.argmax(1), minlength=len(self.group_names)) / len(p)
        return {g: {"mean_probability": float(p[:, i].mean()), "share": float(hard[i])}
                for i, g in enumerate(self.group_names)}

    def save(self, path: str | os.PathLike) -> Path:
        """Plain tensors and strings, loadable with ``torch.load(weights_only=True)``."""
        import torch

        from ..utils.io import atomic_torch_save

        return atomic_torch_save({"format": "qfair-group-classifier-v1", "group_names": list(self.group_names),
                                  "weight": torch.from_numpy(np.ascontiguousarray(self.weight, dtype=np.float32)),
                                  "bias": torch.from_numpy(np.ascontiguousarray(self.bias, dtype=np.float32)),
                                  "heldout_accuracy": float(self.heldout_accuracy),
                                  "heldout_per_group": dict(self.heldout_per_group),
                                  "meta": {k: v for k, v in self.meta.items() if isinstance(v, (int, float, str))}},
                                 path, mkdir=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GroupClassifier:
        from ..utils.io import safe_torch_load

        import torch

        d = safe_torch_load(path)
        if not isinstance(d, dict) or d.get("format") != "qfair-group-classifier-v1":
            raise DataError(f"{path}: not a qfair group classifier (write one with `qfair groups train`)")
        names, weight, bias = d.get("group_names"), d.get("weight"), d.get("bias")
        ok = isinstance(names, (list, tuple)) and len(names) >= 2 and all(isinstance(n, str) for n in names) \
            and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor) and weight.dim() == 2 \
            and weight.shape[0] == len(names) and tuple(bias.shape) == (len(names),) \
            and weight.is_floating_point() and bias.is_floating_point() \
            and bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all())
        if not ok:
            raise DataError(f"{path}: damaged group classifier: it needs 'group_names' (>= 2 strings), a finite "
                            f"'weight' (G, D) and 'bias' (G,) tensor with G = number of groups. Train it again "
                            f"with `qfair groups train`.")
        try:
            extra = (float(d.get("heldout_accuracy", float("nan"))), dict(d.get("heldout_per_group", {})),
                     dict(d.get("meta", {})))
        except (TypeError, ValueError):
            raise DataError(f"{path}: damaged group classifier (heldout_accuracy, heldout_per_group or meta has "
                            f"the wrong type). Train it again with `qfair groups train`.") from None
        return cls(list(names), weight.float().numpy(), bias.float().numpy(), *extra)


class GroupFolder:
    """Dataset ``<root>/<group>/<identity>/<image>`` (BUPT-Balancedface layout) of (image, group index);
    ``identities[i]`` is the identity folder of item i."""

    def __init__(self, root: str | os.PathLike) -> None:
        from .folders import IMAGE_EXTS, _is_image

        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: folder not found")
        self.group_names = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.paths, self.targets, self.identities = [], [], []
        for g, name in enumerate(self.group_names):
            for p in sorted((self.root / name).rglob("*")):
                if p.is_file() and _is_image(p):
                    rel = p.relative_to(self.root / name).parts
                    self.paths.append(p)
                    self.targets.append(g)
                    self.identities.append(f"{name}/{rel[0]}" if len(rel) > 1 else f"{name}/{p.stem}")
        if len(self.group_names) < 2 or not self.paths:
            raise DataError(f"{self.root}: expected <group>/<identity>/<image> with at least two groups")
        self.targets = np.asarray(self.targets, dtype=np.int64)
        empty = [n for g, n in enumerate(self.group_names) if not (self.targets == g).any()]
        if empty:  # an empty group would still become a class of the classifier, one it never saw
            raise DataError(f"{self.root}: group folder(s) {', '.join(empty)} hold no images (extensions "
                            f"{', '.join(IMAGE_EXTS)}). Add images or move the folder(s) out of {self.root}.")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from .preprocess import decode_image

        return decode_image(self.paths[i]), int(self.targets[i])


def _sample(ds: Any, n: int, seed: int) -> np.ndarray:
    k = min(n, len(ds))
    return np.sort(np.random.default_rng(seed).choice(len(ds), size=k, replace=False))


def train_group_classifier(model: Any, data: str = "builtin", n: int = 2000, *, holdout: float = 0.2,
                           epochs: int = 30, lr: float = 0.05, batch_size: int = 64, seed: int = 0) -> GroupClassifier:
    """Embed ``n`` group-labelled images with the frozen ``model`` and fit a :class:`GroupClassifier`.

    ``data``: "builtin" (balanced identities of the built-in benchmark's four groups, fresh identities
    seeded by ``seed``) or a ``<group>/<identity>/<image>`` folder (e.g. BUPT-Balancedface).
    """
    from .folders import stream
    from .preprocess import to_model_input

    if data == "builtin":
        from .builtin import GROUP_NAMES, make_train

        per_id = 8
        tr = make_train(seed=seed + 1000, n_ids=max(8, -(-n // per_id)), imgs_per_id=per_id, shares=(1, 1, 1, 1))
        keep = np.arange(min(n, len(tr)))
        emb = embed_batches(model, (to_model_input(tr.images[keep[s:s + batch_size]])
                                    for s in range(0, len(keep), batch_size)))
        groups = [GROUP_NAMES[g] for g in tr.groups[keep].tolist()]
        ids = tr.labels[keep].numpy()
        names = list(GROUP_NAMES)
    else:
        ds = GroupFolder(data)
        idx = _sample(ds, n, seed)
        emb = embed_batches(model, stream(ds, batch_size, indices=idx))
        groups = [ds.group_names[int(ds.targets[i])] for i in idx]
        ids = [ds.identities[i] for i in idx]
        names = ds.group_names
    clf = GroupClassifier.fit(emb, groups, ids, group_names=names, holdout=holdout, epochs=epochs, lr=lr, seed=seed)
    clf.meta["data"] = data
    clf.meta["feature_model_sha256"] = model_digest(model)  # the face model the head reads
    return clf


def estimate_groups(model: Any, clf: GroupClassifier, source: str, n: int = 2000, *, batch_size: int = 64,
                    seed: int = 0) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """Group composition of an image set and its soft labels (N, G).

    ``source``: a folder (flat or per identity), a ``.rec`` / folder with ``train.rec``, "builtin" or
    "builtin-synthetic"; at most ``n`` images are sampled (seeded)."""
    from .folders import open_image_source, stream
    from .preprocess import to_model_input

    trained_on, this = clf.meta.get("feature_model_sha256"), model_digest(model)
    if trained_on is not None and trained_on != this:  # heads saved before the fingerprint are not checked
        raise DataError(f"this group head was trained on the embeddings of another face model (weights sha256 "
                        f"{str(trained_on)[:12]}..., this model {this[:12]}...): its "
                        f"groups would be read off a different embedding space. Train a head on this model with "
                        f"`qfair groups train --model ...`, or pass the model the head was trained on")
    if source in ("builtin", "builtin-synthetic"):
        from .builtin import make_calibration, make_synthetic_domain

        imgs = make_synthetic_domain(n, seed=seed) if source == "builtin-synthetic" else make_calibration(n, seed=seed)
        emb = embed_batches(model, (to_model_input(imgs[s:s + batch_size]) for s in range(0, len(imgs), batch_size)))
    else:
        ds = open_image_source(source, labelled=False)
        emb = embed_batches(model, stream(ds, batch_size, indices=_sample(ds, n, seed)))
    return clf.composition(emb), clf.predict_proba(emb)
