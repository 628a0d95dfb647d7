"""Image folders: ``<root>/<identity>/<image>`` (:class:`ImageFolder`, labelled) and flat or nested
folders of unlabelled faces (:class:`FlatFolder`, e.g. GAN / synthetic sets), plus a streaming loader
with worker processes whose memory is bounded by the batch, whatever the dataset size.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import DataError
from .sheet import SHEET_NAME

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ACCEPTED_SOURCES = ("a folder of images (<identity>/<image> sub-folders, or loose images), an MXNet .rec file "
                    "(with its .idx beside it), or a folder holding train.rec")


def _require_folder(root: Path) -> None:
    """Raise DataError naming ``root`` unless it is an existing folder (a file is told apart from a missing path)."""
    if root.is_dir():
        return
    if root.exists():
        raise DataError(f"{root}: exists but is a file, not an image folder. Pass a folder of images "
                        f"({', '.join(IMAGE_EXTS)}), loose or in <identity>/ sub-folders.")
    raise DataError(f"{root}: image folder not found")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.name != SHEET_NAME


def _loose_images(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))


def _loose_images_error(root: Path, loose: list[Path]) -> DataError:
    """The error for images directly in ``root`` beside ``<identity>/`` sub-folders that hold images."""
    shown = ", ".join(p.name for p in loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
    what = f"{len(loose)} loose image{'s' if len(loose) != 1 else ''}"
    return DataError(f"{root}: {what} ({shown}) beside the <identity>/ sub-folders have no identity label. "
                     f"Move them into an <identity>/ sub-folder (or out of {root.name}/); or, to read the whole "
                     f"folder without identity labels, give it as synthetic:{root} (calibration, qat/distill "
                     f"--data; quantize --calib synthetic --calib-data {root}) or call "
                     f"open_image_source(..., labelled=False).")


class ImageFolder:
    """Dataset of ``(image uint8 (112, 112, 3), label int)`` from ``<root>/<identity>/<image>``.

    Identities are the sorted sub-folder names (``classes``); label = position in that list.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        _require_folder(self.root)
        subdirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = [d.name for d in subdirs]
        self.paths: list[Path] = []
        labels: list[int] = []
        for label, d in enumerate(subdirs):
            files = sorted(p for p in d.rglob("*") if p.is_file() and _is_image(p))
            self.paths += files
            labels += [label] * len(files)
        loose = _loose_images(self.root)
        if not self.paths:
            hint = (" It holds loose images: use a flat (unlabelled) source, e.g. synthetic:PATH, or put them in "
                    "<identity>/ sub-folders.") if loose else ""
            raise DataError(f"{self.root}: no images found in <identity>/<image> layout "
                            f"(extensions {', '.join(IMAGE_EXTS)}).{hint}")
        if loose:  # they have no identity; leaving them out silently would shrink the data set
            raise _loose_images_error(self.root, loose)
        self.targets = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from .preprocess import decode_image

        return decode_image(self.paths[i], source=str(self.root)), int(self.targets[i])

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self[i]


class FlatFolder:
    """Unlabelled images anywhere under ``root`` (flat or per identity); items ``(image, -1)``.

    ``identity_of[i]`` is the first-level sub-folder name (or "" for loose files), for sources that
    are organised by identity."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        _require_folder(self.root)
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and _is_image(p))
        if not self.paths:
            raise DataError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTS)})")
        self.identity_of = [p.relative_to(self.root).parts[0] if len(p.relative_to(self.root).parts) > 1 else ""
                            for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from .preprocess import decode_image

        return decode_image(self.paths[i], source=str(self.root)), -1


def open_image_source(path: str | os.PathLike, labelled: bool | None = None) -> Any:
    """A dataset for a path: ``.rec`` file or folder with ``train.rec`` -> RecordIO; a folder with
    identity sub-folders -> ImageFolder (when ``labelled`` is not False); otherwise FlatFolder.

    With ``labelled=None`` a folder is read unlabelled (FlatFolder) only when no sub-folder holds images
    (loose images only). Loose images *beside* identity sub-folders holding images are a DataError naming
    them: reading such a folder flat would silently drop every identity label. ``labelled=False`` reads
    any folder flat."""
    from .recordio import RecordIO

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: data path not found")
    if p.suffix == ".rec" or (p.is_dir() and (p / "train.rec").is_file()):
        return RecordIO(p)
    if not p.is_dir():
        raise DataError(f"{p}: exists but is not a folder or a supported data file. Accepted: {ACCEPTED_SOURCES}")
    has_subdirs = any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir())
    if has_subdirs and labelled is not False:
        try:
            return ImageFolder(p)
        except DataError:
            if labelled:
                raise
            loose = _loose_images(p)
            if loose and any(_is_image(f) and f.is_file() for d in p.iterdir()
                             if d.is_dir() and not d.name.startswith(".") for f in d.rglob("*")):
                raise _loose_images_error(p, loose) from None
    return FlatFolder(p)


@dataclass
class LoaderStats:
    """Counts kept while streaming: images delivered and corrupt images skipped."""

    images: int = 0
    skipped: int = 0


class _Guarded:
    """Dataset wrapper that turns a corrupt item into None (skip mode) instead of an error."""

    def __init__(self, ds: Any, skip_corrupt: bool) -> None:
        self.ds, self.skip_corrupt = ds, skip_corrupt

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            return self.ds[i]
        except DataError:
            if not self.skip_corrupt:
                raise
            return None


def _collate(items: list) -> tuple[Any, Any, int]:
    import torch

    from .preprocess import hwc_to_nchw

    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return torch.empty((0, 3, 112, 112), dtype=torch.uint8), torch.empty(0, dtype=torch.int64), skipped
    imgs = hwc_to_nchw(np.stack([g[0] for g in good]))
    return imgs, torch.as_tensor([g[1] for g in good], dtype=torch.int64), skipped


def stream(dataset: Any, batch_size: int = 128, *, indices: Any = None, shuffle: bool = False, seed: int = 0,
           num_workers: int = 0, skip_corrupt: bool = False, normalize: bool = True,
           stats: LoaderStats | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(images, labels)`` batches from any (image, label) dataset using ``num_workers``
    processes. Images are normalised float (B, 3, 112, 112) (``normalize``) or uint8. Corrupt images
    raise :class:`DataError` naming the file, or are skipped and counted in ``stats`` (``skip_corrupt``).
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from .preprocess import to_model_input

    ds: Any = _Guarded(dataset, skip_corrupt)
    if indices is not None:
        ds = Subset(ds, [int(i) for i in indices])
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                        collate_fn=_collate, persistent_workers=False)
    stats = stats if stats is not None else LoaderStats()
    for imgs, labels, skipped in loader:
        stats.skipped += skipped
        stats.images += len(labels)
        if len(labels):
            yield (to_model_input(imgs) if normalize else imgs), labels
