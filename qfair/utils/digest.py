"""Content digests of tensors and model weights: cache keys (teacher embeddings) and fingerprints (the
face model a group head was trained on). Independent of the file a model was loaded from."""
from __future__ import annotations

import hashlib
from typing import Any


def tensor_digest(h: "hashlib._Hash", t: Any) -> None:
    """Feed a tensor's shape, dtype and bytes into ``h``."""
    import torch

    t = t.detach().cpu().contiguous()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    flat = t.reshape(-1)  # 0-d tensors cannot be viewed as bytes
    h.update(flat.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else flat.numpy().tobytes())


def model_digest(model: Any) -> str:
    """24 hex digits of sha256 over the names and values of ``model``'s state dict (weights and buffers)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        tensor_digest(h, t)
    return h.hexdigest()[:24]
