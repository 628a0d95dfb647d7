"""Speed and size of qfair's ONNX Runtime int8 export, beside ONNX Runtime's own quantize_static.

One run, same machine, same model and calibration images for both quantizers. For each
architecture: ONNX Runtime float32, qfair int8 (deploy recipe, onnxruntime target) and
``onnxruntime.quantization.quantize_static`` (QDQ, per channel, U8S8) are timed round-robin (so
machine noise hits all three alike); each figure is the median of --repeats runs after warm-up.
Weights are random (speed does not depend on their values) with BatchNorm statistics re-estimated on
images and the residual branches scaled down 10x, as in trained networks: a plain random deep net is
chaotic (a quantization rounding flip grows until the embeddings decorrelate), which makes parity
figures meaningless. The integer layout's parity figures are reported and compared with the gates,
not enforced (``cosine_gate=0``), so a speed figure is produced either way; "shipped" is what
``qfair export`` writes by default (the integer layout only if it also stays within the cosine gate of
the evaluated model, else the exact float-kernel layout).

    OMP_NUM_THREADS=1 python tools/bench_export.py --archs iresnet50 mbf --threads 1 --out runs/bench_export.json

Goals (issue 6): iresnet50 batch 16 int8 >= 2.2x float32; MobileFaceNet int8 not slower than
float32; int8 ONNX file <= 0.26x the float32 file.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qfair.config.cli_args import check_output_arg, positive_int


def _images(n: int, seed: int = 0) -> torch.Tensor:
    from qfair.data import to_model_input
    from qfair.data.builtin import make_verification

    vs = make_verification(seed=seed, pairs_per_group="small")
    return to_model_input(vs.images.get_many(range(min(n, len(vs.images))))).float()


def _float_model(arch: str, images: torch.Tensor) -> torch.nn.Module:
    from qfair.models import create_model

    torch.manual_seed(0)
    m = create_model(arch)
    m.train()
    for mod in m.modules():  # realistic BN statistics (cumulative average over the images)
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
            mod.reset_running_stats()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            m(images[i:i + 16])
    _tame_residuals(m)
    return m.eval()


def _tame_residuals(model: torch.nn.Module, factor: float = 0.1) -> None:
    """Scale the last BatchNorm of every residual branch (iresnet ``bn3``; the last BN of a block with a
    ``ResidualAdd`` otherwise, downsample paths excluded) by ``factor``."""
    from qfair.models._layers import ResidualAdd

    for block in model.modules():
        if not any(isinstance(c, ResidualAdd) for c in block.children()):
            continue
        named = [(n, m) for n, m in block.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                 and "downsample" not in n]
        last = dict(named).get("bn3") or (named[-1][1] if named else None)
        if last is not None:
            with torch.no_grad():
                last.weight.mul_(factor)
                last.bias.mul_(factor)


def _ort_static(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 8].numpy()} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.it, None)

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _size_breakdown(path: Path) -> dict[str, int]:
    """Bytes of an ONNX file by what they hold: weights (tensors with two or more dims above 1), small
    constants (scales, biases, slopes, zero points) and the rest (nodes, names, headers)."""
    import onnx

    model = onnx.load(str(path))
    weights = sum(t.ByteSize() for t in model.graph.initializer if sum(d > 1 for d in t.dims) >= 2)
    small = sum(t.ByteSize() for t in model.graph.initializer) - weights
    return {"weights": weights, "small_constants": small, "graph": path.stat().st_size - weights - small}


def _sessions(paths: dict[str, Path], threads: int):
    from qfair.export.parity import ort_session

    return {k: ort_session(p, threads=threads) for k, p in paths.items()}


def _time_round_robin(sessions: dict, batch: int, warmup: int, repeats: int) -> dict[str, float]:
    from qfair.export.bench import bench_inputs

    x = {"input": bench_inputs(batch).numpy()}  # seeded: the same input for every session and every run
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, x)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, x)
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_arch(arch: str, bits: int, threads: int, batches: list[int], warmup: int, repeats: int, work: Path) -> dict:
    import onnx

    from qfair.export import export_onnx
    from qfair.export.onnx_graph import torch_to_onnx
    from qfair.export.parity import cosine_gate
    from qfair.quant import QuantConfig, quantize

    images = _images(64)
    calib, parity = images[:32], images[32:48]
    model = _float_model(arch, images)
    t0 = time.time()
    q = quantize(model, QuantConfig(bits=bits, recipe="deploy", calib_size=32, calib_batch_size=16),
                 [calib[i:i + 16] for i in range(0, 32, 16)])
    t_quant = time.time() - t0
    from qfair.export.graph import rewrite_prelu

    paths = {"ort_fp32": work / f"{arch}_fp32.onnx", "ort_fp32_prelu_rewritten": work / f"{arch}_fp32_rw.onnx"}
    fp32 = torch_to_onnx(model)
    onnx.save_model(fp32, str(paths["ort_fp32"]))
    rewrite_prelu(fp32.graph)  # the same PRelu rewrite qfair's onnxruntime export applies: a fair float baseline
    onnx.save_model(fp32, str(paths["ort_fp32_prelu_rewritten"]))
    t0 = time.time()
    paths["qfair_int8"] = export_onnx(q, "onnxruntime", out=work / f"{arch}_qfair_int8.onnx", parity_data=parity,
                                      cosine_gate=0.0)
    t_export = time.time() - t0
    report = json.loads(paths["qfair_int8"].with_name(paths["qfair_int8"].stem + ".export.json").read_text())
    # what `qfair export` ships by default: the same layout only if it also passes the cosine gate against
    # the evaluated model, else the exact float-kernel layout
    paths["qfair_shipped"] = export_onnx(q, "onnxruntime", out=work / f"{arch}_qfair_shipped.onnx", parity_data=parity)
    shipped = json.loads(paths["qfair_shipped"].with_name(paths["qfair_shipped"].stem + ".export.json").read_text())
    paths["ort_quantize_static"] = _ort_static(paths["ort_fp32"], work / f"{arch}_ort_static.onnx", calib)
    sessions = _sessions(paths, threads)
    res = {"arch": arch, "bits": bits, "threads": threads, "torch_threads": torch.get_num_threads(),
           "onnxruntime_intra_op_threads": {k: s.get_session_options().intra_op_num_threads
                                            for k, s in sessions.items()}, "quantize_s": t_quant, "export_s": t_export,
           "sizes_bytes": {k: p.stat().st_size for k, p in paths.items()},
           "size_breakdown": {k: _size_breakdown(paths[k]) for k in ("ort_fp32", "qfair_int8", "ort_quantize_static")},
           "parity": {k: report["parity"][k] for k in ("cosine_mean", "cosine_min", "evaluated_cosine_mean",
                                                        "evaluated_cosine_min", "stress_cosine_mean")},
           "parity_gate": cosine_gate(bits), "parity_gate_passed": report["parity"]["cosine_mean"] >= cosine_gate(bits),
           # `qfair export` ships this layout by default only if it also stays within the gate of the evaluated
           # model (otherwise "auto" falls back to the exact float-kernel layout; --requant ships it anyway)
           "ships_by_default": (report["parity"]["evaluated_cosine_mean"] or 1.0) >= cosine_gate(bits),
           "shipped_keep_float": shipped.get("keep_float"), "shipped_int8_layers": len(shipped.get("int8_layers", [])),
           "shipped_parity": {k: shipped["parity"][k] for k in ("cosine_mean", "evaluated_cosine_mean", "passed")},
           "shipped_notes": shipped.get("notes"),
           "keep_float": report.get("keep_float"), "latency_s_batch8": report.get("latency_s_batch8"),
           "float_layers": report.get("float_layers"), "seconds": {}, "speedup_vs_fp32": {},
           "speedup_vs_fp32_rewritten": {}, "per_layer_ms": report.get("per_layer_ms")}
    for b in batches:
        sec = _time_round_robin(sessions, b, warmup, repeats)
        res["seconds"][f"b{b}"] = sec
        res["speedup_vs_fp32"][f"b{b}"] = {k: sec["ort_fp32"] / v for k, v in sec.items() if k != "ort_fp32"}
        res["speedup_vs_fp32_rewritten"][f"b{b}"] = {
            k: sec["ort_fp32_prelu_rewritten"] / v for k, v in sec.items() if k.startswith(("qfair", "ort_quant"))}
    fp = res["sizes_bytes"]["ort_fp32"]
    res["size_vs_fp32"] = {k: v / fp for k, v in res["sizes_bytes"].items() if k != "ort_fp32"}
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["iresnet50", "mbf"])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--threads", type=positive_int, default=1, help="torch and ONNX Runtime (intra-op) threads")
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[1, 16])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    if len(set(args.batches)) != len(args.batches):
        ap.error(f"--batches: each batch size once, got {args.batches}")
    if args.warmup < 0:
        ap.error(f"--warmup: expected a whole number >= 0, got {args.warmup}")
    check_output_arg(ap, "--out", args.out)
    from qfair.export.bench import bench_context

    torch.set_num_threads(args.threads)
    context = bench_context()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            r = bench_arch(arch, args.bits, args.threads, args.batches, args.warmup, args.repeats, Path(tmp))
            results.append(r)
            print(json.dumps({k: r[k] for k in ("arch", "speedup_vs_fp32", "speedup_vs_fp32_rewritten", "size_vs_fp32",
                                                "size_breakdown", "parity", "float_layers", "ships_by_default",
                                                "shipped_keep_float", "shipped_int8_layers", "shipped_parity")},
                             indent=1), flush=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"ONNX Runtime int8 vs float32 ({args.threads} thread(s), median of {args.repeats})")
    for c in ("arch", "batch", "fp32 ms", "fp32 rw ms", "qfair int8 ms", "x fp32", "x fp32 rw", "shipped x fp32",
              "static ms", "x fp32", "qfair size", "static size"):
        t.add_column(c)
    for r in results:
        for b, sec in r["seconds"].items():
            sp = r["speedup_vs_fp32"][b]
            rw = r["speedup_vs_fp32_rewritten"][b]
            t.add_row(r["arch"], b, f"{sec['ort_fp32'] * 1e3:.1f}", f"{sec['ort_fp32_prelu_rewritten'] * 1e3:.1f}",
                      f"{sec['qfair_int8'] * 1e3:.1f}", f"{sp['qfair_int8']:.2f}", f"{rw['qfair_int8']:.2f}",
                      f"{sp['qfair_shipped']:.2f}",
                      f"{sec['ort_quantize_static'] * 1e3:.1f}",
                      f"{sp['ort_quantize_static']:.2f}", f"{r['size_vs_fp32']['qfair_int8']:.3f}",
                      f"{r['size_vs_fp32']['ort_quantize_static']:.3f}")
    Console().print(t)
    if args.out:
        from qfair.utils.io import atomic_write_json

        context["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        atomic_write_json(args.out, {"settings": vars(args), "context": context, "results": results}, mkdir=True)


if __name__ == "__main__":
    main()
