"""Data-free synthesis from a model's own BatchNorm statistics (ZeroQ, Cai et al. 2020).

A batch of inputs is optimised so that, at every BatchNorm layer, the batch mean and standard
deviation of the layer's input match the layer's running mean and sqrt(running var) -- the statistics
of the real training data the model saw. A small total-variation prior keeps images smooth. Runs on
CPU: the default iteration count is modest (see tools/bench_data.py for the time of 512 images).
Defaults (30 Adam steps at lr 0.1 on a 56x56 latent) were chosen on the shipped demo iresnet18: the
BatchNorm-statistics loss falls from 313 (noise) to 24, about that of real-domain images (18).
"""
from __future__ import annotations

import re

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.errors import DataError
from .sheet import SHEET_NAME

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class SynthSettings:
    """Settings of :func:`synthesize_from_bn`. ``iters`` Adam steps per batch at learning rate ``lr``;
    ``tv`` weight of the total-variation prior; ``init_res`` side of the optimised image before
    bilinear upsampling to ``image_size`` (smaller = smoother, faster to converge; equal = pixel-wise)."""

    iters: int = 30
    lr: float = 0.1
    tv: float = 0.02
    init_res: int = 56
    batch_size: int = 32
    image_size: int = 112


def _bn_layers(model: torch.nn.Module) -> list:
    import torch

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))
              and m.running_mean is not None and m.running_var is not None]
    if not layers:
        raise DataError("data-free synthesis needs a model with BatchNorm layers (running statistics); "
                        "this model has none. Use --calib real:PATH or synthetic:PATH instead.")
    return layers


def bn_statistics_loss(stats: list, layers: list) -> torch.Tensor:
    """Sum over BN layers of mean squared differences between batch and running mean / std."""
    loss = 0.0
    for (mean, std), bn in zip(stats, layers):
        loss = loss + ((mean - bn.running_mean) ** 2).mean() + ((std - (bn.running_var + bn.eps).sqrt()) ** 2).mean()
    return loss


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _synthesize_batch(model, layers, b: int, s: SynthSettings, gen, losses: list | None = None) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    stats: list = [None] * len(layers)
    size = s.image_size

    def hook_for(i: int):
        def hook(mod, inputs):
            x = inputs[0]
            dims = [0] if x.dim() == 2 else [0, 2, 3]
            stats[i] = (x.mean(dims), (x.var(dims, unbiased=False) + mod.eps).sqrt())
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(layers)]
    try:
        z = (torch.randn((b, 3, s.init_res, s.init_res), generator=gen) * 0.5)
        z = z.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=s.lr)
        with torch.enable_grad():  # a caller may be under torch.no_grad(); the images are optimised
            for it in range(s.iters):
                opt.zero_grad(set_to_none=True)
                x = z if s.init_res == size else F.interpolate(z, size=(size, size), mode="bilinear",
                                                               align_corners=False)
                x = torch.tanh(x)  # keep inputs in the valid range [-1, 1]
                model(x)
                loss = bn_statistics_loss(stats, layers) + s.tv * _tv(x)
                if not torch.isfinite(loss):
                    raise DataError("data-free synthesis diverged (loss is not finite); lower --lr")
                if losses is not None and (it == 0 or it == s.iters - 1):
                    losses.append(float(loss.detach()))
                loss.backward()
                opt.step()
        with torch.no_grad():
            x = z if s.init_res == size else F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
            return torch.tanh(x).detach()
    finally:
        for h in handles:
            h.remove()


def iter_synthesize_from_bn(model: torch.nn.Module, n: int, *, seed: int = 0,
                            settings: SynthSettings = SynthSettings(),
                            log: list | None = None) -> Iterator[torch.Tensor]:
    """Yield batches of synthesised, normalised float images (B, 3, 112, 112) in [-1, 1], n in all.

    ``log`` (a list) receives ``(first_loss, last_loss)`` per batch, to check convergence."""
    import torch

    if n < 1:
        raise DataError(f"number of images must be >= 1, got {n}")
    layers = _bn_layers(model)
    was_training = model.training
    model.eval()
    # channels_last runs the depthwise / 1x1 convs of MobileFaceNet ~1.5x faster on CPU
    model.to(memory_format=torch.channels_last)
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    try:
        done = 0
        while done < n:
            b = min(settings.batch_size, n - done)
            losses: list = []
            batch = _synthesize_batch(model, layers, b, settings, gen, losses)
            if log is not None:
                log.append((losses[0], losses[-1]))
            yield batch
            done += b
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def synthesize_from_bn(model: torch.nn.Module, n: int, *, seed: int = 0,
                       settings: SynthSettings = SynthSettings()) -> torch.Tensor:
    """``n`` synthesised images, float (n, 3, 112, 112) normalised like model input."""
    import torch

    return torch.cat(list(iter_synthesize_from_bn(model, n, seed=seed, settings=settings)))


