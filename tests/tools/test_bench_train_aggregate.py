"""tools/bench_train.py --aggregate (tools/kd_acceptance.py): pooling KD acceptance runs over seeds (hand-computed
references)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# the `bench_train` / `kd_acceptance` fixtures (the tools as modules) are in conftest.py


def _run(seed: int, ptq: tuple, kd: tuple, disc: tuple[int, int], **settings) -> dict:
    """An acceptance result: float AVG 97 / SER 4; ptq, kd = (avg, ser); disc = pairs off float (ptq, kd)."""
    def model(avg, ser):
        return {"accuracy": {"A": avg + 1, "B": avg - 1}, "avg": avg, "std": 1.0, "ser": ser,
                "cos_to_float": {"A": 0.99, "B": 0.98}}

    base = {"checkpoint": "m.pt", "bits": 6, "bench": "builtin:3000", "seed": seed}
    base.update(settings)
    def groups(n: int) -> dict:  # McNemar counts: n pairs of group A decided differently from float
        return {"A": {"b": n, "c": 0, "p_holm": 1.0}, "B": {"b": 0, "c": 0, "p_holm": 1.0}}

    return {"settings": base, "float": {"accuracy": {"A": 98.0, "B": 96.0}, "avg": 97.0, "std": 1.0, "ser": 4.0},
            "ptq": model(*ptq), "kd": model(*kd),
            "paired": {"ptq-vs-float": {"groups": groups(disc[0])}, "kd-vs-float": {"groups": groups(disc[1])}}}


def _write(tmp_path, runs) -> list[str]:
    paths = []
    for i, r in enumerate(runs):
        p = tmp_path / f"s{i}.json"
        p.write_text(json.dumps(r))
        paths.append(str(p))
    return paths


def test_sign_test_matches_hand_computed_binomial(kd_acceptance):
    assert kd_acceptance._sign_test(6, 6) == pytest.approx(2 / 64)          # 2 * P(X <= 0), X ~ Bin(6, 1/2)
    assert kd_acceptance._sign_test(4, 5) == pytest.approx(2 * 6 / 32)      # 2 * P(X <= 1), X ~ Bin(5, 1/2)
    assert kd_acceptance._sign_test(1, 2) == 1.0
    assert kd_acceptance._sign_test(0, 0) == 1.0


def test_aggregate_gaps_and_standard_error(kd_acceptance, tmp_path, capsys):
    # float AVG 97, SER 4.  |AVG gaps| PTQ: 0.4, 0.2, 0.3; KD: 0.1, 0.3, 0.1 -> reductions 0.3, -0.1, 0.2
    runs = [_run(0, (96.6, 5.0), (96.9, 4.5), (10, 4)),
            _run(1, (96.8, 3.0), (96.7, 3.5), (8, 9)),
            _run(2, (97.3, 4.0), (97.1, 4.2), (7, 5))]
    out = kd_acceptance.aggregate(_write(tmp_path, runs))
    s = out["summary"]["avg"]
    assert s["mean_gap_ptq"] == pytest.approx(0.3)
    assert s["mean_gap_kd"] == pytest.approx(0.5 / 3)
    assert s["mean_reduction"] == pytest.approx(0.4 / 3)
    # sample SD of (0.3, -0.1, 0.2): mean 2/15; deviations 5/30, -7/30, 2/30 -> var = (25+49+4)/900/2
    assert s["se"] == pytest.approx(((78 / 900) / 2) ** 0.5 / 3 ** 0.5)
    assert s["kd_closer_in"] == 2 and s["runs"] == 3
    ser = out["summary"]["ser"]  # |SER gaps| PTQ 1, 1, 0; KD 0.5, 0.5, 0.2 -> KD closer in 2 of 3
    assert ser["mean_reduction"] == pytest.approx((0.5 + 0.5 - 0.2) / 3)
    assert ser["kd_closer_in"] == 2
    d = out["summary"]["discordant"]
    assert d["mean_ptq"] == pytest.approx(25 / 3) and d["mean_kd"] == pytest.approx(6.0) and d["kd_fewer_in"] == 2
    assert out["mean_over_runs"]["kd"]["avg"] == pytest.approx((96.9 + 96.7 + 97.1) / 3)
    assert "Mean over 3 runs" in capsys.readouterr().out


def test_aggregate_refuses_runs_with_other_settings(kd_acceptance, tmp_path):
    runs = [_run(0, (96.6, 5.0), (96.9, 4.5), (1, 1)), _run(1, (96.8, 3.0), (96.7, 3.5), (1, 1), bits=8)]
    paths = _write(tmp_path, runs)
    with pytest.raises(SystemExit, match=r"s1\.json: settings differ .*\['bits'\]"):
        kd_acceptance.aggregate(paths)
    runs = [_run(0, (96.6, 5.0), (96.9, 4.5), (1, 1)), _run(1, (96.8, 3.0), (96.7, 3.5), (1, 1))]
    runs[0]["kd_train"], runs[1]["kd_train"] = {"lr": 0.02}, {"lr": 0.01}  # the KD lr is recorded apart
    with pytest.raises(SystemExit, match=r"s1\.json: settings differ .*lr \(0\.01 vs 0\.02\)"):
        kd_acceptance.aggregate(_write(tmp_path, runs))


def test_aggregate_writes_its_result_atomically(bench_train, tmp_path, monkeypatch):
    runs = [_run(s, (96.8, 5.0), (96.9, 4.5), (5, 3)) for s in range(2)]
    out = tmp_path / "agg" / "pooled.json"
    monkeypatch.setattr("sys.argv", ["bench_train.py", "--aggregate", *_write(tmp_path, runs), "--out", str(out)])
    bench_train.main()
    pooled = json.loads(out.read_text())
    assert pooled["summary"]["avg"]["runs"] == 2 and pooled["summary"]["avg"]["mean_gap_kd"] == pytest.approx(0.1)
    assert [p.name for p in out.parent.iterdir()] == ["pooled.json"]  # no temporary file left beside it


def test_aggregate_names_a_file_that_is_not_a_result(kd_acceptance, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"settings": {}}')
    with pytest.raises(SystemExit, match=r"bad\.json: not an acceptance result"):
        kd_acceptance.aggregate([str(bad)])
    with pytest.raises(SystemExit, match=r"missing\.json: cannot read"):
        kd_acceptance.aggregate([str(tmp_path / "missing.json")])


def test_aggregate_sign_test_drops_ties_and_reads_score_drift(kd_acceptance, tmp_path):
    runs = [_run(s, (96.8, 5.0), kd, (5, 3)) for s, kd in enumerate([(96.8, 4.5), (96.9, 4.5), (96.9, 4.5)])]
    for r, (p, k) in zip(runs, [(0.03, 0.02), (0.04, 0.01), (0.02, 0.03)]):
        r["ptq"]["score_drift"] = {"A": p, "B": p}
        r["kd"]["score_drift"] = {"A": k, "B": k}
    out = kd_acceptance.aggregate(_write(tmp_path, runs))
    avg = out["summary"]["avg"]  # gaps PTQ 0.2 each; KD 0.2 (tie), 0.1, 0.1 -> 2 wins of 2 untied runs
    assert avg["kd_closer_in"] == 2 and avg["sign_test_p"] == pytest.approx(kd_acceptance._sign_test(2, 2))
    drift = out["summary"]["score_drift"]
    assert drift["mean_ptq"] == pytest.approx(0.03) and drift["mean_kd"] == pytest.approx(0.02)
    assert drift["kd_lower_in"] == 2 and drift["runs"] == 3
    assert out["mean_over_runs"]["ptq"]["score_drift"] == pytest.approx({"A": 0.03, "B": 0.03})


def test_aggregate_refuses_runs_with_other_range_steps(kd_acceptance, tmp_path):
    runs = [_run(0, (96.6, 5.0), (96.9, 4.5), (1, 1), range_steps=0),
            _run(1, (96.8, 3.0), (96.7, 3.5), (1, 1), range_steps=200)]
    with pytest.raises(SystemExit, match=r"s1\.json: settings differ .*\['range_steps'\]"):
        kd_acceptance.aggregate(_write(tmp_path, runs))


def test_acceptance_records_what_it_ran_and_pools(kd_acceptance, tmp_path):
    """A tiny end-to-end acceptance run (demo model, 2 KD steps) records the resolved lr and range steps."""
    ckpt = Path(__file__).resolve().parents[2] / "qfair" / "assets" / "demo_mobilefacenet.pt"
    out = kd_acceptance.acceptance(str(ckpt), "mobilefacenet", bits=6, steps=2, batch=8, bench="builtin:20",
                                   n_train=32, seed=0, flip=False, cache=str(tmp_path / "cache"))
    s = out["settings"]
    assert s["lr"] == pytest.approx(0.1 * 8 / 512) and s["range_steps"] == 1  # the defaults, resolved
    assert out["kd_train"]["steps"] == 2 and out["kd_train"]["lr"] == s["lr"]
    assert set(out["ptq"]["score_drift"]) == set(out["float"]["accuracy"])
    other = json.loads(json.dumps(out))
    other["settings"]["seed"] = 1
    pooled = kd_acceptance.aggregate(_write(tmp_path, [out, other]))
    assert pooled["summary"]["avg"]["runs"] == 2 and pooled["settings"]["range_steps"] == 1
    # the group-blind null of PTQ and KD against float, recorded per run and pooled
    for name in ("ptq", "kd"):
        n = out["null"][name]
        assert n["n_draws"] == 200 and n["metrics"]["avg"]["observed"] == pytest.approx(out[name]["avg"])
        pooled_null = pooled["summary"]["null"][name]
        assert pooled_null["avg"]["excess"] == pytest.approx(n["metrics"]["avg"]["observed"]
                                                             - n["metrics"]["avg"]["expected"])
        assert set(pooled_null["excess_error_pp"]) == set(out["float"]["accuracy"])
    other["settings"]["range_steps"] = 0
    with pytest.raises(SystemExit, match=r"\['range_steps'\]"):
        kd_acceptance.aggregate(_write(tmp_path, [out, other]))


def _null(run: dict, name: str, ser_expected: float) -> dict:
    """A recorded group-blind null for ``run[name]`` whose expected SER is ``ser_expected``."""
    m = run[name]
    metrics = {k: {"observed": m[k], "expected": m[k] if k != "ser" else ser_expected} for k in ("avg", "std", "ser")}
    return {"metrics": metrics, "per_group": {g: {"excess_error_pp": 0.0} for g in m["accuracy"]}}


def test_aggregate_pools_the_reduction_the_null_expects(kd_acceptance, tmp_path, capsys):
    # float SER 4. Expected SER under the null, PTQ / KD: 3.5 / 3.8, 3.9 / 3.6, 3.0 / 3.5
    # -> |expected - float| PTQ 0.5, 0.1, 1.0; KD 0.2, 0.4, 0.5 -> reductions 0.3, -0.3, 0.5
    runs = [_run(s, (96.8, 5.0), (96.9, 4.5), (5, 3)) for s in range(3)]
    for r, (p, k) in zip(runs, [(3.5, 3.8), (3.9, 3.6), (3.0, 3.5)]):
        r["null"] = {"ptq": _null(r, "ptq", p), "kd": _null(r, "kd", k)}
    out = kd_acceptance.aggregate(_write(tmp_path, runs))
    e = out["summary"]["null"]["ser_expected_reduction"]
    assert e["mean"] == pytest.approx(0.5 / 3)
    # deviations from 1/6: 2/15, -7/15, 1/3 -> sample variance (4 + 49 + 25) / 225 / 2
    assert e["se"] == pytest.approx((78 / 225 / 2) ** 0.5 / 3 ** 0.5)
    assert out["summary"]["null"]["avg_expected_reduction"]["mean"] == pytest.approx(0.1)  # |96.8-97| - |96.9-97|
    assert "expected from the amounts of change alone (KD vs PTQ): +0.167" in capsys.readouterr().out
