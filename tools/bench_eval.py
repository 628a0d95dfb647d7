"""Speed of the evaluator's metric layer (issue 5): every metric for 24,000 pairs in four groups
(RFW-sized: 6,000 pairs and 3,000 identities per group) including 1,000 identity-bootstrap resamples.
Target: under 2 s on 2 cores. Also times a paired comparison (McNemar + paired bootstrap).

    python tools/bench_eval.py [--repeats 5] [--resamples 1000] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import time

from qfair.config.cli_args import check_output_arg, positive_int


def make_data(seed: int = 0, per_group: int = 6000, n_ids: int = 3000):
    import numpy as np

    rng = np.random.default_rng(seed)
    dist, same, groups, ids = [], [], [], []
    for gi, g in enumerate(("Caucasian", "Indian", "Asian", "African")):
        s = (np.arange(per_group) // 300) % 2 == 0  # RFW-like: blocks of genuine and impostor pairs
        a = rng.integers(0, n_ids, per_group)
        b = np.where(s, a, (a + rng.integers(1, n_ids, per_group)) % n_ids)
        d = np.where(s, rng.normal(0.9 + 0.05 * gi, 0.25, per_group), rng.normal(1.8, 0.2, per_group))
        dist.append(np.clip(d, 0, 4))
        same.append(s)
        groups.append(np.full(per_group, g))
        ids.append(np.stack([np.char.add(f"{g}/", a.astype(str)), np.char.add(f"{g}/", b.astype(str))], 1))
    return np.concatenate(dist), np.concatenate(same), np.concatenate(groups), np.concatenate(ids)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--resamples", type=positive_int, default=1000)
    ap.add_argument("--threads", type=positive_int, default=2,
                    help="OMP/OpenBLAS/MKL threads (set before numpy loads) and torch threads")
    ap.add_argument("--json", default=None, help="also write the figures and their context to this JSON file")
    args = ap.parse_args(argv)
    check_output_arg(ap, "--json", args.json)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch

    from qfair.eval import compare_pair, evaluate_arrays
    from qfair.export.bench import bench_context

    torch.set_num_threads(args.threads)  # torch may have been loaded by qfair before the variables were read
    ctx = bench_context()

    dist, same, groups, ids = make_data()
    worse = np.clip(dist + np.random.default_rng(1).normal(0, 0.05, len(dist)), 0, 4)
    kw = {"pair_ids": ids, "n_bootstrap": args.resamples, "seed": 0}
    evaluate_arrays(dist, same, groups, **{**kw, "n_bootstrap": 10})  # warm-up
    t_eval, t_cmp = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = evaluate_arrays(dist, same, groups, name="ref", **kw)
        t1 = time.perf_counter()
        oth = evaluate_arrays(worse, same, groups, name="other", **kw)
        t2 = time.perf_counter()
        compare_pair(ref, oth)
        t3 = time.perf_counter()
        t_eval += [t1 - t0, t2 - t1]
        t_cmp.append(t3 - t2)
    print(f"pairs {len(dist)} in 4 groups, {len(np.unique(ids))} identities, {args.resamples} identity-bootstrap "
          f"resamples, {args.threads} threads (load average {os.getloadavg()[0]:.1f})")
    print(f"evaluate_arrays (all metrics + bootstrap): median {np.median(t_eval):.3f} s, min {min(t_eval):.3f} s "
          f"over {len(t_eval)} runs  (target < 2 s)")
    print(f"compare_pair (McNemar, Holm, paired bootstrap, FMR drift, group-blind null with its default 200 "
          f"draws): median {np.median(t_cmp):.3f} s")
    if args.json:
        from qfair.utils.io import atomic_write_json

        ctx["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        atomic_write_json(args.json, {
            "settings": vars(args), "pairs": len(dist), "groups": 4, "identities": int(len(np.unique(ids))),
            "evaluate_arrays_s": {"median": float(np.median(t_eval)), "min": min(t_eval), "runs": len(t_eval)},
            "compare_pair_s": {"median": float(np.median(t_cmp)), "min": min(t_cmp), "runs": len(t_cmp)},
            "target_s": 2.0, "context": ctx}, mkdir=True)


if __name__ == "__main__":
    main()
