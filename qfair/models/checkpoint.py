"""Safe checkpoint loading with errors that name keys and guess the architecture.

Accepted layouts: a plain state dict, a ``module.``-prefixed one (DataParallel / DDP), a dict holding
the weights under ``state_dict`` / ``state_dict_backbone`` (arcface_torch ``checkpoint_gpu_N.pt``) /
``model`` / ``model_state_dict`` / ``backbone`` / ..., and safetensors files. Loading uses
``torch.load(weights_only=True)`` so a checkpoint cannot run code; a refused file (a whole pickled
model, TorchScript) gets the one-line conversion to a state dict. Loading is strict: a checkpoint that
does not match is an error, never a silently random model (the reference QuantFace code swallowed a
failed teacher load; FACTS.md section 5). The one exception is a training head saved beside the
backbone (margin-loss class centres such as partial FC's ``weight``): it is not part of the backbone,
so it is left out with a warning.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..utils.errors import CheckpointError, QfairError
from ..utils.io import safe_torch_load

_NESTED_KEYS = ("state_dict", "state_dict_backbone", "model", "model_state_dict", "backbone", "net", "weights")
_PREFIXES = ("module.", "backbone.", "model.", "_orig_mod.")
# keys of a training head saved beside the backbone: margin-loss class centres (ArcFace/CosFace/partial FC
# ``weight``, AdaFace ``kernel``) and the usual names of head modules; no backbone has such keys
_HEAD_KEYS = ("weight", "kernel")
_HEAD_PREFIXES = ("head.", "margin", "partial_fc.", "module_partial_fc.", "loss.", "classifier.", "metric_fc.",
                  "softmax")


def is_head_key(key: str) -> bool:
    """Whether ``key`` belongs to a training head (margin loss, classifier), not to a backbone."""
    return key in _HEAD_KEYS or key.startswith(_HEAD_PREFIXES)
_QUANTIZER_KEY = re.compile(r"(^|\.)\w*_quantizer\.")


_MAX_NESTING = 8  # wrapper dicts around the weights; real checkpoints use one or two


class _NestingError(CheckpointError):
    """The weights' wrapper dicts contain themselves, or are nested deeper than ``_MAX_NESTING``."""


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside ``obj`` and strip wrapper prefixes."""
    return _extract(obj, source, ())


def _extract(obj: Any, source: str, trail: tuple[tuple[int, str], ...]) -> dict[str, torch.Tensor]:
    """``extract_state_dict`` below the keys in ``trail`` ((id of the dict, key taken) from the top):
    a dict met again (a checkpoint dict that holds itself) or too deep a nesting is an error, not a
    RecursionError."""
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:  # the first candidate that holds tensors ('model' may be a config dict)
            if key in obj and isinstance(obj[key], Mapping):
                inner = (*trail, (id(obj), key))
                _check_nesting(obj[key], inner, source)
                try:
                    return _extract(obj[key], source, inner)
                except _NestingError:
                    raise
                except CheckpointError:
                    continue
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return strip_prefixes(tensors)
    raise CheckpointError(
        f"{source}: no state dict found (expected a mapping of parameter names to tensors, or a dict "
        f"with one under {', '.join(repr(k) for k in _NESTED_KEYS)}); got {type(obj).__name__}"
        + (f" with keys {list(obj)[:8]}" if isinstance(obj, Mapping) else "")
    )


def _check_nesting(inner: Mapping, trail: tuple[tuple[int, str], ...], source: str) -> None:
    """Raise ``_NestingError`` when ``inner`` (reached through ``trail``) is one of the dicts above it,
    or lies more than ``_MAX_NESTING`` dicts deep."""
    where = "".join(f"[{k!r}]" for _, k in trail)
    if any(id(inner) == i for i, _ in trail):
        raise _NestingError(f"{source}: the checkpoint dict contains itself (at checkpoint{where}), so it has no "
                            "state dict to find; save model.state_dict() itself (torch.save(model.state_dict(), "
                            "PATH)) and pass that file")
    if len(trail) > _MAX_NESTING:
        raise _NestingError(f"{source}: the weights are nested more than {_MAX_NESTING} dicts deep "
                            f"(checkpoint{where}...); save model.state_dict() itself and pass that file")


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.``, ``backbone.``...) shared by every key; keys of a training head
    saved beside the backbone (``backbone.* + head.weight``) do not stop the backbone's prefix going."""
    sd = dict(sd)
    changed = True
    while changed and sd:
        changed = False
        body = [k for k in sd if not is_head_key(k)] or list(sd)
        for p in _PREFIXES:
            if all(k.startswith(p) for k in body):
                sd = {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}
                changed = True
                break
    return sd


