"""Placement recipes (where quantizers go) and ``prepare(model, cfg)``.

Recipes are registered in :data:`RECIPES`; each rewrites a deep copy of any ``nn.Module`` in place.

``quantface`` -- the reference method, README references [5], read as follows:
  * every Conv2d and Linear (stem, downsample, depthwise, GDC, embedding FC): weights per output
    channel, asymmetric, min/max recomputed from the float weights at every forward (``dynamic``);
    no quantizer on their inputs (the activations are quantized where the recipe says, not per layer);
  * after every PReLU: per-tensor asymmetric activation quantizer with a running global min/max; the
    PReLU slope is quantized too (per-tensor asymmetric min/max with the weight bits: a per-channel
    range of a one-value-per-channel tensor would be a no-op);
  * after every residual block: a quantizer on the output of each ``ResidualAdd``;
  * BatchNorm is never folded; the network input and the embedding head (BN -> flatten -> FC -> BN1d)
    get no activation quantizer ("stay float"): with the placement above nothing quantizes them
    anyway, and the FC *weights* are quantized because "every Linear is quantized". Use ``skip: [fc]``
    to keep the FC weights float as well.

``deploy`` -- what TensorRT runs (README references [8]): BatchNorm folded into the conv it directly
follows when that conv's output feeds nothing else (exact; proven on the ``torch.fx`` graph, and the
BNs left unfolded are recorded with the reason in ``qfair_quant["bn_fold"]``), symmetric
per-channel weights (axis 0), symmetric per-tensor quantizers on every Conv2d / Linear input and on
the skip input of every ``ResidualAdd``; PReLU and BN that cannot be folded run in float between Q/DQ.

Residual adds are found as ``qfair.models`` ``ResidualAdd`` modules (both iresnet and MobileFaceNet
use them); a model that adds with ``+`` inside ``forward`` gets no skip / block-output quantizers.
"""
from __future__ import annotations

import copy
import fnmatch
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..models._layers import ResidualAdd
from ..utils.errors import ConfigError, QuantError, require_module
from ..utils.registry import Registry
from .config import QuantConfig
from .layers import QuantConv2d, QuantLinear, QuantPReLU, QuantResidualAdd, fold_bn_into
from .quantizer import ActQuantizer, WeightQuantizer, iter_quantizers

RECIPES: Registry[Callable[[nn.Module, QuantConfig, "torch.Tensor | None"], None]] = Registry("recipe")


