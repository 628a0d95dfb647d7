"""Speed of the quantization core (ratios from one run; never asserted in tests).

    OMP_NUM_THREADS=2 python tools/bench_quant.py [--archs iresnet18 mbf] [--batch 32] [--steps 3] [--json F]

1. Training step (forward + backward + SGD) of the fake-quant model / the float model, batch 32:
   QuantFace W8A8 after its ranges froze (weights still re-quantized from min/max every step), and
   while activation ranges are still tracked (the first 300 QAT steps). Goal: <= 1.3x.
2. Calibration over ``--calib-images`` images with each observer / one float forward pass over them
   (median of ``--calib-repeats`` runs, after one untimed float pass and one untimed calibration).

``--archs`` or ``--calib-archs`` with no names skips that part.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from qfair.config.cli_args import check_output_arg, positive_int


def _time(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _time_interleaved(fns: list, steps: int) -> list[float]:
    """Median time of each function, run in turns (a shared CPU's load hits all of them alike)."""
    for f in fns:
        f()
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            ts[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in ts]


def bn_ready(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Random weights with BatchNorm statistics estimated on ``x``: eval-mode activations then have
    the ranges training sees (default statistics would make calibration ranges meaningless)."""
    for b in model.modules():
        if isinstance(b, torch.nn.modules.batchnorm._BatchNorm):
            b.reset_running_stats()
            b.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for b in model.modules():
        if isinstance(b, torch.nn.modules.batchnorm._BatchNorm):
            b.momentum = 0.1
    return model.eval()


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model.train()

    def step() -> None:
        out = torch.nn.functional.normalize(model(x))
        loss = torch.nn.functional.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="*", default=["iresnet18", "mbf"])
    ap.add_argument("--calib-archs", nargs="*", default=["mbf", "iresnet18"])
    ap.add_argument("--batch", type=positive_int, default=32)
    ap.add_argument("--steps", type=positive_int, default=3, help="timed training steps per variant (median)")
    ap.add_argument("--calib-images", type=positive_int, default=256)
    ap.add_argument("--calib-repeats", type=positive_int, default=1, help="timed calibrations per observer (median)")
    ap.add_argument("--json", default=None, help="also write the figures and their context to this JSON file")
    args = ap.parse_args(argv)
    check_output_arg(ap, "--json", args.json)
    from qfair.export.bench import bench_context

    context = bench_context()
    results: dict = {"train_step": [], "calibration": []}

    from qfair.models import create_model
    from qfair.quant import QuantConfig, iter_quantizers, quantize

    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 112, 112) * 2 - 1
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{context['usable_cpus']} usable CPUs, load average {context['load_average']}")
    print("\n| model | float step (s) | fake-quant step, frozen (s) | ratio | tracking ranges (s) | ratio |")
    print("|---|---|---|---|---|---|")
    for arch in args.archs:
        model = bn_ready(create_model(arch), x)
        target = torch.nn.functional.normalize(torch.randn(args.batch, model.embedding_size))
        q = quantize(model, QuantConfig(bits=8, recipe="quantface"), [x[:16]])
        qt = quantize(model, QuantConfig(bits=8, recipe="quantface"), [x[:16]])
        for _, qz in iter_quantizers(qt):
            if qz.role != "weight":
                qz.track()  # QAT warm-up: activation ranges still tracked
        t_float, t_q, t_track = _time_interleaved(
            [train_step_fn(model, x, target), train_step_fn(q, x, target), train_step_fn(qt, x, target)], args.steps)
        print(f"| {arch} | {t_float:.3f} | {t_q:.3f} | {t_q / t_float:.2f}x | {t_track:.3f} | "
              f"{t_track / t_float:.2f}x |", flush=True)
        results["train_step"].append({"arch": arch, "float_s": t_float, "fake_quant_frozen_s": t_q,
                                      "tracking_ranges_s": t_track, "frozen_vs_float": t_q / t_float,
                                      "tracking_vs_float": t_track / t_float})

    print(f"\n| model | observer | calibration over {args.calib_images} images (s) | / float forward |")
    print("|---|---|---|---|")
    imgs = [torch.rand(32, 3, 112, 112) * 2 - 1 for _ in range(max(args.calib_images // 32, 1))]
    for arch in args.calib_archs:
        model = bn_ready(create_model(arch), imgs[0])

        def float_pass(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                for b in imgs:
                    model(b)

        t_float = _time(float_pass, args.calib_repeats, warmup=1)
        print(f"| {arch} | (float forward) | {t_float:.2f} | 1.00x |", flush=True)
        quantize(model, QuantConfig(bits=8, recipe="quantface"), imgs[:1])  # warm-up: first-call costs
        for obs in ("minmax", "moving_average_minmax", "percentile", "mse", "entropy"):
            def calibrate(model: torch.nn.Module = model, obs: str = obs) -> None:
                quantize(model, QuantConfig(bits=8, recipe="quantface", observer=obs), imgs)

            dt = _time(calibrate, args.calib_repeats, warmup=0)
            print(f"| {arch} | {obs} | {dt:.2f} | {dt / t_float:.2f}x |", flush=True)
            results["calibration"].append({"arch": arch, "observer": obs, "seconds": dt,
                                           "float_forward_s": t_float, "vs_float_forward": dt / t_float})
    if args.json:
        from qfair.utils.io import atomic_write_json

        context["torch_threads"] = torch.get_num_threads()
        context["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        atomic_write_json(args.json, {"settings": vars(args), "context": context, **results}, mkdir=True)


if __name__ == "__main__":
    main()
