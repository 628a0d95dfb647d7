"""Latency and throughput of one run on every runtime available here: torch float32, ONNX Runtime
float32, ONNX Runtime int8 (the onnxruntime-target export) and TensorRT where present, plus the file
size of every artefact. Each figure is the median of repeated runs after warm-up runs; speed is
measured here and in tools/bench_*.py, never asserted in tests."""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..utils.io import atomic_path, atomic_write_json, output_file
from .config import BenchConfig
from .provenance import export_report_path

BENCH_FILE = "bench.json"  # default output of bench_run, in the run folder


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


def time_runtime(run: Callable[[torch.Tensor], Any], cfg: BenchConfig) -> dict[str, float]:
    """{"latency_ms_b<first>": ..., "throughput_b<n>": images/s ...} for one runtime."""
    out: dict[str, float] = {}
    for i, b in enumerate(cfg.batches):
        x = torch.rand(b, 3, 112, 112) * 2 - 1
        sec = median_seconds(lambda x=x: run(x), cfg.warmup, cfg.repeats if b < 32 else max(1, cfg.repeats // 2 + 1))
        if i == 0:
            out[f"latency_ms_b{b}"] = sec * 1000
        out[f"throughput_b{b}"] = b / sec
    return out


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


def _ort_runner(path: Path, threads: int) -> Callable[[torch.Tensor], Any]:
    from .parity import ort_session

    sess = ort_session(path, threads=threads)
    return lambda x: sess.run(None, {"input": x.numpy()})


def bench_run(run_dir: str | Path, cfg: BenchConfig | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Benchmark a quantized run folder; writes ``RUN_DIR/bench.json`` (or ``out``) and returns it."""
    import onnx

    from .api import export_onnx, load_for_export
    from .onnx_graph import freeze_copy, torch_to_onnx
    from .packed import save_packed
    from .tensorrt import tensorrt_status

    cfg = cfg or BenchConfig()
    if out is not None:  # a bad output path fails now, not after the exports and timings
        output_file(out)
    model, run = load_for_export(run_dir)
    run = Path(run_dir) if run is None else run
    work = run / "bench"
    work.mkdir(exist_ok=True)
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    fp32 = float_copy(model)
    fp32_onnx = work / "fp32.onnx"
    with atomic_path(fp32_onnx) as tmp:
        onnx.save_model(torch_to_onnx(freeze_copy(fp32)), str(tmp))
    int8_onnx = export_onnx(model, "onnxruntime", out=work / "int8.onnx", parity_data=cfg.parity)
    sizes = {"fp32_onnx": fp32_onnx.stat().st_size, "int8_onnx": int8_onnx.stat().st_size}
    if (run / "model.pt").exists():
        sizes["torch_state_dict"] = (run / "model.pt").stat().st_size
    sizes["packed"] = save_packed(model, work / "model.qpk").stat().st_size
    rows: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        rows["torch fp32"] = time_runtime(lambda x: fp32(x), cfg)
    rows["onnxruntime fp32"] = time_runtime(_ort_runner(fp32_onnx, threads), cfg)
    rows["onnxruntime int8"] = time_runtime(_ort_runner(int8_onnx, threads), cfg)
    notes = []
    shipped = json.loads(export_report_path(int8_onnx).read_text())
    if "integer_layout_parity" in shipped:  # the fast layout changed the model: time it too, labelled
        fast = export_onnx(model, "onnxruntime", out=work / "int8_requant.onnx", parity_data=cfg.parity,
                           requant=True)
        cos = json.loads(export_report_path(fast).read_text())["parity"]["evaluated_cosine_mean"]
        rows["onnxruntime int8 (requant)"] = time_runtime(_ort_runner(fast, threads), cfg)
        sizes["int8_requant_onnx"] = fast.stat().st_size
        notes.append(f"'onnxruntime int8' is the exact layout `qfair export` ships for this model (float kernels on "
                     f"int8 weights): the integer-kernel layout re-quantizes conv outputs and moves the embeddings "
                     f"(cosine {cos:.5f} vs the evaluated model); 'onnxruntime int8 (requant)' times that layout, "
                     "which `qfair export --requant` ships")
    ok, why = tensorrt_status()
    if ok:  # pragma: no cover - GPU machines only
        from .tensorrt import EngineRunner, build_engine

        trt_onnx = export_onnx(model, "tensorrt", out=work / "trt.onnx", parity_data=cfg.parity)
        engine = build_engine(trt_onnx, work / "model.engine", max_batch=max(cfg.batches))
        sizes["tensorrt_engine"] = engine.stat().st_size
        rows["tensorrt int8"] = time_runtime(EngineRunner(engine), cfg)
    else:
        notes.append(f"TensorRT skipped: {why}")
    b = sorted(cfg.batches)
    ratios = {f"ort_int8_vs_fp32_speed_b{n}": rows["onnxruntime int8"][f"throughput_b{n}"]
              / rows["onnxruntime fp32"][f"throughput_b{n}"] for n in b}
    if "onnxruntime int8 (requant)" in rows:
        ratios.update({f"ort_int8_requant_vs_fp32_speed_b{n}": rows["onnxruntime int8 (requant)"][f"throughput_b{n}"]
                       / rows["onnxruntime fp32"][f"throughput_b{n}"] for n in b})
    ratios["int8_vs_fp32_onnx_size"] = sizes["int8_onnx"] / sizes["fp32_onnx"]
    if "torch_state_dict" in sizes:
        ratios["packed_vs_state_dict_size"] = sizes["packed"] / sizes["torch_state_dict"]
    result = {"run": str(run), "threads": threads, "machine": platform.processor() or platform.machine(),
              "warmup": cfg.warmup, "repeats": cfg.repeats, "runtimes": rows, "sizes_bytes": sizes,
              "ratios": ratios, "notes": notes,
              "bits": (getattr(model, "qfair_quant", None) or {}).get("abits")}
    atomic_write_json(Path(out) if out else run / BENCH_FILE, result)
    return result
