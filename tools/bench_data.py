"""Speed of qfair's data sources (figures for the note; never asserted in tests).

    OMP_NUM_THREADS=1 python tools/bench_data.py                 # everything (synthesis of 512 takes long)
    python tools/bench_data.py --only recordio generator         # skip the data-free synthesis
    python tools/bench_data.py --synth-n 64                      # shorter synthesis, per-image rate shown

Measures (one process unless stated):
- RecordIO: raw record reads/s (no decoding) and decoded images/s of a generated ``.rec`` with JPEG
  112x112 faces, in one process, and as normalised float batches through ``qfair.data.folders.stream``
  inline and with 2 worker processes;
- built-in generator: rendered images/s in one process and in 2 processes;
- data-free synthesis: seconds for ``--synth-n`` images for MobileFaceNet (``mbf``) on CPU.
Prints a table and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from qfair.config.cli_args import check_output_arg, positive_int


def _render_chunk(args: tuple[int, int]) -> int:
    import torch

    from qfair.data.builtin import make_calibration

    torch.set_num_threads(1)
    n, seed = args
    return len(make_calibration(n, seed=seed))


def bench_generator(n: int) -> dict:
    import multiprocessing as mp

    import torch

    from qfair.data.builtin import make_calibration

    torch.set_num_threads(1)
    make_calibration(32, seed=99)  # warm up
    t = time.perf_counter()
    make_calibration(n, seed=0)
    one = n / (time.perf_counter() - t)
    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    with ctx.Pool(2) as pool:
        pool.map(_render_chunk, [(16, 98), (16, 97)])  # warm up workers
        t = time.perf_counter()
        done = sum(pool.map(_render_chunk, [(n // 4 + (s < n % 4), s) for s in range(4) if n // 4 + (s < n % 4)]))
        two = done / (time.perf_counter() - t)
    return {"generator_images_per_s_1proc": round(one, 1), "generator_images_per_s_2proc": round(two, 1),
            "generator_images": n}


def bench_recordio(n: int) -> dict:
    import numpy as np
    import torch

    from qfair.data import RecordIO, write_recordio
    from qfair.data.builtin import make_calibration
    from qfair.data.folders import stream
    from qfair.data.preprocess import encode_jpeg, nchw_to_hwc

    torch.set_num_threads(1)
    imgs = nchw_to_hwc(make_calibration(min(n, 512), seed=1))
    with tempfile.TemporaryDirectory() as d:
        items = [(encode_jpeg(imgs[i % len(imgs)], quality=90), i % 100) for i in range(n)]
        rec, _ = write_recordio(Path(d) / "train.rec", items)
        size_mb = rec.stat().st_size / 2**20
        ds = RecordIO(rec)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds.read(i)
        raw = len(ds) / (time.perf_counter() - t)
        ds = RecordIO(rec)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        dec = len(ds) / (time.perf_counter() - t)
        t = time.perf_counter()
        got = sum(len(y) for _, y in stream(ds, 128, num_workers=0))
        inline = got / (time.perf_counter() - t)
        t = time.perf_counter()
        got = sum(len(y) for _, y in stream(ds, 128, num_workers=2))
        workers = got / (time.perf_counter() - t)
        assert got == n and np.isfinite(workers)
    return {"recordio_records_per_s_raw": round(raw, 1), "recordio_images_per_s_decoded_1proc": round(dec, 1),
            "recordio_batches_images_per_s_inline": round(inline, 1),
            "recordio_batches_images_per_s_2workers": round(workers, 1), "recordio_images": n,
            "recordio_file_mb": round(size_mb, 1)}


def bench_synthesis(n: int, iters: int, batch_size: int) -> dict:
    import torch

    from qfair.data.synthesis import SynthSettings, iter_synthesize_from_bn
    from qfair.models import create_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from qfair.data.builtin import make_calibration
    from qfair.data.preprocess import to_model_input

    torch.manual_seed(0)
    model = create_model("mbf")
    # give the BatchNorm layers attainable "trained" statistics, as a real checkpoint has: the
    # cumulative statistics of built-in face images (random statistics cannot be matched by any input)
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for s0 in range(2):
            model(to_model_input(make_calibration(32, seed=10 + s0)))
    model.eval()
    s = SynthSettings(iters=iters, batch_size=batch_size)
    cpu = time.process_time()
    t = time.perf_counter()
    done, log = 0, []
    for b in iter_synthesize_from_bn(model, n, settings=s, log=log):
        done += len(b)
        print(f"  synthesis: {done}/{n} images, {time.perf_counter() - t:.0f} s, BN loss {log[-1][0]:.3f} -> "
              f"{log[-1][1]:.3f}", flush=True)
    dt = time.perf_counter() - t
    cpu = time.process_time() - cpu  # on a shared machine CPU time says more than wall time
    return {"synthesis_mbf_images": n, "synthesis_cpu_seconds": round(cpu, 1),
            "synthesis_cpu_seconds_per_image": round(cpu / n, 3), "synthesis_iters": iters,
            "synthesis_batch_size": batch_size,
            "synthesis_seconds": round(dt, 1), "synthesis_seconds_per_image": round(dt / n, 3),
            "synthesis_threads": torch.get_num_threads(),
            "synthesis_bn_loss_first_to_last": [round(sum(x[0] for x in log) / len(log), 4),
                                                round(sum(x[1] for x in log) / len(log), 4)]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=["recordio", "generator", "synthesis"],
                    default=["recordio", "generator", "synthesis"])
    ap.add_argument("--rec-n", type=positive_int, default=4000, help="images in the benchmark .rec")
    ap.add_argument("--gen-n", type=positive_int, default=2048, help="images rendered by the built-in generator")
    ap.add_argument("--synth-n", type=positive_int, default=512,
                    help="images synthesised from mbf BatchNorm statistics")
    ap.add_argument("--synth-iters", type=positive_int, default=30)
    ap.add_argument("--synth-batch", type=positive_int, default=32)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    from qfair.export.bench import bench_context
    from qfair.utils.io import atomic_write_json

    check_output_arg(ap, "--json", args.json)  # a bad --json path fails now, not after minutes of timing
    ctx = bench_context()
    out: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                 "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
                 "settings": vars(args), "context": ctx}
    if "recordio" in args.only:
        out.update(bench_recordio(args.rec_n))
    if "generator" in args.only:
        out.update(bench_generator(args.gen_n))
    if "synthesis" in args.only:
        out.update(bench_synthesis(args.synth_n, args.synth_iters, args.synth_batch))
    out["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    width = max(len(k) for k in out)
    for k, v in out.items():
        if k not in ("settings", "context"):
            print(f"{k:<{width}}  {v}")
    print(f"torch {ctx['versions'].get('torch')}, {ctx['usable_cpus']} usable CPUs, OMP_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if args.json:
        atomic_write_json(args.json, out, mkdir=True)


if __name__ == "__main__":
    main()
