"""Safe checkpoint loading with errors that name keys and guess the architecture.

Accepted layouts: a plain state dict, a ``module.``-prefixed one (DataParallel / DDP), or a dict
holding the weights under ``state_dict`` / ``model`` / ``model_state_dict`` / ``backbone``. Loading
uses ``torch.load(weights_only=True)`` so a checkpoint cannot run code. Loading is strict: a
checkpoint that does not match is an error, never a silently random model (the reference QuantFace
code swallowed a failed teacher load; README references [5]).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..utils.errors import CheckpointError, QfairError
from ..utils.io import safe_torch_load

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "backbone", "net", "weights")
_PREFIXES = ("module.", "backbone.", "model.", "_orig_mod.")
_QUANTIZER_KEY = re.compile(r"(^|\.)\w*_quantizer\.")


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside ``obj`` and strip wrapper prefixes."""
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return extract_state_dict(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return strip_prefixes(tensors)
    raise CheckpointError(
        f"{source}: no state dict found (expected a mapping of parameter names to tensors, or a dict "
        f"with one under {', '.join(repr(k) for k in _NESTED_KEYS)}); got {type(obj).__name__}"
        + (f" with keys {list(obj)[:8]}" if isinstance(obj, Mapping) else "")
    )


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    changed = True
    while changed and sd:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely and return its state dict."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.pt", "backbone.pth", "model.pth"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder without model.pt / backbone.pth; pass the checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = safe_torch_load(path)
    except QfairError as exc:
        raise CheckpointError(str(exc)) from None
    return extract_state_dict(obj, str(path))


def guess_arch(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """Guess (registry name, kwargs) from key names and shapes; None if unrecognised."""
    keys = set(sd)
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        depth = []
        for stage in range(1, 5):
            idx = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
            depth.append(max(idx) + 1 if idx else 0)
        from .iresnet import DEPTHS

        kwargs: dict[str, Any] = {}
        if "fc.weight" in sd:
            kwargs["num_features"] = int(sd["fc.weight"].shape[0])
        width = int(sd["conv1.weight"].shape[0])
        if width != 64:
            kwargs["width"] = width
        for d, layers in DEPTHS.items():
            if tuple(depth) == layers:
                return f"iresnet{d}", kwargs
        return None
    if "output_layer.linear.weight" in keys:
        return "mobilefacenet", {"embedding_size": int(sd["output_layer.linear.weight"].shape[0])}
    if "features.layers.2.weight" in keys and "conv_sep.layers.0.weight" in keys:
        emb = int(sd["features.layers.2.weight"].shape[0])
        c1 = int(sd["layers.0.layers.0.weight"].shape[0])
        if c1 == 256:
            return "mbf_large", {"num_features": emb}
        return "mbf", {"num_features": emb, **({"scale": c1 // 64} if c1 != 128 else {})}
    return None


def _describe(arch: tuple[str, dict[str, Any]] | None) -> str:
    if arch is None:
        return ""
    name, kw = arch
    return name + (f" ({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else "")


def quantizer_keys(sd: Mapping[str, Any]) -> list[str]:
    """Keys of the quantizer state a qfair quantized model saves (``*_quantizer.scale`` and the like)."""
    return [k for k in sd if _QUANTIZER_KEY.search(k)]


class QuantizedCheckpointError(CheckpointError):
    """A quantized qfair model was given where a float checkpoint is needed.

    ``run_dir``: the folder that holds it; ``has_quant_json``: whether that folder has the quant.json
    that describes its quantizers; ``float_source``: the float checkpoint its config.yaml names, if any."""

    def __init__(self, message: str, run_dir: Path, has_quant_json: bool, float_source: str | None) -> None:
        super().__init__(message)
        self.run_dir, self.has_quant_json, self.float_source = run_dir, has_quant_json, float_source


def _float_source(run_dir: Path) -> str | None:
    """The ``model`` a run folder's config.yaml says it was quantized from (None when unknown)."""
    import yaml

    from ..runs import RunDir

    try:
        doc = RunDir(run_dir).read_config()
    except (OSError, yaml.YAMLError):
        return None
    cfg = doc.get("config") if isinstance(doc, dict) else None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    return model if isinstance(model, str) and model else None


def quantized_checkpoint_error(path: str | os.PathLike, keys: list[str]) -> QuantizedCheckpointError:
    """The error for a float load of a quantized qfair model at ``path`` (a run folder or its model.pt)."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    has_json = (run_dir / "quant.json").is_file()
    source = _float_source(run_dir)
    what = (f"{path} is an already-quantized qfair model, not a float checkpoint (it holds quantizer state: "
            f"{', '.join(keys[:2])}, ... {len(keys)} keys)")
    if has_json:
        todo = (f"pass the run folder {run_dir} itself where a quantized model is accepted (evaluate, compare, "
                f"export; in Python, qfair.load_quantized('{run_dir}') loads it), or the float checkpoint it "
                "was quantized from")
    else:
        todo = (f"it belongs in a run folder, but {run_dir} has no quant.json (written by qfair quantize beside "
                "model.pt, it describes the quantizers and is needed to load the model): restore quant.json "
                "into the run folder, or quantize the float checkpoint again")
    if source:
        todo += f" (config.yaml names the float model: {source})"
    return QuantizedCheckpointError(f"{what}; {todo}", run_dir, has_json, source)


def _mismatch_hint(sd: Mapping[str, torch.Tensor], guess: tuple[str, dict[str, Any]] | None, arch: str) -> str:
    """What to do about a checkpoint that does not fit ``arch``; never suggests ``arch`` itself."""
    qkeys = quantizer_keys(sd)
    if qkeys:
        return (f"the checkpoint is an already-quantized qfair model ({qkeys[0]}, ...): load its run folder "
                "(model.pt with quant.json; qfair.quant.load_quantized), or pass the float checkpoint.")
    if guess is not None and guess[0] != arch:
        return (f"the checkpoint looks like {_describe(guess)}, not {arch}; "
                f"pass --arch {guess[0]} (or arch='{guess[0]}').")
    if guess is not None:
        return (f"the keys are those of {_describe(guess)} but the tensors above do not fit; check the "
                "architecture options (embedding size, width) or that the file is not damaged.")
    return "check --arch against `qfair models`, or that this is a face backbone checkpoint."


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str, arch: str) -> None:
    """Load with strict key and shape matching; on mismatch name the keys and guess the real arch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    # BatchNorm's num_batches_tracked is bookkeeping that some exporters drop.
    missing_real = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing_real or unexpected or mismatched:
        guess = guess_arch(sd)
        lines = [f"{source} does not match architecture '{arch}':"]
        for label, items in (("missing keys", missing_real), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                lines.append(f"  {label}: {shown}")
        lines.append(f"  hint: {_mismatch_hint(sd, guess, arch)}")
        raise CheckpointError("\n".join(lines))
    full = {k: sd.get(k, own[k]) for k in own}
    model.load_state_dict(full, strict=True)


def load_model(path: str | os.PathLike, arch: str | None = None, **kwargs: Any) -> nn.Module:
    """Load a float face backbone from a checkpoint (safely, strictly) in eval mode.

    ``arch`` defaults to a guess from the key names and shapes; embedding size and width are read
    from the checkpoint unless given in ``kwargs``.
    """
    from .registry import MODELS, create_model

    if not isinstance(path, (str, os.PathLike)):
        hint = " (already a model: pass it on as it is)" if isinstance(path, nn.Module) else ""
        raise CheckpointError(f"load_model needs a checkpoint path, got {type(path).__name__}{hint}")
    sd = read_checkpoint(path)
    if qkeys := quantizer_keys(sd):
        raise quantized_checkpoint_error(path, qkeys)
    guess = guess_arch(sd)
    if arch is None:
        if guess is None:
            raise CheckpointError(f"{path}: cannot tell the architecture from its keys; pass --arch "
                                  "(arch= in Python; see `qfair models` / qfair.list_models())")
        arch, guessed_kw = guess
        kwargs = {**guessed_kw, **kwargs}
    else:
        arch = MODELS.canonical(arch)
        if guess is not None and guess[0] == arch:
            kwargs = {**guess[1], **kwargs}
    model = create_model(arch, **kwargs)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    load_state_dict_strict(model, sd, source=str(path), arch=arch)
    return model.eval()
