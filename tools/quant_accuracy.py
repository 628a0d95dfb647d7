"""Embedding fidelity of PTQ: cosine between float and fake-quant embeddings on held-out images.

    OMP_NUM_THREADS=2 python tools/quant_accuracy.py --arch mbf [--model CKPT] [--table observers|ptq|both]

Table "observers": W8A8 and W6A6 for every recipe x activation observer.
Table "ptq": the low-bit PTQ improvements (``--methods``: none, bias correction, BN re-estimation,
AdaRound, BRECQ, ...; ``+`` chains methods) at every ``--bits`` setting (W/A, default 6/6 4/4 4/8 3/8),
with the seconds each quantization took (calibration + improvement; wall clock and process CPU time).
``--verify builtin`` adds the verification accuracy (10-fold, no flip) of each model on that benchmark
(test identities: disjoint from the calibration images).

Calibration: ``--calib-size`` images of the built-in benchmark's training distribution (qfair.data
"builtin", seed 0); cosine: ``--eval-size`` other images (seed 1, other identities). Without ``--model``
the network is random with its BatchNorm statistics re-estimated in float on built-in images (so
activations have realistic ranges); numbers from a trained checkpoint are the ones to quote.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from qfair.config.cli_args import check_output_arg, positive_int


def _wa_pair(text: str) -> tuple[int, int]:
    """argparse type of --bits: "W/A" with both in 2..8."""
    try:
        w, a = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W/A bit widths such as 6/6 or 4/8, got {text!r}") from None
    if not (2 <= w <= 8 and 2 <= a <= 8):
        raise argparse.ArgumentTypeError(f"bit widths must be 2..8, got {text!r}")
    return w, a


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


def verification_accuracy(model: torch.nn.Module, vset) -> float:
    """10-fold verification accuracy (%) without flip."""
    from qfair.eval import embed, kfold_accuracy
    from qfair.eval.embed import check_pairs

    emb = embed(model, vset, flip=False, batch_size=64)
    pairs = check_pairs(vset)
    return kfold_accuracy(emb[pairs[:, 0]], emb[pairs[:, 1]], vset.issame)[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="mbf")
    ap.add_argument("--model", default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--table", default="both", choices=["observers", "ptq", "both"])
    ap.add_argument("--recipe", default="quantface")
    ap.add_argument("--observer", default="minmax", help="activation observer of the ptq table")
    ap.add_argument("--calib-size", type=positive_int, default=128)
    ap.add_argument("--eval-size", type=positive_int, default=64)
    ap.add_argument("--bits", nargs="+", type=_wa_pair, default=[(6, 6), (4, 4), (4, 8), (3, 8)],
                    help="W/A pairs of the ptq table (default: 6/6 4/4 4/8 3/8)")
    ap.add_argument("--methods", nargs="+", default=["none", "bias_correction", "bn_reestimate", "adaround", "brecq"],
                    help="ptq table rows; 'a+b' applies a then b; 'brecq:iters=0,act_lr=0' (or adaround:...) "
                    "runs the reconstruction with those ReconSettings (component ablations)")
    ap.add_argument("--adaround-iters", type=int, default=200, help="adaround / brecq steps per layer / block")
    ap.add_argument("--adaround-samples", type=int, default=None, help="default: --calib-size")
    ap.add_argument("--verify", default=None, help="also report verification accuracy on this benchmark "
                    "(e.g. builtin)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    check_output_arg(ap, "--json", args.json)

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
        vset = None
        if args.verify:
            from qfair.data import open_benchmark

            vset = open_benchmark(args.verify)
            out["float"] = {"acc": verification_accuracy(model, vset)}
            print(f"float model: verification accuracy {out['float']['acc']:.2f} % on {vset.name}")
        pairs = list(args.bits)
        heads = [f"W{w}A{a}" for w, a in pairs]
        cell = "cos / acc % / s (cpu s)" if vset is not None else "cos / s (cpu s)"
        print(f"\n{args.arch} {args.recipe}, activation observer {args.observer}, calibration {args.calib_size} "
              f"images, {args.adaround_iters} reconstruction steps; cells: {cell}")
        print("| method | " + " | ".join(heads) + " |\n|---|" + "---|" * len(heads))
        for method in args.methods:
            ptq = () if method == "none" else tuple(method.split("+"))
            recon, settings = None, {}
            if ":" in method:  # one reconstruction with explicit settings, after plain calibration
                recon, _, opts = method.partition(":")
                settings = {k: json.loads(v) for k, v in (o.split("=") for o in opts.split(","))}
                ptq = ()
            row: dict[str, float] = {}
            cells = []
            for (w, a), head in zip(pairs, heads):
                t, c = time.perf_counter(), time.process_time()
                cfg = QuantConfig(wbits=w, abits=a, recipe=args.recipe, observer=args.observer, ptq=ptq,
                                  adaround_iters=args.adaround_iters,
                                  adaround_samples=args.adaround_samples or args.calib_size)
                q = quantize(model, cfg, calib)
                if recon is not None:
                    from qfair.quant.reconstruction import reconstruct

                    reconstruct(q, calib, granularity={"brecq": "block", "adaround": "layer"}[recon],
                                samples=cfg.adaround_samples, **{"iters": args.adaround_iters, **settings})
                row[f"time_{head}"], row[f"cpu_{head}"] = time.perf_counter() - t, time.process_time() - c
                row[head] = cosine(model, q, held)
                txt = f"{row[head]:.5f}"
                if vset is not None:
                    row[f"acc_{head}"] = verification_accuracy(q, vset)
                    txt += f" / {row[f'acc_{head}']:.2f}"
                cells.append(f"{txt} / {row[f'time_{head}']:.0f} ({row[f'cpu_{head}']:.0f})")
            out[f"ptq/{method}"] = row
            print(f"| {method} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        from qfair.export.bench import bench_context
        from qfair.utils.io import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), "context": bench_context(), "results": out}, mkdir=True)


if __name__ == "__main__":
    main()
