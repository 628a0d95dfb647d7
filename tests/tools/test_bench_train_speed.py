"""tools/bench_train.py speed mode: variants timed in turns (round-robin) after a warm-up of each.

Fake steps and a fake clock only: these tests check the schedule and the arithmetic, never real speed."""
from __future__ import annotations

import json

import pytest

# the `bench_train` fixture (tools/bench_train.py as a module) is in conftest.py


class FakeClock:
    """Simulated seconds; the n-th step (from 0) advances it by its cost times the machine load load(n)."""

    def __init__(self, load=lambda n: 1.0) -> None:
        self.now, self.n, self.load = 0.0, 0, load

    def __call__(self) -> float:
        return self.now

    def step(self, cost: float) -> None:
        self.now += cost * self.load(self.n)
        self.n += 1


def _fake_steps(names, calls: list, clock: FakeClock | None = None, cost=None) -> dict:
    """{name: step} that logs its name in ``calls`` and, given a clock, advances it by cost(name, call index)."""
    def make(name):
        def run(x):
            if clock is not None:
                clock.step(cost(name, sum(c == name for c in calls)))
            calls.append(name)
        return run
    return {n: make(n) for n in names}


def test_schedule_is_warmup_of_each_then_rotating_rounds(bench_train):
    calls: list = []
    times = bench_train.time_variants(_fake_steps(["a", "b", "c"], calls), batch=2, rounds=4, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # untimed warm-up of every variant first
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # one step each, rotating
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}  # warm-up steps dropped


def test_warmup_steps_are_not_in_the_timings(bench_train):
    clock = FakeClock()
    costs = {"float": 1.0, "qat-track": 3.0, "qat": 2.0}
    # the first call of every variant is 100x slower (first-step set-up): the warm-up must absorb it
    steps = _fake_steps(list(costs), [], clock, lambda n, i: costs[n] * (100 if i == 0 else 1))
    times = bench_train.time_variants(steps, batch=4, rounds=3, warmup=1, clock=clock)
    assert times == {"float": [1.0] * 3, "qat-track": [3.0] * 3, "qat": [2.0] * 3}


def test_rising_load_hits_every_variant_alike(bench_train):
    # equal work per step while the machine load rises steadily: timed one variant after another, the last
    # variant would look ~1.5x slower than the first; timed in turns, the medians stay within a few percent
    clock = FakeClock(load=lambda n: 1.0 + 0.05 * n)  # +5 % per step
    steps = _fake_steps(["float", "qat-track", "qat"], [], clock, lambda n, i: 1.0)
    times = bench_train.time_variants(steps, batch=4, rounds=7, warmup=1, clock=clock)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    assert max(med.values()) / min(med.values()) < 1.1

    # the same load timed one variant after another (the old schedule) is skewed: the test can tell them apart
    seq = FakeClock(load=lambda n: 1.0 + 0.05 * n)
    seq_med = {}
    for name in ("float", "qat-track", "qat"):
        seq.step(1.0)  # warm-up
        ts = []
        for _ in range(7):
            t = seq()
            seq.step(1.0)
            ts.append(seq() - t)
        seq_med[name] = sorted(ts)[3]
    assert seq_med["qat"] / seq_med["float"] > 1.4


def test_bench_arch_rows_medians_and_ratios(bench_train, monkeypatch):
    clock = FakeClock()
    costs = {"float": [0.5, 0.2, 0.25, 0.3, 0.9], "qat-track": [0.5, 0.6, 0.4, 0.5, 0.5],
             "qat": [0.5, 0.3, 0.35, 0.35, 0.3]}  # first entry: the warm-up step
    built = []

    def fake_build(arch, batch, bits):
        built.append((arch, batch, bits))
        return _fake_steps(list(costs), [], clock, lambda n, i: costs[n][i])

    monkeypatch.setattr(bench_train, "build_steps", fake_build)
    rows = bench_train.bench_arch("mbf", batch=8, steps=4, warmup=1, bits=6, clock=clock)
    assert built == [("mbf", 8, 6)]
    assert [r["variant"] for r in rows] == ["float", "qat-track", "qat"]
    by = {r["variant"]: r for r in rows}
    assert by["float"]["step_s"] == pytest.approx(0.275)  # median of 0.2, 0.25, 0.3, 0.9
    assert by["qat-track"]["step_s"] == pytest.approx(0.5)
    assert by["qat"]["step_s"] == pytest.approx(0.325)
    assert by["float"]["relative_to_float"] == 1.0
    assert by["qat-track"]["relative_to_float"] == pytest.approx(0.5 / 0.275)
    assert by["qat"]["relative_to_float"] == pytest.approx(0.325 / 0.275)
    assert by["float"]["images_per_s"] == pytest.approx(8 / 0.275)
    assert (by["float"]["min_s"], by["float"]["max_s"]) == pytest.approx((0.2, 0.9))
    assert by["float"]["times_s"] == pytest.approx([0.2, 0.25, 0.3, 0.9])


def test_main_speed_mode_times_in_turns_and_keeps_json_keys(bench_train, monkeypatch, tmp_path, capsys):
    calls: list = []
    # fake steps keyed by variant, logging "arch:variant" so the order across archs shows too
    monkeypatch.setattr(bench_train, "build_steps", lambda arch, batch, bits: {
        v: (lambda x, _k=f"{arch}:{v}": calls.append(_k)) for v in bench_train.VARIANTS})
    out = tmp_path / "speed.json"
    bench_train.main(["--archs", "a1", "a2", "--batch", "2", "--steps", "3", "--warmup", "1", "--out", str(out)])
    f, t, q = (f"a1:{v}" for v in bench_train.VARIANTS)
    assert calls[:12] == [f, t, q, f, t, q, t, q, f, q, f, t]  # warm-up of each, then rotating rounds
    assert all(c.startswith("a2:") for c in calls[12:]) and len(calls) == 24
    res = json.loads(out.read_text())
    assert res["meta"]["timing"] == "round-robin"
    assert {"torch", "threads", "bits", "batch", "steps", "warmup", "timing", "context"} <= set(res["meta"])
    assert [(r["arch"], r["variant"]) for r in res["results"]] == [
        (a, v) for a in ("a1", "a2") for v in bench_train.VARIANTS]
    for r in res["results"]:
        assert {"arch", "variant", "batch", "step_s", "images_per_s", "steps", "min_s", "max_s",
                "relative_to_float"} <= set(r)
        assert len(r["times_s"]) == 3
    assert "of float" in capsys.readouterr().out


def test_speed_mode_refuses_no_warmup(bench_train, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_train.main(["--warmup", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--warmup" in err and "faster than float" in err


def test_warmup_zero_is_left_to_the_other_modes(bench_train, tmp_path):
    # --aggregate ignores --warmup: it gets past parsing and fails on its own input instead
    with pytest.raises(SystemExit) as exc:
        bench_train.main(["--aggregate", str(tmp_path / "missing.json"), "--warmup", "0"])
    assert "cannot read an acceptance result" in str(exc.value.code)
