"""Sensitivity analysis: quantize one layer (or one residual block) at a time and rank them.

The model is prepared and calibrated once (``quantize``); then, for every unit, only that unit's
quantizers are switched on and the embeddings of probe images are compared with the float model's:
drift = 1 - mean cosine. With PTQ corrections (``cfg.ptq``: bias correction, BatchNorm re-estimation,
AdaRound) a unit is measured the other way round, leave one out: every quantizer on except that unit's,
its drift being how much the whole quantized model's drift falls when that unit stays in float. The
corrections were made for the fully quantized model; with one unit alone quantized they would act on
a model they were not made for (demo MobileFaceNet W6A6 with bn_reestimate: the corrections alone drift
0.0076, more than most units' own 0.0000-0.0034, and reorder the ranking). With ``eval_fn(model) ->
{group: accuracy}`` (for example a verification benchmark with demographic groups) the per-group
accuracy change is recorded too: which layers make the quantized model forget which group.
:func:`overrides_yaml` turns the most sensitive units into ``layer_wbits`` / ``layer_abits`` overrides
(mixed precision).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..utils.progress import track
from .config import QuantConfig
from .layers import QuantResidualAdd
from .ptq import as_images, model_dtype, quantize, set_quantizers
from .quantizer import iter_quantizers


def units(qmodel: nn.Module, granularity: str = "layer") -> dict[str, set[str]]:
    """Unit name -> names of its quantizers. ``layer``: the module owning the quantizer; ``block``:
    the module that owns a residual add (an iresnet block, a MobileFaceNet bottleneck) or else the layer."""
    if granularity not in ("layer", "block"):
        from ..utils.errors import ConfigError

        raise ConfigError(f"granularity must be 'layer' or 'block', got '{granularity}'")
    blocks = sorted({n.rpartition(".")[0] for n, m in qmodel.named_modules() if isinstance(m, QuantResidualAdd)},
                    key=len, reverse=True)
    out: dict[str, set[str]] = {}
    for name, q in iter_quantizers(qmodel):
        unit = q.layer or name.rpartition(".")[0]
        if granularity == "block":
            unit = next((b for b in blocks if b and (unit == b or unit.startswith(b + "."))), unit)
        out.setdefault(unit, set()).add(name)
    return out


def _embed(model: nn.Module, probe: list[torch.Tensor]) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x) for x in probe])
    finally:
        model.train(was)


def sensitivity(model: nn.Module, cfg: QuantConfig | None, calib_batches: Iterable[Any],
                eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, *, granularity: str = "layer",
                probe_images: int = 64) -> dict[str, Any]:
    """Rank units by the embedding drift each causes alone (and per-group accuracy change with eval_fn).

    Drift and accuracy change are measured against the float ``model``. ``method`` "alone" (no
    ``cfg.ptq``): each unit with only its own quantizers on; ``delta[g]`` = accuracy(that unit quantized) -
    accuracy(float). "leave_one_out" (with ``cfg.ptq``, whose corrections were made for the whole quantized
    model): every quantizer on except the unit's; ``drift`` = drift(all) - drift(all but the unit), what
    keeping the unit in float recovers, and ``delta[g]`` = accuracy(all) - accuracy(all but the unit).
    Either way a larger drift is a more sensitive unit and a negative delta a group it costs accuracy.

    Returns ``{"config", "granularity", "method", "probe_images", "float": {...}, "all": {...}, "units":
    [rows]}`` with rows sorted by drift (largest first): ``{"unit", "quantizers", "drift", "cosine"[,
    "groups", "delta"]}``; ``cosine`` and ``groups`` are those of the model measured (the unit alone, or
    all but the unit).
    """
    from ..utils.errors import ConfigError
    from .recipes import as_quant_config, check_float_model

    cfg = as_quant_config(cfg)
    check_float_model(model, "sensitivity")
    if granularity not in ("layer", "block"):  # before the (slow) calibration, not after it
        raise ConfigError(f"granularity must be 'layer' or 'block', got {granularity!r}")
    if isinstance(probe_images, bool) or not isinstance(probe_images, int) or probe_images < 1:
        raise ConfigError(f"probe_images must be a whole number >= 1, got {probe_images!r}")
    if isinstance(calib_batches, torch.Tensor) and calib_batches.dim() == 4:  # (N, 3, H, W), as quantize takes
        calib_batches = list(calib_batches.split(cfg.calib_batch_size))
    dtype = model_dtype(model)
    batches = [as_images(b).to(dtype) for b in calib_batches]
    qmodel = quantize(model, cfg, batches)
    qmodel.eval()
    probe, n = [], 0
    for b in batches:
        if n >= probe_images:
            break
        probe.append(b[: probe_images - n])
        n += probe[-1].shape[0]
    dev = next(qmodel.parameters()).device
    probe = [p.to(dev) for p in probe]

    def measure(active: set[str] | None) -> dict[str, Any]:
        set_quantizers(qmodel, False)
        if active is None or active:
            set_quantizers(qmodel, True, active)
        emb = _embed(qmodel, probe)
        cos = float(nn.functional.cosine_similarity(emb, ref).mean())
        row: dict[str, Any] = {"drift": 1.0 - cos, "cosine": cos}
        if eval_fn is not None:
            row["groups"] = {g: float(a) for g, a in eval_fn(qmodel).items()}
            row["delta"] = {g: row["groups"][g] - float_groups[g] for g in row["groups"] if g in float_groups}
        return row

    # the reference is the float model itself: with cfg.ptq the quantized model with its quantizers off is not
    # (bias correction, BN re-estimation and AdaRound change its biases, statistics and weights), and measured
    # against that, "all quantized" at W4A4 with bias_correction read cosine 0.746 where the float model gives 0.811
    ref = _embed(model, probe)
    float_groups = {}
    if eval_fn is not None:
        was = model.training
        model.eval()
        try:
            float_groups = {g: float(a) for g, a in eval_fn(model).items()}
        finally:
            model.train(was)
    everything = measure(None)
    method = "leave_one_out" if cfg.ptq else "alone"
    all_names = {name for name, _ in iter_quantizers(qmodel)}
    rows = []
    for unit, names in track(list(units(qmodel, granularity).items()), "sensitivity"):
        if method == "alone":
            rows.append({"unit": unit, "quantizers": sorted(names), **measure(names)})
            continue
        rest = all_names - names
        row = measure(rest)  # (a model of one unit: "all but it" is every quantizer off)
        row["drift"] = everything["drift"] - row["drift"]
        if "groups" in row:
            row["delta"] = {g: everything["groups"][g] - row["groups"][g] for g in row["groups"]}
        rows.append({"unit": unit, "quantizers": sorted(names), **row})
    set_quantizers(qmodel, True)
    rows.sort(key=lambda r: r["drift"], reverse=True)
    from ..config import config_to_dict

    return {"config": config_to_dict(cfg), "granularity": granularity, "method": method, "probe_images": n,
            "float": {"groups": float_groups} if eval_fn is not None else {}, "all": everything, "units": rows}


def overrides_yaml(result: dict[str, Any], top: int = 5, bits: int = 8) -> str:
    """A YAML snippet keeping the ``top`` most sensitive units at ``bits`` (paste into a quantize config)."""
    picked = [r["unit"] for r in result["units"][:top]]
    how = ("drift recovered by keeping the unit in float, leave one out" if result.get("method") == "leave_one_out"
           else "drift = 1 - embedding cosine, the unit quantized alone")
    lines = [f"# the {len(picked)} most sensitive {result['granularity']}s kept at {bits} bits "
             f"(qfair sensitivity, {how})"]
    for key in ("layer_wbits", "layer_abits"):
        lines.append(f"{key}:")
        lines += [f"  \"{u}\": {bits}" for u in picked] or ["  {}"]
    return "\n".join(lines) + "\n"
