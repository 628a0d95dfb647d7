"""``qfair bench RUN_DIR``: latency, throughput and file sizes per runtime (table + JSON)."""
from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """Latency (first batch size) and throughput (every batch size) of a quantized run
(a folder of `qfair quantize`) on torch float32, ONNX Runtime float32, ONNX Runtime int8 and TensorRT
where present (else skipped, with the reason), plus file sizes. Every runtime gets the same seeded inputs;
per batch size each is warmed up (--warmup), then the runtimes are timed in turns --repeats times and the
median is reported, so the int8/fp32 ratios come from one run under the same load. --threads applies to
torch and ONNX Runtime alike. Writes RUN_DIR/bench.json (or --out) with the machine, CPUs, load average,
threads and package versions; the exported graphs are built in a temporary folder and removed."""


def register(subparsers: Any) -> None:
    from ..config import add_config_arguments
    from ..export.config import BenchConfig

    p = subparsers.add_parser("bench", help="latency, throughput and size per runtime", description=DESCRIPTION)
    p.add_argument("run_dir", help="run folder of `qfair quantize`")
    p.add_argument("--out", help="JSON output (default: RUN_DIR/bench.json)")
    p.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below (flags override it)")
    add_config_arguments(p, BenchConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, overrides_from_args
    from pathlib import Path

    from ..export.bench import BENCH_FILE, bench_run
    from ..export.config import BenchConfig
    from ._console import console, info, table

    cfg = load_config(BenchConfig, args.config, overrides_from_args(args, BenchConfig))
    res = bench_run(args.run_dir, cfg, out=args.out)
    b = list(cfg.batches)
    ctx = res["context"]
    cols = ["runtime", f"latency b{b[0]} (ms)", *[f"images/s b{n}" for n in b]]
    rows = [[name, f"{r[f'latency_ms_b{b[0]}']:.1f}", *[f"{r[f'throughput_b{n}']:.1f}" for n in b]]
            for name, r in res["runtimes"].items()]
    console().print(table(f"speed ({res['threads']} threads, median of {cfg.repeats}, round-robin)", cols, rows))
    console().print(table("file sizes", ["artefact", "MB"],
                          [[k, f"{v / 1e6:.2f}"] for k, v in res["sizes_bytes"].items()]))
    for k, v in res["ratios"].items():
        info(f"{k}: {v:.3f}")
    for note in res["notes"]:
        info(f"note: {note}")
    load = ctx.get("load_average")
    info(f"machine: {ctx['machine']}, {ctx['usable_cpus']} usable CPUs, load average "
         f"{load[0] if load else 'n/a'} at start; torch {ctx['versions'].get('torch', '?')}, onnxruntime "
         f"{ctx['versions'].get('onnxruntime', '?')}")
    info(f"wrote {args.out or Path(res['run']) / BENCH_FILE}")
    return 0
