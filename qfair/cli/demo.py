"""``qfair demo``: the whole real-versus-synthetic calibration study on the shipped demo model and the
built-in synthetic benchmark, with no downloads."""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Iterator


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole study on the built-in benchmark (no downloads, a few minutes)",
                       description="Evaluate the shipped float demo model on qfair's built-in synthetic benchmark; "
                                   "quantize it W8A8 and W6A6 with real, synthetic (generated) and data-free "
                                   "calibration; fine-tune the 6-bit model with distillation; export int8 ONNX and "
                                   "evaluate it in ONNX Runtime; print the study table and write report.md, "
                                   "figures and JSON. Rerunning resumes from finished stages.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--model", default=None,
                   help="shipped demo model to use (default: mobilefacenet; also iresnet18w16)")
    p.add_argument("--quick", action="store_true", help="a tiny version of the same pipeline (for smoke tests)")
    p.add_argument("--recompute", action="store_true",
                   help="rebuild finished stages whose settings changed (e.g. --quick after a full run in the same "
                        "--out), replacing their results")
    p.set_defaults(func=run)


@contextmanager
def term_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (what batch schedulers send before killing a job that ran out of time,
    and what ``kill`` sends) stops the study like Ctrl-C: temporary files are removed and the command says
    how to resume, instead of dying mid-write."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_study(res) -> None:
    from ..report.tables import build_tables, to_rich
    from ._console import console

    con = console()
    for t in build_tables(res.results, res.comparisons):
        con.print(to_rich(t))
    con.print(f"report: {res.files['report.md']}")
    con.print(f"everything else (metrics.json, results.csv, tables.tex, figures/): {res.out}")
    con.print(f"total time: {res.timings.get('total', 0):.0f} s")


def run(args: argparse.Namespace) -> int:
    import os

    from ..study import demo_config, run_study
    from ._console import console

    os.environ.setdefault("QFAIR_PROGRESS", "1")
    cfg = demo_config(out=args.out, quick=args.quick, model=args.model)
    con = console()
    con.print(f"[bold]qfair demo[/]: {cfg.models[0].name} on the built-in synthetic benchmark -> {cfg.out}")
    con.print("[dim]All data here is synthetic (rendered face-like images in four made-up groups); "
              "it shows the mechanism, not facts about real people.[/]")
    with term_as_interrupt():
        res = run_study(cfg, say=con.print, recompute=args.recompute)
    print_study(res)
    return 0
