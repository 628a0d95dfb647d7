"""Embedding fidelity of PTQ: cosine between float and fake-quant embeddings on held-out images.

    OMP_NUM_THREADS=2 python tools/quant_accuracy.py --arch mbf [--model CKPT] [--table observers|ptq|both]

Table "observers": W8A8 and W6A6 for every recipe x activation observer.
Table "ptq": the low-bit PTQ improvements (none, bias correction, BN re-estimation, AdaRound and
combinations) at W6A6 and W4A4 (quantface recipe; deploy with --recipe deploy).

Calibration: ``--calib-size`` images of the built-in benchmark (qfair.data "builtin"); evaluation:
``--eval-size`` different images (another seed). Without ``--model`` the network is random with its
BatchNorm statistics re-estimated in float on built-in images (so activations have realistic ranges);
numbers from a trained checkpoint are the ones to quote.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def float_model(arch: str, ckpt: str | None, width: int | None, calib: list[torch.Tensor]) -> torch.nn.Module:
    from qfair.models import create_model, load_model

    if ckpt:
        return load_model(ckpt, arch=arch).eval()
    torch.manual_seed(0)
    m = create_model(arch, **({"width": width} if width else {}))
    bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    m.train()
    with torch.no_grad():
        for x in calib:
            m(x)
    return m.eval()


def cosine(a: torch.nn.Module, b: torch.nn.Module, xs: list[torch.Tensor]) -> float:
    with torch.no_grad():
        ea = torch.cat([a(x) for x in xs])
        eb = torch.cat([b(x) for x in xs])
    return float(torch.nn.functional.cosine_similarity(ea, eb).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mbf")
    ap.add_argument("--model", default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--table", default="both", choices=["observers", "ptq", "both"])
    ap.add_argument("--recipe", default="quantface")
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--eval-size", type=int, default=64)
    ap.add_argument("--adaround-iters", type=int, default=100)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    from qfair.data import calibration_batches
    from qfair.quant import QuantConfig, quantize

    calib = calibration_batches("builtin", args.calib_size, 32, seed=0)
    held = calibration_batches("builtin", args.eval_size, 32, seed=1)
    model = float_model(args.arch, args.model, args.width, calib)
    out: dict[str, dict[str, float]] = {}
    if args.table in ("observers", "both"):
        print(f"| {args.arch} recipe | observer | W8A8 cos | W6A6 cos |\n|---|---|---|---|")
        for recipe in ("quantface", "deploy"):
            for obs in ("minmax", "moving_average_minmax", "percentile", "mse", "entropy"):
                row = {}
                for bits in (8, 6):
                    q = quantize(model, QuantConfig(bits=bits, recipe=recipe, observer=obs), calib)
                    row[f"W{bits}A{bits}"] = cosine(model, q, held)
                out[f"{recipe}/{obs}"] = row
                print(f"| {recipe} | {obs} | {row['W8A8']:.5f} | {row['W6A6']:.5f} |", flush=True)
    if args.table in ("ptq", "both"):
        combos = [(), ("bias_correction",), ("bn_reestimate",), ("bn_reestimate", "bias_correction"),
                  ("adaround",), ("adaround", "bias_correction")]
        print(f"\n| {args.arch} {args.recipe} PTQ | W6A6 cos | W4A4 cos | time W4A4 (s) |\n|---|---|---|---|")
        for ptq in combos:
            row = {}
            for bits in (6, 4):
                t = time.perf_counter()
                cfg = QuantConfig(bits=bits, recipe=args.recipe, ptq=ptq, adaround_iters=args.adaround_iters,
                                  adaround_samples=32)
                q = quantize(model, cfg, calib)
                row[f"W{bits}A{bits}"] = cosine(model, q, held)
                row[f"time{bits}"] = time.perf_counter() - t
            name = "+".join(ptq) or "none"
            out[f"ptq/{name}"] = row
            print(f"| {name} | {row['W6A6']:.5f} | {row['W4A4']:.5f} | {row['time4']:.1f} |", flush=True)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
