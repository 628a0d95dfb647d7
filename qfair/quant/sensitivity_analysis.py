"""Sensitivity analysis: quantize one layer (or one residual block) at a time and rank them.

The model is prepared and calibrated once (``quantize``); then, for every unit, only that unit's
quantizers are switched on and the embeddings of probe images are compared with the float ones
(all quantizers off): drift = 1 - mean cosine. With ``eval_fn(model) -> {group: accuracy}`` (for
example a verification benchmark with demographic groups) the per-group accuracy change is recorded
too: which layers make the quantized model forget which group. :func:`overrides_yaml` turns the most
sensitive units into ``layer_wbits`` / ``layer_abits`` overrides (mixed precision).
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

    Drift and accuracy change are measured against the float ``model``. Each unit is measured with only its
    own quantizers on; with ``cfg.ptq`` the rest of the model keeps the corrections the improvements made
    (biases, BatchNorm statistics, rounded weights), which is part of what that unit is measured with.

    Returns ``{"config", "granularity", "probe_images", "float": {...}, "all": {...}, "units": [rows]}``
    with rows sorted by drift (largest first): ``{"unit", "quantizers", "drift", "cosine"[, "groups",
    "delta"]}`` where ``delta[g]`` = accuracy(quantized unit) - accuracy(float) in points.
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
    rows = []
    for unit, names in track(list(units(qmodel, granularity).items()), "sensitivity"):
        rows.append({"unit": unit, "quantizers": sorted(names), **measure(names)})
    everything = measure(None)
    set_quantizers(qmodel, True)
    rows.sort(key=lambda r: r["drift"], reverse=True)
    from ..config import config_to_dict

    return {"config": config_to_dict(cfg), "granularity": granularity, "probe_images": n,
            "float": {"groups": float_groups} if eval_fn is not None else {}, "all": everything, "units": rows}


def overrides_yaml(result: dict[str, Any], top: int = 5, bits: int = 8) -> str:
    """A YAML snippet keeping the ``top`` most sensitive units at ``bits`` (paste into a quantize config)."""
    picked = [r["unit"] for r in result["units"][:top]]
    lines = [f"# the {len(picked)} most sensitive {result['granularity']}s kept at {bits} bits "
             f"(qfair sensitivity, drift = 1 - embedding cosine)"]
    for key in ("layer_wbits", "layer_abits"):
        lines.append(f"{key}:")
        lines += [f"  \"{u}\": {bits}" for u in picked] or ["  {}"]
    return "\n".join(lines) + "\n"