_FOLDER_NAMES = ("model.pt", "backbone.pth", "model.pth", "model.safetensors")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt", ".bin", ".safetensors")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (torch.save or safetensors) safely and return its state dict."""
    from ._formats import diagnose, diagnose_zip, looks_like_safetensors, read_safetensors

    path = Path(path)
    if path.is_dir():
        for name in _FOLDER_NAMES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            found = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
            shown = (f"; it holds {', '.join(found[:6])}{', ...' if len(found) > 6 else ''}: pass one of them"
                     if found else "; it holds no .pt/.pth/.safetensors file: pass the checkpoint file")
            raise CheckpointError(f"{path} is a folder without {' / '.join(_FOLDER_NAMES)}{shown}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file() and path.stat().st_size > 0 and looks_like_safetensors(path):
        try:
            return strip_prefixes(read_safetensors(path))
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); save or copy it again") from None
    if (msg := diagnose_zip(path)) is not None:
        raise CheckpointError(msg)
    try:
        obj = safe_torch_load(path)
    except QfairError as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        better = diagnose(path) if head.startswith(b"PK") or head[:1] == b"\x80" else None
        raise CheckpointError(better or str(exc)) from None
    return extract_state_dict(obj, str(path))


def _stage_counts(keys: set[str], pattern: str, n: int) -> list[int]:
    """Number of blocks per stage: one more than the largest index matched by ``pattern.format(stage)``."""
    counts = []
    for stage in range(n):
        idx = {int(m.group(1)) for k in keys if (m := re.match(pattern.format(stage), k))}
        counts.append(max(idx) + 1 if idx else 0)
    return counts


def iresnet_depths(sd: Mapping[str, torch.Tensor]) -> tuple[int, ...] | None:
    """Blocks per stage of an arcface_torch iresnet state dict (None when the keys are not iresnet's)."""
    keys = set(sd)
    # prelu / features tell iresnet from a torchvision ResNet, which has conv1 and layer1..4 too
    if not {"conv1.weight", "prelu.weight", "features.weight"} <= keys:
        return None
    depth = _stage_counts(keys, r"layer{}\.(\d+)\.", 5)[1:]
    return tuple(depth) if all(depth) else None


def _dim0(sd: Mapping[str, torch.Tensor], key: str, source: str) -> int:
    """Size of the first dimension of ``sd[key]``; CheckpointError naming the key for a scalar (0-d)
    tensor, which no weight that ``guess_arch`` reads is."""
    if sd[key].dim() == 0:
        raise CheckpointError(f"{source}: {key!r} is a scalar (shape ()), but that weight has at least one "
                              "dimension: the file is damaged or its tensors were altered; pass the "
                              "model.state_dict() saved by training")
    return int(sd[key].shape[0])


