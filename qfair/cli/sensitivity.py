"""``qfair sensitivity``: which layers (or blocks) hurt the embedding, and which group, when quantized alone.

Thin: resolve the config, load the model and calibration batches as ``qfair quantize`` does, call
``qfair.quant.sensitivity``, write ``sensitivity.json`` and ``overrides.yaml`` (mixed-precision
overrides for ``qfair quantize --config``), print the ranking.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from ..config import cfg_field
from ..quant.config import QuantizeRunConfig


@dataclass(frozen=True)
class SensitivityRunConfig(QuantizeRunConfig):
    """``qfair sensitivity``: every ``qfair quantize`` key plus the analysis settings."""

    granularity: str = cfg_field("layer", help="quantize one 'layer' or one residual 'block' at a time",
                                 choices=["layer", "block"])
    bench: Optional[str] = cfg_field(None, help="verification benchmark with groups for per-group accuracy "
                                     "change, e.g. builtin:small or rfw:/data/RFW (slower: one evaluation per unit)")
    probe_images: int = cfg_field(64, help="calibration images used to measure embedding drift", range=(1, None))
    top: int = cfg_field(5, help="units written to overrides.yaml", range=(1, None))


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments

    p = sub.add_parser(
        "sensitivity", help="rank layers by the damage each does when quantized alone",
        description="Quantize one layer (or block) at a time and rank by embedding drift (1 - cosine to the "
        "float model) and, with --bench, by per-group accuracy change. With --ptq the corrections are made for "
        "the whole quantized model, so each unit is measured leave-one-out instead: every other unit quantized, "
        "its drift being what keeping it in float recovers (sensitivity.json records the method). Writes "
        "OUT/sensitivity.json and OUT/overrides.yaml (keep the most sensitive units at 8 bits: mixed precision).")
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below")
    add_config_arguments(p, SensitivityRunConfig)
    p.set_defaults(func=run)


def check_out_folder(out: str | None) -> None:
    """Refuse an --out folder that holds another command's run (a quantized model, an evaluation...):
    sensitivity.json and overrides.yaml would land beside it and its config.yaml would be replaced. An earlier
    ``qfair sensitivity`` run there is replaced (every file it wrote is written again)."""
    from pathlib import Path

    from ..utils.errors import ConfigError
    from ..runs import RunDir
    from .quantize import RUN_FILES

    if not out or not Path(out).is_dir():
        return
    folder = Path(out)
    held = [n for n in RUN_FILES if (folder / n).is_file()]
    if held:
        raise ConfigError(f"--out {folder} holds a quantized model ({', '.join(held)}); sensitivity would replace its "
                          "config.yaml, which says how that model was made. Pick another --out (e.g. "
                          f"{folder.name}-sensitivity)")
    RunDir(folder).refuse_foreign(("qfair sensitivity",))


def run(args: argparse.Namespace) -> int:
    from .quantize import model_and_calibration, resolve

    cfg = resolve(args, SensitivityRunConfig)  # a bad setting fails before torch is imported (seconds)
    check_out_folder(cfg.out)
    from ..quant import sensitivity
    from ..quant.sensitivity_analysis import overrides_yaml
    from ..runs import RunDir
    from ._console import console, table

    model, batches = model_and_calibration(cfg, getattr(args, "config", None))
    eval_fn = None
    if cfg.bench:
        from ..data import open_benchmark
        from ..eval import evaluate

        vset = open_benchmark(cfg.bench)

        def eval_fn(m):
            return evaluate(m, vset, n_bootstrap=0, name="sensitivity").accuracies()

    RunDir.create(cfg.out)  # the folder (no config.yaml yet): a bad --out fails now, not after the analysis
    result = sensitivity(model, cfg.quant_config(), batches, eval_fn, granularity=cfg.granularity,
                         probe_images=cfg.probe_images)
    # config.yaml only now: an interrupted analysis must not leave it describing an earlier run's results
    run_dir = RunDir.create(cfg.out, cfg, command="qfair sensitivity")
    run_dir.write_json("sensitivity.json", result)
    run_dir.write_text("overrides.yaml", overrides_yaml(result, top=cfg.top, bits=8))
    groups = list(result["float"].get("groups", {}))
    rows = [[r["unit"], f"{r['drift']:.5f}", *[f"{r['delta'][g]:+.2f}" for g in groups]]
            for r in result["units"][:20]]
    how = "; leave one out: drift recovered by keeping the unit in float" if result["method"] == "leave_one_out" else ""
    console().print(table(f"sensitivity (W{cfg.quant_config().wbits}A{cfg.quant_config().abits}, "
                          f"{cfg.recipe}; all quantized: drift {result['all']['drift']:.5f}{how})",
                          [cfg.granularity, "drift", *[f"d acc {g}" for g in groups]], rows))
    kept = min(cfg.top, len(result["units"]))
    console().print(f"wrote {run_dir.path}/sensitivity.json and overrides.yaml (top {kept} kept at 8 bits)")
    return 0
