"""Benchmark audit: `qfair bench` and tools/*.py measure what they claim and refuse bad input clearly.

No test here times anything: the clock is replaced by a counter where timing logic is checked."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from qfair.export import bench as B
from qfair.export.config import BenchConfig
from qfair.utils.errors import MissingDependencyError, QfairError

from .conftest import load_tool


def _tool(name: str):
    return load_tool(name, f"audit_{name}")


class _Clock:
    """A fake perf_counter: time only moves when a fake runtime "runs"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_runtimes_same_inputs_warmup_excluded_median(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(B.time, "perf_counter", clock)
    seen: dict[str, list] = {"a": [], "b": []}
    order: list[str] = []
    # runtime a: warm-up runs cost 100 s (must not count), then 1, 3, 2 s -> median 2 s
    costs = {"a": iter([100.0, 1.0, 3.0, 2.0]), "b": iter([100.0, 4.0, 4.0, 4.0])}

    def runner(name):
        def run(x):
            seen[name].append(x)
            order.append(name)
            clock.now += next(costs[name])
        return run

    rows = B.time_runtimes({"a": runner("a"), "b": runner("b")}, [4], warmup=1, repeats=3)
    assert rows["a"]["latency_ms_b4"] == pytest.approx(2000.0)
    assert rows["a"]["throughput_b4"] == pytest.approx(2.0)
    assert rows["b"]["throughput_b4"] == pytest.approx(1.0)
    # every call of both runtimes got the very same input tensor
    xs = seen["a"] + seen["b"]
    assert all(x is xs[0] for x in xs) and xs[0].shape == (4, 3, 112, 112)
    # timed runs alternate between runtimes (round-robin), the order rotating each round
    assert order[2:] == ["a", "b", "b", "a", "a", "b"]


def test_every_batch_uses_all_repeats(monkeypatch):
    """Large batches used to be timed with fewer runs than --repeats, silently."""
    clock = _Clock()
    monkeypatch.setattr(B.time, "perf_counter", clock)
    calls = []

    def run(x):
        calls.append(len(x))
        clock.now += 1.0

    B.time_runtimes({"a": run}, [1, 64], warmup=2, repeats=5)
    assert calls.count(64) == 2 + 5 and calls.count(1) == 2 + 5


def test_bench_inputs_are_seeded_and_in_range():
    a, b = B.bench_inputs(3), B.bench_inputs(3)
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1


def test_duplicate_batches_name_the_flag(tmp_path):
    with pytest.raises(QfairError, match="--batches"):
        B.check_bench_inputs(tmp_path, BenchConfig(batches=(16, 16)))


def test_checkpoint_file_is_not_a_quantized_run(tmp_path):
    ckpt = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(1)}, ckpt)
    with pytest.raises(QfairError, match="qfair quantize"):
        B.check_bench_inputs(ckpt, BenchConfig())


def test_float_run_folder_is_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(QfairError, match="quant.json"):
        B.check_bench_inputs(tmp_path, BenchConfig())


def test_bad_out_fails_before_work(tmp_path):
    (tmp_path / "quant.json").write_text("{}")
    with pytest.raises(QfairError, match="does not exist"):
        B.check_bench_inputs(tmp_path, BenchConfig(), out=tmp_path / "missing" / "b.json")


def test_missing_onnxruntime_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "quant.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        B.check_bench_inputs(tmp_path, BenchConfig())


def test_bench_run_restores_torch_threads_and_writes_nothing_on_failure(tmp_path, monkeypatch):
    (tmp_path / "quant.json").write_text("{}")
    before = torch.get_num_threads()

    def boom(run, cfg, threads, work):
        assert torch.get_num_threads() == 1  # --threads applied while timing
        raise QfairError("stop")

    monkeypatch.setattr(B, "_bench", boom)
    with pytest.raises(QfairError, match="stop"):
        B.bench_run(tmp_path, BenchConfig(threads=1))
    assert torch.get_num_threads() == before
    assert not (tmp_path / B.BENCH_FILE).exists() and not (tmp_path / "bench").exists()


def test_bench_context_records_what_a_number_needs():
    ctx = B.bench_context()
    for key in ("machine", "cpu_count", "usable_cpus", "load_average", "torch_threads", "versions"):
        assert key in ctx
    assert "torch" in ctx["versions"] and "python" in ctx["versions"]
    json.dumps(ctx)


def test_cli_help_describes_behaviour(capsys):
    from qfair.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("same seeded inputs", "in turns", "torch and ONNX Runtime", "TensorRT", "load average"):
        assert phrase in text


@pytest.mark.parametrize("tool,argv,flag", [
    ("bench_train", ["--steps", "0"], "--steps"),
    ("bench_train", ["--warmup", "-1"], "--warmup"),
    ("bench_data", ["--gen-n", "0"], "--gen-n"),
    ("bench_eval", ["--repeats", "0"], "--repeats"),
    ("bench_quant", ["--steps", "0"], "--steps"),
    ("bench_export", ["--batches", "1", "1"], "--batches"),
    ("quant_accuracy", ["--bits", "6"], "--bits"),
])
def test_tools_bad_settings_name_the_flag(tool, argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool(tool).main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("tool,flag", [("bench_train", "--out"), ("bench_data", "--json"), ("bench_eval", "--json"),
                                       ("bench_quant", "--json"), ("bench_export", "--out"),
                                       ("quant_accuracy", "--json")])
def test_tools_unwritable_output_fails_first(tool, flag, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exc:
        _tool(tool).main([flag, str(blocker / "out.json")])  # a parent that is a file: cannot be created
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
