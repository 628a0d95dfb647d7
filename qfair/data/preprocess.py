"""The one preprocessing convention (README references [3]): RGB, 112x112 aligned, (x / 255 - 0.5) / 0.5,
horizontal flip for test-time augmentation.

Images travel through qfair as uint8: numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` (HWC, as decoded) or torch
``(N, 3, 112, 112)`` (NCHW, as batched). Only :func:`to_model_input` turns them into the float tensors a
model eats. Decoding goes through Pillow and every failure becomes a :class:`DataError` naming the file.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_SIZE = 112
_WARNED_SIZES: set[tuple[int, int]] = set()  # non-square sizes already warned about (see _pil_to_array)
_WARNED_SOURCES: set[str] = set()  # image folders / pairs files already warned about resizing (see _pil_to_array)
ImageSource = bytes | bytearray | memoryview | str | os.PathLike | np.ndarray


def to_model_input(x: Any) -> torch.Tensor:
    """uint8 images -> float32 model input in [-1, 1]: ``(x / 255 - 0.5) / 0.5``.

    Accepts a uint8 tensor ``(N, 3, H, W)`` or ``(3, H, W)``, or a uint8 numpy array in NHWC / HWC
    layout (converted to NCHW). A float tensor is refused: it is most likely already normalised.
    """
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise DataError(f"to_model_input expects uint8 images, got numpy {x.dtype}")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise DataError(f"numpy images must be (N, H, W, 3) or (H, W, 3) RGB, got shape {x.shape}")
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if not isinstance(x, torch.Tensor):
        raise DataError(f"to_model_input expects a uint8 tensor or array, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise DataError(f"to_model_input expects uint8 images, got {x.dtype} (already normalised?)")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise DataError(f"images must be (N, 3, H, W) uint8, got shape {tuple(x.shape)}")
    return (x.float() / 255.0 - 0.5) / 0.5


def from_model_input(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_input`: float ``(N, 3, H, W)`` in [-1, 1] -> uint8 (rounded, clipped)."""
    import torch

    return ((x.detach().float() * 0.5 + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


def flip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of ``(..., H, W)`` images (test-time augmentation)."""
    return x.flip(-1)


def hwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 numpy ``(N, H, W, 3)`` -> uint8 tensor ``(N, 3, H, W)`` (contiguous copy)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2)))


def nchw_to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 tensor ``(N, 3, H, W)`` -> numpy ``(N, H, W, 3)``."""
    return images.detach().cpu().numpy().transpose(0, 2, 3, 1).copy()


def _describe(src: Any, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "<image bytes>"


def _to_8bit(img: Any, where: str) -> Any:
    """A Pillow image with more than 8 bits per pixel (16-bit or 32-bit integer greyscale) -> mode "L",
    scaled to 0..255. Pillow's own ``convert("RGB")`` clips such pixels at 255 instead of scaling them,
    which turns a 16-bit face into a white square; float pixels have no defined range and are refused."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        full = 65535
    elif img.mode == "I":
        # Pillow < 10 opens 16-bit greyscale PNGs as "I"; other "I" files (TIFF) may hold 8-bit values
        arr = np.asarray(img)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{where}: 32-bit integer pixels in {lo}..{hi}, outside the 0..65535 range qfair can "
                            f"scale to 8 bits. Save the image as 8-bit RGB (PNG or JPEG).")
        full = 65535 if (hi > 255 or img.format == "PNG") else 255
    elif img.mode == "F":
        raise DataError(f"{where}: floating-point pixels (Pillow mode F) have no defined 0..255 range. Save the "
                        f"image as 8-bit RGB (PNG or JPEG).")
    else:
        return img
    arr = np.asarray(img).astype(np.int64)
    return Image.fromarray(((arr * 255 + full // 2) // full).astype(np.uint8), mode="L")


def _pil_to_array(img: Any, size: int | None, where: str = "<image>", source: str | None = None) -> np.ndarray:
    from PIL import Image

    img = _to_8bit(img, where)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and img.size != (size, size):
        if img.width != img.height and img.size not in _WARNED_SIZES:
            import warnings

            _WARNED_SIZES.add(img.size)  # once per size and process: a folder of them would repeat it
            warnings.warn(f"{where}: image is {img.width}x{img.height}, not square; it is stretched to "
                          f"{size}x{size}, which distorts the face. qfair expects aligned square face crops "
                          f"(the 112x112 ArcFace alignment): align or crop the images first.", stacklevel=2)
        elif img.width == img.height and source is not None and source not in _WARNED_SOURCES:
            import warnings

            # images of a folder or pairs file are meant to be aligned crops already (a .bin or .rec may
            # hold other sizes by convention and is resized without a word); once per source and process
            _WARNED_SOURCES.add(source)
            warnings.warn(f"{source}: images are not {size}x{size} (e.g. {where} is {img.width}x{img.height}); "
                          f"they are resized to {size}x{size}. qfair expects aligned face crops (the 112x112 "
                          f"ArcFace alignment): if these are not aligned that way, align them first, or accuracy "
                          f"suffers.", stacklevel=2)
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def decode_image(src: ImageSource, *, name: str | None = None, size: int | None = IMAGE_SIZE,
                 source: str | None = None) -> np.ndarray:
    """Decode an encoded image (bytes, a path, or a 1-D uint8 array of encoded bytes) to RGB uint8.

    Returns ``(size, size, 3)`` (resized with bilinear filtering if needed; ``size=None`` keeps the
    original size). A 3-D uint8 array is taken as already decoded HWC RGB. Any decoding failure
    becomes a :class:`DataError` that names the file (``name`` or the path). ``source`` names the image
    folder or pairs file the image belongs to: the first square image of another size from it warns
    that it is resized (once per source and process; non-square images always warn once per size).
    """
    from PIL import Image

    where = _describe(src, name)
    src_in = src
    if isinstance(src, np.ndarray):
        if src.ndim == 3 and src.dtype == np.uint8 and src.shape[-1] == 3:
            if size is not None and src.shape[:2] != (size, size):
                return _pil_to_array(Image.fromarray(src), size, where, source)
            return np.ascontiguousarray(src)
        if src.ndim != 1 or src.dtype != np.uint8:
            raise DataError(f"{where}: expected encoded image bytes or an (H, W, 3) uint8 array, got "
                            f"array {src.dtype} {src.shape}")
        src = src.tobytes()
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise DataError(f"{where}: image file not found")
        try:
            src = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{where}: cannot read image file ({exc})") from None
    if not isinstance(src, (bytes, bytearray, memoryview)):
        raise DataError(f"{where}: cannot decode an object of type {type(src).__name__} as an image")
    if len(src) == 0:
        raise DataError(f"{where}: empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(bytes(src))) as img:
            img.load()
            return _pil_to_array(img, size, where, source)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt input; all mean "corrupt"
        # Pillow names the BytesIO it was given ("cannot identify image file <_io.BytesIO object at 0x...>")
        cause = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        what = "Remove or replace the file" if isinstance(src_in, (str, os.PathLike)) else \
            "Replace the data file it comes from"
        raise DataError(f"{where}: corrupt or unsupported image ({type(exc).__name__}: {cause}). {what} "
                        f"(`qfair evaluate` and `qfair quantize` skip such images with --skip-corrupt).") from None


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``(H, W, 3)`` RGB -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """uint8 ``(H, W, 3)`` RGB -> JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