def guess_arch(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> tuple[str, dict[str, Any]] | None:
    """Guess (registry name, kwargs) from key names and shapes; None if unrecognised. CheckpointError
    (naming ``source``) when a tensor it reads the size of is a scalar."""
    keys = set(sd)
    if (depth := iresnet_depths(sd)) is not None:
        from .iresnet import DEPTHS

        kwargs: dict[str, Any] = {}
        if "fc.weight" in sd:
            kwargs["num_features"] = _dim0(sd, "fc.weight", source)
        width = _dim0(sd, "conv1.weight", source)
        if width != 64:
            kwargs["width"] = width
        for d, layers in DEPTHS.items():
            if depth == layers:
                return f"iresnet{d}", kwargs
        return None
    if "output_layer.linear.weight" in keys:
        return "mobilefacenet", {"embedding_size": _dim0(sd, "output_layer.linear.weight", source)}
    if "features.layers.2.weight" in keys and "conv_sep.layers.0.weight" in keys:
        emb = _dim0(sd, "features.layers.2.weight", source)
        scale = _dim0(sd, "layers.0.layers.0.weight", source) // 64 if "layers.0.layers.0.weight" in keys else 2
        # layers.1 is a plain ConvBlock when blocks[0] == 1, else a Residual; layers 3, 5, 7 are Residuals
        first = 1 if "layers.1.layers.0.weight" in keys else _stage_counts(keys, r"layers\.1\.layers\.(\d+)\.", 1)[0]
        rest = [_stage_counts(keys, rf"layers\.{i}\.layers\.(\d+)\.layers\.", 1)[0] for i in (3, 5, 7)]
        blocks = (first, *rest)
        if blocks == (2, 8, 12, 4) and scale == 4:
            return "mbf_large", {"num_features": emb}
        kwargs = {"num_features": emb}
        if blocks != (1, 4, 6, 2):
            kwargs["blocks"] = blocks
        if scale != 2:
            kwargs["scale"] = scale
        return "mbf", kwargs
    return None


def _guess_or_none(sd: Mapping[str, torch.Tensor], source: str) -> tuple[str, dict[str, Any]] | None:
    """``guess_arch``, or None where it cannot read a size (a scalar where a weight belongs)."""
    try:
        return guess_arch(sd, source)
    except CheckpointError:
        return None


def _unrecognised(sd: Mapping[str, torch.Tensor]) -> str:
    """What is known about a state dict that ``guess_arch`` cannot name."""
    depth = iresnet_depths(sd)
    if depth is not None:
        from .iresnet import DEPTHS

        known = ", ".join(f"iresnet{d} {tuple(v)}" for d, v in DEPTHS.items())
        return (f"its keys are those of an iresnet with blocks per stage {depth}, which no registered model has "
                f"({known})")
    return "its keys match no registered architecture"


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
                f"export; in Python, qfair.load_quantized({str(run_dir)!r}) loads it), or the float checkpoint it "
                "was quantized from")
    else:
        todo = (f"it belongs in a run folder, but {run_dir} has no quant.json (written by qfair quantize beside "
                "model.pt, it describes the quantizers and is needed to load the model): restore quant.json "
                "into the run folder, or quantize the float checkpoint again")
    if source:
        todo += f" (config.yaml names the float model: {source})"
    return QuantizedCheckpointError(f"{what}; {todo}", run_dir, has_json, source)


_BN_STATS = (".running_mean", ".running_var")


def _mismatch_hint(sd: Mapping[str, torch.Tensor], guess: tuple[str, dict[str, Any]] | None, arch: str,
                   missing: list[str] | None = None, arch_flag: str = "--arch") -> str:
    """What to do about a checkpoint that does not fit ``arch``; never suggests ``arch`` itself.
    ``arch_flag``: the command-line option that sets ``arch`` (``--teacher-arch`` for a qat teacher)."""
    qkeys = quantizer_keys(sd)
    if qkeys:
        return (f"the checkpoint is an already-quantized qfair model ({qkeys[0]}, ...): load its run folder "
                "(model.pt with quant.json; qfair.quant.load_quantized), or pass the float checkpoint.")
    if guess is not None and guess[0] != arch:
        return (f"the checkpoint looks like {_describe(guess)}, not {arch}; "
                f"pass {arch_flag} {guess[0]} (or arch='{guess[0]}').")
    if missing and all(k.endswith(_BN_STATS) for k in missing):
        return ("the checkpoint has no BatchNorm running statistics (running_mean / running_var): it was saved "
                "from model.parameters() / named_parameters() or had its buffers removed, and without them the "
                "embeddings are wrong. Save the trained model's model.state_dict() (it holds the buffers).")
    if guess is not None:
        return (f"the keys are those of {_describe(guess)} but the tensors above do not fit; check the "
                "architecture options (embedding size, width) or that the file is not damaged.")
    return f"check {arch_flag} against `qfair models`, or that this is a face backbone checkpoint."


def _dtype_kind(t: torch.Tensor) -> str:
    """float / complex / bool / integer: values of one kind copy into another only by changing meaning."""
    if t.is_floating_point():
        return "float"
    if t.is_complex():
        return "complex"
    return "bool" if t.dtype == torch.bool else "integer"


def _dtype_mismatches(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys whose checkpoint tensor is of another kind than the model's (integer codes or bools where the
    model has float weights, ...): load_state_dict would cast them silently. fp16 / bf16 / fp64 -> fp32
    and int32 -> int64 are the same kind; BatchNorm's num_batches_tracked is bookkeeping and not checked."""
    return [f"{k}: checkpoint {sd[k].dtype} vs model {own[k].dtype}" for k in own
            if k in sd and not k.endswith("num_batches_tracked") and _dtype_kind(sd[k]) != _dtype_kind(own[k])]


