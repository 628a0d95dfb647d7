"""``qfair bench RUN_DIR``: latency, throughput and file sizes per runtime (table + JSON)."""
from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """Latency (first batch size) and throughput (the others) of a quantized run on torch
float32, ONNX Runtime float32, ONNX Runtime int8 and TensorRT where present, plus file sizes: the
median of repeated runs after warm-up. Writes RUN_DIR/bench.json (or --out)."""


def register(subparsers: Any) -> None:
    from ..config import add_config_arguments
    from ..export.config import BenchConfig

    p = subparsers.add_parser("bench", help="latency, throughput and size per runtime", description=DESCRIPTION)
    p.add_argument("run_dir", help="run folder of `qfair quantize`")
    p.add_argument("--out", help="JSON output (default: RUN_DIR/bench.json)")
    p.add_argument("--config", help="YAML file with the settings below (flags override it)")
    add_config_arguments(p, BenchConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, overrides_from_args
    from ..export.bench import bench_run
    from ..export.config import BenchConfig
    from ._console import console, info, table

    cfg = load_config(BenchConfig, args.config, overrides_from_args(args, BenchConfig))
    res = bench_run(args.run_dir, cfg, out=args.out)
    b = list(cfg.batches)
    cols = ["runtime", f"latency b{b[0]} (ms)", *[f"images/s b{n}" for n in b]]
    rows = [[name, f"{r[f'latency_ms_b{b[0]}']:.1f}", *[f"{r[f'throughput_b{n}']:.1f}" for n in b]]
            for name, r in res["runtimes"].items()]
    console().print(table(f"speed ({res['threads']} threads, median of {cfg.repeats})", cols, rows))
    console().print(table("file sizes", ["artefact", "MB"],
                          [[k, f"{v / 1e6:.2f}"] for k, v in res["sizes_bytes"].items()]))
    for k, v in res["ratios"].items():
        info(f"{k}: {v:.3f}")
    for note in res["notes"]:
        info(f"note: {note}")
    info(f"wrote {args.out or res['run'] + '/bench.json'}")
    return 0
