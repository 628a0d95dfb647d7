"""Latency and throughput of one run on every runtime available here: torch float32, ONNX Runtime
float32, ONNX Runtime int8 (the onnxruntime-target export) and TensorRT where present, plus the file
size of every artefact. Every runtime gets the same seeded inputs; per batch size each runtime is
warmed up, then the runtimes are timed in turns (round-robin, so the load of a shared machine hits them
alike) and the median of the timed runs is reported; ratios are taken from that one run. Speed is
measured here and in tools/bench_*.py, never asserted in tests."""
from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..utils.errors import ExportError, QfairError
from ..utils.io import atomic_path, atomic_write_json, output_file
from .config import BenchConfig
from .provenance import export_report_path

BENCH_FILE = "bench.json"  # default output of bench_run, in the run folder
INPUT_SEED = 0  # inputs of batch size b: uniform [-1, 1] from torch.Generator seeded INPUT_SEED + b


def median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_inputs(batch: int) -> torch.Tensor:
    """The (batch, 3, 112, 112) float input every runtime is timed on (seeded, identical across runtimes)."""
    g = torch.Generator().manual_seed(INPUT_SEED + batch)
    return torch.rand(batch, 3, 112, 112, generator=g) * 2 - 1


def time_runtimes(runners: dict[str, Callable[[torch.Tensor], Any]], batches: tuple[int, ...] | list[int],
                  warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """{runtime: {"latency_ms_b<first>": ..., "throughput_b<n>": images/s}}, medians of ``repeats`` timed
    runs per batch size after ``warmup`` untimed runs of every runtime. The runtimes are timed in turns
    (the order rotates every round) on the same input tensor, so a load change on a shared machine hits
    all of them alike and their ratios are comparable."""
    names = list(runners)
    out: dict[str, dict[str, float]] = {k: {} for k in names}
    for i, b in enumerate(batches):
        x = bench_inputs(b)
        for k in names:
            for _ in range(warmup):
                runners[k](x)
        times: dict[str, list[float]] = {k: [] for k in names}
        for r in range(repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                runners[k](x)
                times[k].append(time.perf_counter() - t)
        for k in names:
            sec = float(np.median(times[k]))
            if i == 0:
                out[k][f"latency_ms_b{b}"] = sec * 1000
            out[k][f"throughput_b{b}"] = b / sec
    return out


def time_runtime(run: Callable[[torch.Tensor], Any], cfg: BenchConfig) -> dict[str, float]:
    """{"latency_ms_b<first>": ..., "throughput_b<n>": images/s ...} for one runtime."""
    return time_runtimes({"x": run}, cfg.batches, cfg.warmup, cfg.repeats)["x"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def bench_context() -> dict[str, Any]:
    """What a speed figure needs beside it to be trusted: machine, CPUs, load, threads, versions."""
    from ..runs import package_versions

    return {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "usable_cpus": usable_cpus(), "load_average": load_average(),
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                            if k in os.environ},
            "versions": package_versions()}


def float_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every quantizer switched off (the float32 baseline of the same weights)."""
    m = copy.deepcopy(model).eval()
    try:
        from ..quant import iter_quantizers

        for _, q in iter_quantizers(m):
            q.fake_quant_enabled = q.observer_enabled = False
    except ImportError:  # pragma: no cover
        pass
    m.qfair_quant = None
    return m


def _ort_runner(path: Path, threads: int, seen: dict[str, int]) -> Callable[[torch.Tensor], Any]:
    from .parity import ort_session

    sess = ort_session(path, threads=threads)
    seen[path.stem] = sess.get_session_options().intra_op_num_threads  # what the session really uses
    return lambda x: sess.run(None, {"input": x.numpy()})


def check_bench_inputs(run_dir: str | Path, cfg: BenchConfig, out: str | Path | None = None) -> Path:
    """Refuse, before any work, what `qfair bench` cannot measure; returns the run folder."""
    from ..utils.errors import require

    dup = sorted({b for b in cfg.batches if list(cfg.batches).count(b) > 1})
    if dup:
        raise QfairError(f"--batches: batch size {', '.join(map(str, dup))} given twice ({list(cfg.batches)}); "
                         "give each batch size once, e.g. --batches 1 16 64")
    if out is not None:  # a bad output path fails now, not after the exports and timings
        output_file(out)
    run = Path(run_dir)
    if not run.exists():
        raise QfairError(f"{run} not found: pass a run folder written by `qfair quantize`")
    if not run.is_dir() or not (run / "quant.json").is_file():
        what = "a checkpoint file" if run.is_file() else "a folder without quant.json (not a quantized run)"
        raise QfairError(f"{run} is {what}: `qfair bench` compares a quantized model with its float32 weights, so "
                         "it needs a run folder written by `qfair quantize` (e.g. qfair quantize --model "
                         f"{run if run.is_file() else 'MODEL.pt'} --bits 8 --recipe deploy --out runs/m-w8, then "
                         "qfair bench runs/m-w8)")
    require("onnx", "qfair bench (ONNX export of the float and int8 models)", extra="onnx")
    require("onnxruntime", "qfair bench (ONNX Runtime timings)", extra="onnx")
    return run


def bench_run(run_dir: str | Path, cfg: BenchConfig | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Benchmark a quantized run folder; writes ``RUN_DIR/bench.json`` (or ``out``) and returns it.

    The exported graphs are built in a temporary folder and removed afterwards (only their sizes are
    kept); torch's thread count is restored on return."""
    cfg = cfg or BenchConfig()
    run = check_bench_inputs(run_dir, cfg, out)
    threads = cfg.threads or usable_cpus()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="qfair-bench-") as tmp:
            result = _bench(run, cfg, threads, Path(tmp))
    finally:
        torch.set_num_threads(before)
    atomic_write_json(Path(out) if out else run / BENCH_FILE, result)
    return result


def _bench(run: Path, cfg: BenchConfig, threads: int, work: Path) -> dict[str, Any]:
    import onnx

    from .api import export_onnx, load_for_export, model_bits
    from .graph import rewrite_prelu
    from .onnx_graph import freeze_copy, torch_to_onnx
    from .packed import save_packed
    from .tensorrt import tensorrt_status

    context = bench_context()  # before the work: the load the timings start under
    model, _ = load_for_export(run)
    if model_bits(model) is None:
        raise QfairError(f"{run}: the model in quant.json / model.pt has no active quantizer; `qfair bench` needs a "
                         "quantized run written by `qfair quantize`")
    fp32 = float_copy(model)
    fp32_onnx = work / "fp32.onnx"
    proto = torch_to_onnx(freeze_copy(fp32))
    # the PRelu rewrite qfair's onnxruntime exports (float ones too) apply: without it the float baseline
    # would be slower for a reason that has nothing to do with int8
    prelu = rewrite_prelu(proto.graph)
    with atomic_path(fp32_onnx) as tmp:
        onnx.save_model(proto, str(tmp))
    int8_onnx = export_onnx(model, "onnxruntime", out=work / "int8.onnx", parity_data=cfg.parity)
    sizes = {"fp32_onnx": fp32_onnx.stat().st_size, "int8_onnx": int8_onnx.stat().st_size}
    if (run / "model.pt").exists():
        sizes["torch_state_dict"] = (run / "model.pt").stat().st_size
    sizes["packed"] = save_packed(model, work / "model.qpk").stat().st_size
    shipped = json.loads(export_report_path(int8_onnx).read_text())
    ort_threads: dict[str, int] = {}
    notes = []
    if prelu:
        notes.append(f"'onnxruntime fp32' has its {prelu} PRelu layers rewritten as qfair's onnxruntime exports do "
                     "(same numbers, faster in ONNX Runtime), so the int8 ratios measure int8 alone")
    runners: dict[str, Callable[[torch.Tensor], Any]] = {}

    def torch_fp32(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return fp32(x)

    runners["torch fp32"] = torch_fp32
    runners["onnxruntime fp32"] = _ort_runner(fp32_onnx, threads, ort_threads)
    runners["onnxruntime int8"] = _ort_runner(int8_onnx, threads, ort_threads)
    if "integer_layout_parity" in shipped:  # the fast layout changed the model: time it too, labelled
        fast = export_onnx(model, "onnxruntime", out=work / "int8_requant.onnx", parity_data=cfg.parity,
                           requant=True)
        runners["onnxruntime int8 (requant)"] = _ort_runner(fast, threads, ort_threads)
        sizes["int8_requant_onnx"] = fast.stat().st_size
        # why the integer layout was not shipped: its own parity reasons (a cosine below the gate, or a
        # verification pair that flipped), not a cosine that its report may not have
        first = shipped["integer_layout_parity"]
        why = "; ".join(first.get("reasons") or []) or "it failed the parity check"
        notes.append("'onnxruntime int8' is the float-kernel layout `qfair export` ships for this model (int8 "
                     f"weights, float kernels): the integer-kernel layout failed parity ({why}); 'onnxruntime int8 "
                     "(requant)' times that layout, which `qfair export --requant` ships")
    ok, why = tensorrt_status()
    trt_onnx = None
    if ok:
        try:  # an asymmetric (QuantFace recipe) model has no TensorRT graph: the CPU timings still count
            trt_onnx = export_onnx(model, "tensorrt", out=work / "trt.onnx", parity_data=cfg.parity)
        except ExportError as exc:
            why = f"no TensorRT graph for this model: {str(exc).splitlines()[0]}"
    if trt_onnx is not None:  # pragma: no cover - GPU machines only
        from .tensorrt import EngineRunner, build_engine

        engine = build_engine(trt_onnx, work / "model.engine", max_batch=max(cfg.batches))
        sizes["tensorrt_engine"] = engine.stat().st_size
        runners["tensorrt int8"] = EngineRunner(engine)
        notes.append("'tensorrt int8' runs on the GPU, the other runtimes on the CPU; its times include the "
                     "host-to-GPU copy of each batch")
    else:
        notes.append(f"TensorRT skipped: {why}")
    rows = time_runtimes(runners, cfg.batches, cfg.warmup, cfg.repeats)
    b = sorted(cfg.batches)
    ratios = {f"ort_int8_vs_fp32_speed_b{n}": rows["onnxruntime int8"][f"throughput_b{n}"]
              / rows["onnxruntime fp32"][f"throughput_b{n}"] for n in b}
    if "onnxruntime int8 (requant)" in rows:
        ratios.update({f"ort_int8_requant_vs_fp32_speed_b{n}": rows["onnxruntime int8 (requant)"][f"throughput_b{n}"]
                       / rows["onnxruntime fp32"][f"throughput_b{n}"] for n in b})
    ratios["int8_vs_fp32_onnx_size"] = sizes["int8_onnx"] / sizes["fp32_onnx"]
    if "torch_state_dict" in sizes:
        ratios["packed_vs_state_dict_size"] = sizes["packed"] / sizes["torch_state_dict"]
    meta = getattr(model, "qfair_quant", None) or {}
    context["torch_threads"] = torch.get_num_threads()  # as applied for the timings
    context["onnxruntime_intra_op_threads"] = ort_threads
    context["load_average_end"] = load_average()
    return {"run": str(run), "threads": threads, "machine": context["machine"],
            "batches": list(cfg.batches), "latency_batch": cfg.batches[0], "warmup": cfg.warmup,
            "repeats": cfg.repeats, "timing": "round-robin over runtimes, median of the timed runs",
            "inputs": f"uniform [-1, 1] (N, 3, 112, 112) float32, seed {INPUT_SEED} + N, the same for every runtime",
            "runtimes": rows, "sizes_bytes": sizes, "ratios": ratios, "notes": notes,
            "bits": meta.get("abits"), "wbits": meta.get("wbits"), "abits": meta.get("abits"),
            "recipe": meta.get("recipe"), "int8_export": {k: shipped.get(k) for k in ("layout", "keep_float")}
            | {"float_layers": len(shipped.get("float_layers") or []),
               "int8_layers": len(shipped.get("int8_layers") or [])},
            "context": context}