def _report(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
    return f"  {label}: {shown}"


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str, arch: str,
                           arch_flag: str = "--arch") -> None:
    """Load with strict key, shape and dtype-kind matching; on mismatch name the keys and guess the real arch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    dtypes = _dtype_mismatches(own, sd)
    # BatchNorm's num_batches_tracked is bookkeeping that some exporters drop.
    missing_real = [k for k in missing if not k.endswith("num_batches_tracked")]
    head = [k for k in unexpected if is_head_key(k)]
    unexpected = [k for k in unexpected if not is_head_key(k)]
    if missing_real or unexpected or mismatched or dtypes:
        guess = _guess_or_none(sd, source)  # a scalar where a weight belongs: the shape mismatches name it
        lines = [f"{source} does not match architecture '{arch}':"]
        lines += [_report(label, items) for label, items in (
            ("missing keys", missing_real), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
            ("dtype mismatches", dtypes)) if items]
        hint = (_DTYPE_HINT if dtypes and not (missing_real or unexpected or mismatched)
                else _mismatch_hint(sd, guess, arch, missing_real, arch_flag))
        lines.append(f"  hint: {hint}")
        raise CheckpointError("\n".join(lines))
    if head:
        shown = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in head[:3]) + (", ..." if len(head) > 3 else "")
        warnings.warn(f"{source}: left out {len(head)} tensor(s) of a training head saved beside the backbone "
                      f"({shown}); they are not part of the {arch} backbone", stacklevel=3)
    full = {k: sd.get(k, own[k]) for k in own}
    model.load_state_dict(full, strict=True)


_DTYPE_HINT = ("the checkpoint stores integer or boolean values where the model has float weights (or the "
               "reverse); loading would cast them silently into wrong weights. It may hold quantized integer "
               "codes (an exported model) rather than float weights: pass the float checkpoint, or save the "
               "trained model's model.state_dict() again.")


def load_model(path: str | os.PathLike, arch: str | None = None, *, arch_flag: str = "--arch",
               **kwargs: Any) -> nn.Module:
    """Load a float face backbone from a checkpoint (safely, strictly) in eval mode.

    ``arch`` defaults to a guess from the key names and shapes; embedding size and width are read
    from the checkpoint unless given in ``kwargs``. ``arch_flag``: the command-line option that sets
    ``arch``, named in the hints (``--teacher-arch`` for a teacher, ...). A packed low-bit checkpoint
    (``.qpk``, ``qfair export --format packed``) records its quantization and loads as the quantized model
    it holds (``qfair.export.packed.load_packed_model``).
    """
    from ..export.packed import is_packed_file, load_packed_model
    from .registry import MODELS, create_model

    if not isinstance(path, (str, os.PathLike)):
        hint = " (already a model: pass it on as it is)" if isinstance(path, nn.Module) else ""
        raise CheckpointError(f"load_model needs a checkpoint path, got {type(path).__name__}{hint}")
    if is_packed_file(path):
        return load_packed_model(path, arch=arch)
    sd = read_checkpoint(path)
    if qkeys := quantizer_keys(sd):
        raise quantized_checkpoint_error(path, qkeys)
    if arch is None:
        guess = guess_arch(sd, str(path))
        if guess is None:
            raise CheckpointError(f"{path}: cannot tell the architecture: {_unrecognised(sd)}; pass {arch_flag} "
                                  "(arch= in Python; see `qfair models` / qfair.list_models())")
        arch, guessed_kw = guess
        kwargs = {**guessed_kw, **kwargs}
    else:
        arch = MODELS.canonical(arch)
        guess = _guess_or_none(sd, str(path))  # a scalar weight: the strict load names its shape
        if guess is not None and guess[0] == arch:
            kwargs = {**guess[1], **kwargs}
    model = create_model(arch, **kwargs)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # fp16 / bf16 / fp64 -> fp32
    load_state_dict_strict(model, sd, source=str(path), arch=arch, arch_flag=arch_flag)
    _check_finite(model, str(path))
    return model.eval()


def _check_finite(model: nn.Module, source: str) -> None:
    """Refuse NaN / Inf weights or BatchNorm statistics: every embedding would be NaN, and every metric
    computed from them meaningless."""
    bad = [(k, int((~torch.isfinite(v)).sum()), v.numel()) for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(f"{k} ({n} of {total})" for k, n, total in bad[:4]) + (
            f", ... ({len(bad)} tensors in all)" if len(bad) > 4 else "")
        raise CheckpointError(f"{source}: NaN or Inf values in {shown}. The checkpoint is damaged, or was saved "
                              "by a training run that diverged (check that run's loss); pass an earlier "
                              "checkpoint of it.")