def write_images(images: torch.Tensor, out: str | Path, prefix: str = "synth", sheet: bool = True,
                 title: str = "data-free synthetic images from BatchNorm statistics") -> list[Path]:
    """Write normalised float images (N, 3, 112, 112) as PNGs ``out/prefix_00000.png`` plus
    ``out/_contact_sheet.png`` (image folder readers skip that name) titled ``title (N images)``."""
    from PIL import Image

    from ..utils.io import atomic_path, output_folder
    from .preprocess import from_model_input, nchw_to_hwc
    from .sheet import write_contact_sheet

    out = output_folder(out)
    u8 = from_model_input(images)
    paths = []
    for i, img in enumerate(nchw_to_hwc(u8)):
        p = out / f"{prefix}_{i:05d}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        paths.append(p)
    for stale in out.glob(f"{prefix}_*.png"):  # left by an earlier, larger run into the same folder
        tail = stale.stem[len(prefix) + 1:]
        if tail.isdigit() and int(tail) >= len(paths):
            stale.unlink()
    if sheet:
        write_contact_sheet(u8[:256], out / SHEET_NAME,
                            title=f"{title} ({len(u8)} images)")
    return paths


def foreign_images(out: str | Path, prefix: str = "synth") -> list[Path]:
    """Images in ``out`` that :func:`write_images` did not write: ``--calib-data out`` would read them too."""
    from .folders import _is_image

    root = Path(out)
    mine = re.compile(rf"{re.escape(prefix)}_\d+\.png")
    return sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p)
                  and not (p.parent == root and mine.fullmatch(p.name)))


def _cache_key(model: torch.nn.Module, n: int, seed: int, s: SynthSettings) -> str:
    import hashlib

    import torch

    h = hashlib.sha256(f"{type(model).__name__}|{n}|{seed}|{s}".encode())
    # every tensor, not only the BatchNorm ones: synthesis back-propagates through all the layers, so two
    # models with the same BN statistics (a fine-tune with BN frozen) synthesise different images
    for name, t in model.state_dict().items():
        if torch.is_tensor(t):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def cache_dir() -> Path | None:
    """Folder of cached synthesised sets: ``$QFAIR_CACHE_DIR/synth`` (default ``~/.cache/qfair/synth``);
    ``QFAIR_CACHE_DIR=off`` disables the cache."""
    import os

    root = os.environ.get("QFAIR_CACHE_DIR", str(Path.home() / ".cache" / "qfair"))
    return None if root.strip().lower() in ("", "off", "0", "none") else Path(root) / "synth"


def synthesize_uint8(model: torch.nn.Module, n: int, *, seed: int = 0, settings: SynthSettings = SynthSettings(),
                     use_cache: bool = True) -> torch.Tensor:
    """``n`` synthesised images as uint8 (n, 3, size, size), i.e. on the grid a PNG holds, so that
    ``--calib synthetic`` gives exactly what ``qfair synth`` + ``--calib synthetic:DIR`` gives.

    Cached on disk by a hash of the BatchNorm parameters, settings, n and seed (synthesis is the slowest
    data step on CPU; the 8- and 6-bit variants of one model share it)."""
    import warnings

    import torch

    from ..utils.io import atomic_torch_save, safe_torch_load
    from .preprocess import from_model_input

    folder = cache_dir() if use_cache else None
    path = folder / f"{_cache_key(model, n, seed, settings)}.pt" if folder else None
    if path is not None and path.is_file():
        try:
            cached = safe_torch_load(path)
            if isinstance(cached, torch.Tensor) and cached.dtype == torch.uint8 and len(cached) == n:
                return cached
        except Exception as exc:  # noqa: BLE001 - a broken cache entry is recomputed, never fatal
            warnings.warn(f"ignoring unreadable synthesis cache entry {path} ({exc})", stacklevel=2)
    images = from_model_input(synthesize_from_bn(model, n, seed=seed, settings=settings))
    if path is not None:
        try:
            atomic_torch_save(images, path, mkdir=True)
        except Exception as exc:  # noqa: BLE001 - an unwritable cache only costs time
            warnings.warn(f"cannot write synthesis cache {path} ({exc}); set QFAIR_CACHE_DIR", stacklevel=2)
    return images
