"""Benchmark: KD fine-tuning step time of a fake-quant (QAT) student relative to a float student, on CPU.

One step = teacher forward (no grad) + student forward + KD loss + backward + clip + SGD step, the step
of ``qfair.train.fit``. Variants: ``float`` (float student), ``qat-track`` (6-bit quantface student
whose activation ranges still update, the first N steps), ``qat`` (ranges frozen, the rest of the run).

    OMP_NUM_THREADS=2 python tools/bench_train.py --archs mbf iresnet18 --batch 32 --steps 5

The variants are timed in turns: after an untimed warm-up of every variant, each round times one step of
every variant, the order rotating between rounds, so a change of machine load hits all variants alike; the
median per variant and the ratios of those medians are reported. Prints a table and writes JSON (``--out``).
Ratios come from one run on a shared machine: indicative.

Acceptance experiment (issue 7): ``--acceptance CKPT`` and ``--aggregate JSON ...`` run
tools/kd_acceptance.py (float vs 6-bit PTQ vs 6-bit PTQ + KD, per group; see its docstring)::

    OMP_NUM_THREADS=2 python tools/bench_train.py --acceptance CHECKPOINT --kd-steps 200 --bench builtin
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Callable

import numpy as np
import torch

from qfair.config.cli_args import check_output_arg, positive_int
from qfair.utils.io import atomic_write_json

VARIANTS = ("float", "qat-track", "qat")  # timed in turns; ratios are taken against "float"


def build_steps(arch: str, batch: int, bits: int) -> dict[str, Callable[[torch.Tensor], None]]:
    """{variant: one training step on images (batch, 3, 112, 112)}, each on its own student and optimizer.

    All variants distil from one shared float teacher and start from its weights (as KD fine-tuning of
    a quantized model does); the QAT students are calibrated on the first 8 of the timing inputs."""
    from qfair.export.bench import bench_inputs
    from qfair.models import create_model
    from qfair.quant import QuantConfig, quantize
    from qfair.train import ranges as R
    from qfair.train.optim import make_sgd
    from qfair.train.step import DistillStep

    torch.manual_seed(0)
    teacher = create_model(arch).eval().requires_grad_(False)
    calib = [bench_inputs(batch)[:8]]

    def make(variant: str) -> Callable[[torch.Tensor], None]:
        student = copy.deepcopy(teacher).requires_grad_(True)
        if variant != "float":
            student = quantize(student, QuantConfig(bits=bits), calib)
            R.set_range_tracking(student, variant == "qat-track")
        step = DistillStep(student).train()
        opt = make_sgd(student.parameters(), 0.01)

        def run(x: torch.Tensor) -> None:  # the step of qfair.train.fit
            with torch.no_grad():
                t_emb = teacher(x)
            loss = step(x, t_emb, None, None)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            opt.step()

        return run

    return {v: make(v) for v in VARIANTS}


def time_variants(steps: dict[str, Callable[[torch.Tensor], None]], batch: int, rounds: int, warmup: int,
                  clock: Callable[[], float] | None = None) -> dict[str, list[float]]:
    """{variant: seconds of each of its ``rounds`` timed steps}, timed in turns.

    ``qfair.export.bench.time_runtimes`` runs the schedule: ``warmup`` untimed steps of every variant,
    then ``rounds`` rounds of one step per variant, the order rotating every round, so a change of load
    on a shared machine hits every variant alike. Each step records its own time (``clock``, default
    ``time.perf_counter``) so that the spread (min / max) comes with the median."""
    from qfair.export.bench import time_runtimes

    clock = clock or time.perf_counter
    seen: dict[str, list[float]] = {k: [] for k in steps}

    def timed(name: str) -> Callable[[torch.Tensor], None]:
        def run(x: torch.Tensor) -> None:
            t = clock()
            steps[name](x)
            seen[name].append(clock() - t)
        return run

    time_runtimes({k: timed(k) for k in steps}, [batch], warmup, rounds)
    out = {k: v[warmup:] for k, v in seen.items()}  # drop the warm-up steps
    assert all(len(v) == rounds for v in out.values()), {k: len(v) for k, v in seen.items()}
    return out


def bench_arch(arch: str, batch: int, steps: int, warmup: int, bits: int,
               clock: Callable[[], float] | None = None) -> list[dict]:
    """One row per variant of ``arch``: median step time, images/s and the ratio to the float step."""
    times = time_variants(build_steps(arch, batch, bits), batch, steps, warmup, clock)
    rows = []
    for variant in VARIANTS:
        t = sorted(times[variant])
        med = float(np.median(t))
        rows.append({"arch": arch, "variant": variant, "batch": batch, "step_s": med, "images_per_s": batch / med,
                     "steps": steps, "min_s": t[0], "max_s": t[-1], "times_s": times[variant]})
    base = rows[0]["step_s"]  # VARIANTS[0] is "float"
    for r in rows:
        r["relative_to_float"] = r["step_s"] / base
    return rows


def _kd_acceptance():
    """tools/kd_acceptance.py (a script beside this one, not a package module), imported by its path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("kd_acceptance.py")
    spec = importlib.util.spec_from_file_location("qfair_tool_kd_acceptance", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["mbf", "iresnet18"])
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=5,
                   help="timed rounds; each round times one step of every variant, in rotating order (the median "
                        "per variant is reported)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps of every variant before the timed rounds, at least 1: the first steps of a "
                        "model are slow (memory allocation, one-time set-up), and without a warm-up they inflate "
                        "the float step so much that QAT steps come out faster than float")
    p.add_argument("--bits", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--acceptance", metavar="CKPT", help="run the float / PTQ / PTQ+KD comparison on CKPT")
    p.add_argument("--arch", default=None, help="architecture of CKPT (guessed when omitted)")
    p.add_argument("--kd-steps", type=int, default=200)
    p.add_argument("--bench", default="builtin")
    p.add_argument("--n-train", type=int, default=1024, help="training images for KD fine-tuning")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed while fine-tuning")
    p.add_argument("--calib", default="real", help="PTQ calibration: real, synthetic or data-free")
    p.add_argument("--kd-data", default="builtin", help="fine-tuning data spec (builtin, builtin-synthetic, ...)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1 x batch / 512)")
    p.add_argument("--range-steps", type=int, default=None, help="steps with activation ranges tracking")
    p.add_argument("--no-flip", action="store_true", help="evaluate without the flipped-image embedding")
    p.add_argument("--fair-kd", action="store_true", help="fairness-aware distillation (needs group labels)")
    p.add_argument("--cache", default=None, help="embedding cache folder (reused across runs)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the KD fine-tuning")
    p.add_argument("--schedule", default="constant", help="lr schedule: constant, cosine or step")
    p.add_argument("--seed", type=int, default=0, help="acceptance: seed of calibration, KD data and training")
    p.add_argument("--aggregate", nargs="+", metavar="JSON", help="pool acceptance runs that differ in --seed")
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error(f"argument --warmup: expected a whole number >= 0, got {args.warmup}")
    if args.warmup == 0 and not (args.aggregate or args.acceptance):  # the speed mode needs a warm-up
        p.error("argument --warmup: the speed mode needs at least 1 warm-up step per variant (without it the "
                "first, slow steps make QAT look faster than float); got 0")
    check_output_arg(p, "--out", args.out)  # a bad --out fails now, not after a long run
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.aggregate:
        res = _kd_acceptance().aggregate(args.aggregate)
        if args.out:
            atomic_write_json(args.out, res, mkdir=True)
        return
    if args.acceptance:
        res = _kd_acceptance().acceptance(args.acceptance, args.arch, args.bits, args.kd_steps, args.batch, args.bench,
                         args.n_train, args.seed, args.freeze_bn, args.calib, args.kd_data, args.lr, not args.no_flip,
                         args.range_steps, args.fair_kd, args.cache, args.weight_decay,
                         args.schedule)
        if args.out:
            atomic_write_json(args.out, res, mkdir=True)
        return
    from qfair.export.bench import bench_context

    context = bench_context()
    rows = []
    for arch in args.archs:  # variants of one arch are timed in turns; ratios are within one arch
        for r in bench_arch(arch, args.batch, args.steps, args.warmup, args.bits):
            rows.append(r)
            print(f"{arch:10s} {r['variant']:10s} step {r['step_s'] * 1000:8.1f} ms  {r['images_per_s']:7.1f} img/s  "
                  f"x{r['relative_to_float']:.2f} of float  (min {r['min_s'] * 1000:.1f}, max "
                  f"{r['max_s'] * 1000:.1f} ms)", flush=True)
    context["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "bits": args.bits, "batch": args.batch,
            "steps": args.steps, "warmup": args.warmup, "timing": "round-robin",
            "timing_detail": f"untimed warm-up of every variant ({args.warmup} steps each), then {args.steps} "
                             "rounds of one timed step per variant in rotating order; median per variant, ratios "
                             "from the medians",
            "variants": list(VARIANTS),
            "context": context}
    if args.out:
        atomic_write_json(args.out, {"meta": meta, "results": rows}, mkdir=True)


if __name__ == "__main__":
    main()