def _matches(name: str, patterns) -> str | None:
    """The first pattern matching ``name`` or one of its parents (``layer1`` matches ``layer1.0.conv1``)."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
            return pat
    return None


class _Placer:
    """Builds quantizers for one model under one config (bits overrides, skip patterns, observers)."""

    def __init__(self, cfg: QuantConfig, w_sym: bool, a_sym: bool) -> None:
        self.cfg, self.w_sym, self.a_sym = cfg, w_sym, a_sym
        self.float_kept: list[str] = []

    def skipped(self, name: str) -> bool:
        if _matches(name, self.cfg.skip):
            self.float_kept.append(name)
            return True
        return False

    def _bits(self, name: str, table: dict[str, int], default: int) -> int:
        pat = _matches(name, table)
        return table[pat] if pat is not None else default

    def weight(self, name: str, w: torch.Tensor, per_channel: bool | None = None, symmetric: bool | None = None
               ) -> WeightQuantizer:
        per_channel = self.cfg.per_channel if per_channel is None else per_channel
        sym = self.w_sym if symmetric is None else symmetric
        obs = self.cfg.weight_observer
        from .observers import OBSERVERS

        dynamic = OBSERVERS.canonical(obs) in ("minmax", "max")  # the registry accepts "MinMax" too
        q = WeightQuantizer(self._bits(name, self.cfg.layer_wbits, self.cfg.wbits), sym,
                            axis=0 if per_channel else None, channels=w.shape[0] if per_channel else None,
                            narrow=self.cfg.narrow_range and sym, observer=obs,
                            observer_options={"percentile": self.cfg.percentile}, dynamic=dynamic, layer=name)
        if not dynamic:
            q.init_from(w)
        return q

    def act(self, name: str, role: str) -> ActQuantizer:
        opts = {"percentile": self.cfg.percentile, "averaging_constant": self.cfg.averaging_constant}
        return ActQuantizer(self._bits(name, self.cfg.layer_abits, self.cfg.abits), self.a_sym,
                            observer=self.cfg.observer, observer_options=opts, layer=name, role=role)


def _sym(value: bool | None, default: bool) -> bool:
    return default if value is None else value


@RECIPES.register("quantface", aliases=("reference",))
def quantface(model: nn.Module, cfg: QuantConfig, example: torch.Tensor | None = None) -> list[str]:
    """QuantFace placement (module docstring)."""
    place = _Placer(cfg, _sym(cfg.weight_symmetric, False), _sym(cfg.act_symmetric, False))
    if cfg.fold_bn:
        _fold(model)
    for name, m in list(model.named_modules()):
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.PReLU, ResidualAdd)) or place.skipped(name):
            continue
        if isinstance(m, nn.Conv2d):
            QuantConv2d.convert(m, place.weight(name, m.weight))
        elif isinstance(m, nn.Linear):
            QuantLinear.convert(m, place.weight(name, m.weight))
        elif isinstance(m, nn.PReLU):
            slope = place.weight(name, m.weight, per_channel=False, symmetric=False)
            QuantPReLU.convert(m, weight_quantizer=slope, output_quantizer=place.act(name, "output"))
        else:
            QuantResidualAdd.convert(m, output_quantizer=place.act(name, "output"))
    return place.float_kept


@RECIPES.register("deploy", aliases=("tensorrt",))
def deploy(model: nn.Module, cfg: QuantConfig, example: torch.Tensor | None = None) -> list[str]:
    """TensorRT-style placement (module docstring)."""
    place = _Placer(cfg, _sym(cfg.weight_symmetric, True), _sym(cfg.act_symmetric, True))
    if cfg.fold_bn is None or cfg.fold_bn:
        _fold(model)
    for name, m in list(model.named_modules()):
        if not isinstance(m, (nn.Conv2d, nn.Linear, ResidualAdd)) or place.skipped(name):
            continue
        if isinstance(m, nn.Conv2d):
            QuantConv2d.convert(m, place.weight(name, m.weight), place.act(name, "input"))
        elif isinstance(m, nn.Linear):
            QuantLinear.convert(m, place.weight(name, m.weight), place.act(name, "input"))
        else:
            QuantResidualAdd.convert(m, skip_quantizer=place.act(name, "skip"))
    return place.float_kept


# ---------------------------------------------------------------------------- BN folding


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def foldable_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(conv, bn) name pairs where folding the BatchNorm into the conv / linear is exact, and the reason
    every other BatchNorm is not folded (bn name -> reason), from the ``torch.fx`` graph of ``model``.

    Exact means: the BN is called once, on the output of a Conv2d / Linear that is called once, and
    that output has no other user (a functional ``+``, a second module, the model's outputs, ...), the
    BN tracks running statistics and its channel count matches. A model that ``torch.fx`` cannot trace
    (data-dependent control flow) gets no folding at all: nothing can be proven exact.
    """
    from torch import fx

    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not bns:
        return [], {}
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 -- fx raises many types (TraceError, TypeError, ...)
        reason = f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); " \
                 "no BatchNorm is folded"
        return [], {n: reason for n in bns}
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    pairs, skipped = [], {}
    for name, bn in bns.items():
        nodes = calls.get(name, [])
        if len(nodes) != 1:
            skipped[name] = f"called {len(nodes)} times in the traced graph"
            continue
        node = nodes[0]
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(src, fx.Node) or src.op != "call_module":
            skipped[name] = "input is not the output of a module"
            continue
        conv_name = str(src.target)
        conv = model.get_submodule(conv_name)
        if not isinstance(conv, (nn.Conv2d, nn.Linear)):
            skipped[name] = f"input comes from {type(conv).__name__} '{conv_name}', not a Conv2d / Linear"
        elif len(calls[conv_name]) != 1:
            skipped[name] = f"'{conv_name}' is called {len(calls[conv_name])} times"
        elif len(src.users) != 1:
            users = ", ".join(sorted(str(u.target) for u in src.users))
            skipped[name] = f"the output of '{conv_name}' also feeds {users}: folding would change those"
        elif not bn.track_running_stats or bn.running_mean is None:
            skipped[name] = "no running statistics"
        elif bn.num_features != (conv.out_channels if isinstance(conv, nn.Conv2d) else conv.out_features):
            skipped[name] = f"channel count differs from '{conv_name}'"
        else:
            pairs.append((conv_name, name))
    return pairs, skipped


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None,
                   skipped: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Fold every BatchNorm where that is exact (:func:`foldable_pairs`) into its conv / linear, in place.

    Each folded BN becomes ``nn.Identity``; returns the (conv, bn) name pairs folded. ``skipped``, when
    given, receives bn name -> why it was kept. ``example`` is accepted for compatibility and unused: the
    analysis is symbolic, so it holds for every input.
    """
    pairs, why = foldable_pairs(model)
    if skipped is not None:
        skipped.update(why)
    for conv_name, bn_name in pairs:
        fold_bn_into(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_child(model, bn_name, nn.Identity())
    return pairs


def _fold(model: nn.Module) -> None:
    """Fold for a recipe and remember what happened (``prepare`` moves it into ``qfair_quant``)."""
    skipped: dict[str, str] = {}
    folded = fold_batchnorm(model, skipped=skipped)
    model._qfair_bn_fold = {"folded": [list(p) for p in folded], "not_folded": skipped}


_QUANTIZABLE = (nn.Conv2d, nn.Linear, nn.PReLU, ResidualAdd)


def check_patterns(model: nn.Module, cfg: QuantConfig) -> None:
    """Every ``skip`` / ``layer_wbits`` / ``layer_abits`` pattern must match a quantizable layer of
    ``model`` (or a module holding one): a misspelt name would otherwise change nothing, silently."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _QUANTIZABLE)]
    for key, patterns in (("skip (--skip)", cfg.skip), ("layer_wbits", cfg.layer_wbits),
                          ("layer_abits", cfg.layer_abits)):
        for pat in patterns:
            if any(_matches(n, [pat]) for n in names):
                continue
            import difflib

            scopes = sorted({p for n in names for p in (n, n.split(".")[0])})
            close = difflib.get_close_matches(pat, scopes, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            top = ", ".join(sorted({n.split(".")[0] for n in names}))
            raise QuantError(
                f"{key}: pattern '{pat}' matches no Conv2d, Linear, PReLU or ResidualAdd of "
                f"{type(model).__name__}; {hint}top-level modules: {top} "
                f"(patterns are fnmatch over dotted module names, and a module's name covers the layers inside it; "
                f"`qfair sensitivity` writes overrides with this model's names)")


def as_quant_config(cfg: Any) -> QuantConfig:
    """``cfg`` as a :class:`QuantConfig`: itself, one built from a mapping of its keys, or the default for None."""
    if cfg is None:
        return QuantConfig()
    if isinstance(cfg, QuantConfig):
        return cfg
    if isinstance(cfg, Mapping):
        from ..config import config_from_dict

        return config_from_dict(QuantConfig, cfg, source="cfg")
    raise ConfigError(f"cfg must be a qfair.QuantConfig (e.g. QuantConfig(bits=6)) or a mapping of its keys, "
                      f"got {type(cfg).__name__} {cfg!r:.60}")


def check_float_model(model: Any, what: str) -> None:
    """Refuse what is not a float ``nn.Module``: a path (load it first) or an already-quantized model."""
    require_module(model, f"{what} needs the float model as", error=QuantError)
    quantizers = [name for name, _ in iter_quantizers(model)]
    if quantizers:
        meta = getattr(model, "qfair_quant", None) or {}
        desc = f" (W{meta.get('wbits')}A{meta.get('abits')}, recipe {meta.get('recipe')})" if meta else ""
        raise QuantError(f"{what}: {type(model).__name__} is already quantized{desc}: it holds {len(quantizers)} "
                         f"quantizers ({quantizers[0]}, ...). Pass the float model it was quantized from "
                         "(qfair.load_model); quantizing again would stack on its calibrated, corrected state")


def prepare(model: nn.Module, cfg: QuantConfig | Mapping[str, Any] | None = None,
            example_input: torch.Tensor | None = None) -> nn.Module:
    """Deep copy of the float ``model`` with quantizers placed by ``cfg.recipe``; weights quantized,
    activations waiting for calibration (:func:`qfair.quant.quantize`). Records ``model.qfair_quant``."""
    cfg = as_quant_config(cfg)
    check_float_model(model, "prepare")
    recipe = RECIPES.get(cfg.recipe)
    check_patterns(model, cfg)
    qmodel = copy.deepcopy(model)
    float_kept = recipe(qmodel, cfg, example_input)
    quantizers = list(iter_quantizers(qmodel))
    param = next(iter(qmodel.parameters()), None)
    if param is not None:  # new quantizer buffers follow the model (CUDA models stay on CUDA)
        for _, q in quantizers:
            q.to(param.device)
    if not quantizers:
        raise QuantError(f"nothing to quantize in {type(model).__name__}: recipe '{cfg.recipe}' found no Conv2d, "
                         f"Linear, PReLU or ResidualAdd outside the skip patterns {list(cfg.skip)}")
    from ..config import config_to_dict

    qmodel.qfair_quant = {
        "recipe": RECIPES.canonical(cfg.recipe), "wbits": cfg.wbits, "abits": cfg.abits,
        "observer": cfg.observer, "weight_observer": cfg.weight_observer, "float_kept": float_kept,
        "config": config_to_dict(cfg), "calibrated": False,
    }
    fold = qmodel.__dict__.pop("_qfair_bn_fold", None)
    if fold is not None:
        qmodel.qfair_quant["bn_fold"] = fold
    return qmodel
