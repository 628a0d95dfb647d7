"""Contact sheets: a grid of face images in one PNG, so a person can look at what a source holds."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import DataError

SHEET_NAME = "_contact_sheet.png"  # written inside image folders; the folder readers skip it


def contact_sheet(images: Any, ncol: int = 16, pad: int = 2, labels: Sequence[str] | None = None) -> np.ndarray:
    """uint8 images (N, 3, H, W) tensor or (N, H, W, 3) array -> one uint8 (rows*H', ncol*W', 3) grid.

    ``labels`` (one per image) are drawn in the top-left corner of each tile when given.
    """
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim != 4:
        raise DataError(f"contact_sheet needs a batch of images, got shape {arr.shape}")
    if arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    arr = arr.astype(np.uint8, copy=False)
    n, h, w, _ = arr.shape
    if n == 0:
        raise DataError("contact_sheet: no images")
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    sheet = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    if labels is not None:
        from PIL import Image, ImageDraw

        img = Image.fromarray(sheet)
        draw = ImageDraw.Draw(img)
        for i, text in enumerate(labels[:n]):
            r, c = divmod(i, ncol)
            draw.text((pad + c * (w + pad) + 2, pad + r * (h + pad) + 1), str(text), fill=(255, 255, 0))
        sheet = np.asarray(img)
    return sheet


def write_contact_sheet(images: Any, path: str | Path, ncol: int = 16, labels: Sequence[str] | None = None,
                        title: str | None = None) -> Path:
    """Write :func:`contact_sheet` as a PNG (atomically). ``title`` is drawn in a banner on top."""
    from PIL import Image, ImageDraw

    from ..utils.io import atomic_path

    sheet = contact_sheet(images, ncol=ncol, labels=labels)
    img = Image.fromarray(sheet)
    if title:
        banner = Image.new("RGB", (img.width, 16), (255, 255, 255))
        ImageDraw.Draw(banner).text((4, 2), title, fill=(0, 0, 0))
        full = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
        full.paste(banner, (0, 0))
        full.paste(img, (0, 16))
        img = full
    path = Path(path)
    with atomic_path(path, mkdir=True) as tmp:
        img.save(tmp, format="PNG")
    return path
