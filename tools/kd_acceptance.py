"""Acceptance experiment of KD fine-tuning (issue 7): float model vs 6-bit PTQ vs 6-bit PTQ + KD fine-tuning,
per group on the built-in benchmark (``qfair.train.kd_finetune`` with the reference lr rule 0.1 x batch / 512).

Run through ``tools/bench_train.py --acceptance CKPT ...`` / ``--aggregate JSON ...`` (its flags)::

    OMP_NUM_THREADS=2 python tools/bench_train.py --acceptance CHECKPOINT --kd-steps 200 --bench builtin

One run is one draw of calibration images, KD data and order (``--seed``). Pool several with
``--aggregate run0.json run1.json ...``: per seed and averaged over seeds, how far PTQ and PTQ + KD are from
the float model (|AVG - float|, |SER - float|, pairs whose decision differs from float's), with the
standard error over seeds and an exact sign test.
"""
from __future__ import annotations

import json
import tempfile
import time

import numpy as np
import torch


def _calibration(kind: str, model, seed: int, n: int = 256) -> list:
    """Calibration batches: ``real`` (unseen renders of the training distribution), ``synthetic`` (the
    generated-face domain) or ``data-free`` (synthesised from the model's BatchNorm statistics)."""
    from qfair.data.builtin import make_synthetic_domain, make_train
    from qfair.train.batches import to_model_input

    if kind == "real":
        imgs = make_train(seed=seed + 101, n_ids=max(4, n // 8), imgs_per_id=8).images[:n]
    elif kind == "synthetic":
        imgs = make_synthetic_domain(n, seed=seed + 202)
    elif kind == "data-free":
        from qfair.data import calibration_batches

        return [b if isinstance(b, torch.Tensor) else b[0]
                for b in calibration_batches("synthetic", min(n, 64), 32, model=model, seed=seed)]
    else:
        raise SystemExit(f"--calib must be real, synthetic or data-free, got {kind}")
    return [to_model_input(imgs[i:i + 32]) for i in range(0, len(imgs), 32)]


def acceptance(ckpt: str, arch: str | None, bits: int, steps: int, batch: int, bench: str, n_train: int,
               seed: int, freeze_bn: bool = False, calib: str = "real", kd_data: str = "builtin",
               lr: float | None = None, flip: bool = True, range_steps: int | None = None,
               fair_kd: bool = False, cache: str | None = None, weight_decay: float = 0.0,
               schedule: str = "constant") -> dict:
    """Evaluate float, PTQ and PTQ + KD fine-tuning per group; returns {variant: summary}."""
    from qfair.data import open_benchmark
    from qfair.eval import embed, evaluate
    from qfair.models import load_model
    from qfair.quant import QuantConfig, quantize
    from qfair.train import kd_finetune
    from qfair.train.data import build_source
    from qfair.train.evaluation import summarize
    from qfair.train.optim import scaled_lr

    t0 = time.perf_counter()
    teacher = load_model(ckpt, arch).eval()
    vset = open_benchmark(bench)
    lr = lr if lr is not None else scaled_lr(0.1, batch)  # the reference rule: 0.1 at a total batch of 512
    range_steps = range_steps if range_steps is not None else max(1, steps // 4)
    out: dict = {"settings": {"checkpoint": ckpt, "seed": seed, "bits": bits, "calib": calib, "kd_data": kd_data,
                              "kd_steps": steps, "batch": batch, "n_train": n_train, "bench": bench,
                              "freeze_bn": freeze_bn, "flip": flip, "fair_kd": fair_kd,
                              "weight_decay": weight_decay, "schedule": schedule, "lr": lr,
                              "range_steps": range_steps}}
    cache = cache or tempfile.mkdtemp(prefix="qfair-accept-")  # embeddings keyed by model + benchmark
    embs = {}

    results = {}

    def ev(name, model):
        results[name] = evaluate(model, vset, n_bootstrap=0, cache_dir=cache, flip=flip)
        out[name] = summarize(results[name])
        embs[name] = embed(model, vset, cache_dir=cache, flip=flip)  # read back from the cache just written
        if "float" in embs and name != "float":  # per-group agreement with the float model's embeddings
            out[name]["cos_to_float"] = {}
            for g in sorted(set(vset.groups.tolist())):
                idx = np.unique(vset.pairs[vset.groups == g].reshape(-1))
                cos = (embs["float"][idx] * embs[name][idx]).sum(1)
                out[name]["cos_to_float"][g] = float(cos.mean())
            fp, mp = results["float"].pairs, results[name].pairs
            if fp is not None and mp is not None:  # pair scores: how far each pair moved from the float score
                drift = np.abs(mp.score - fp.score)
                out[name]["score_drift"] = {str(g): float(drift[fp.groups == g].mean())
                                            for g in sorted(set(fp.groups.tolist()))}
        print(f"{name:10s} {json.dumps(out[name])}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    ev("float", teacher)
    ptq = quantize(teacher, QuantConfig(bits=bits, seed=seed), _calibration(calib, teacher, seed))
    ev("ptq", ptq)
    source = build_source(kd_data, n_train, batch, seed=seed + 303, model=teacher)
    res = kd_finetune(ptq, teacher, source, steps=steps, lr=lr, batch_size=batch, seed=seed,
                      range_update_steps=range_steps,
                      log_every=10, freeze_bn=freeze_bn, fair_kd=fair_kd, weight_decay=weight_decay,
                      schedule=schedule)
    ev("kd", ptq)
    out["kd_train"] = {"steps": res.steps, "lr": lr, "final_kd": res.loss, "images_per_s": res.images_per_s,
                       "first_kd": res.history[0]["loss"] if res.history else None,
                       "curve": [(h.get("step"), h.get("loss")) for h in res.history]}
    _print_acceptance(out, vset)
    _paired(out, results)
    return out


def _paired(out: dict, results: dict, n_bootstrap: int = 1000, null_draws: int = 200) -> None:
    """Paired comparisons against the float model (and KD against PTQ): per-group McNemar (Holm),
    identity-bootstrap 95 % intervals of the AVG / STD / SER changes, and for PTQ and KD the group-blind
    null (qfair.eval.null): the SER etc. that their amount of score change, blind to the group, gives."""
    from qfair.eval import compare_pair

    out["paired"], out["null"] = {}, {}
    for ref, other in (("float", "ptq"), ("float", "kd"), ("ptq", "kd")):
        c = compare_pair(results[ref], results[other], n_bootstrap=n_bootstrap, seed=0,
                         null_draws=null_draws if ref == "float" else 0)
        d = {k: {"delta": v["delta"], "ci": v.get("delta_ci")} for k, v in c.deltas.items()}
        g = {k: {"b": v["b"], "c": v["c"], "p_holm": v["p_holm"]} for k, v in c.per_group.items()}
        out["paired"][f"{other}-vs-{ref}"] = {"deltas": d, "groups": g}
        print(f"{other} - {ref}: " + ", ".join(
            f"{k.upper()} {v['delta']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" for k, v in d.items()
            if k in ("avg", "std", "ser")) + " | McNemar p_holm " +
            ", ".join(f"{k} {v['p_holm']:.3g}" for k, v in g.items()), flush=True)
        if c.null is not None:  # what group-blind change of this size would do to the float model
            out["null"][other] = c.null
            m = c.null["metrics"]
            print(f"  group-blind null ({c.null['n_draws']} draws): " + ", ".join(
                f"{k.upper()} {m[k]['observed']:.3f} vs expected {m[k]['expected']:.3f} "
                f"[{m[k]['interval'][0]:.3f}, {m[k]['interval'][1]:.3f}] p {m[k]['p']:.2g}" for k in m)
                + " | excess error pp " + ", ".join(
                f"{gname} {v['excess_error_pp']:+.3f}" for gname, v in c.null["per_group"].items()), flush=True)


def _print_acceptance(out: dict, vset) -> None:
    groups = list(out["float"]["accuracy"])
    print("\n| model | " + " | ".join(groups) + " | AVG | STD | SER | cos to float |")
    print("|---|" + "---:|" * (len(groups) + 4))
    for name in ("float", "ptq", "kd"):
        r = out[name]
        cos = np.mean(list(r["cos_to_float"].values())) if "cos_to_float" in r else 1.0
        print(f"| {name} | " + " | ".join(f"{r['accuracy'][g]:.2f}" for g in groups)
              + f" | {r['avg']:.2f} | {r['std']:.2f} | {r['ser']:.2f} | {cos:.5f} |")
    f, p, k = out["float"], out["ptq"], out["kd"]
    verdict = {m: abs(k[m] - f[m]) < abs(p[m] - f[m]) for m in ("avg", "ser", "std")}
    out["closer_to_float"] = verdict
    print(f"\nKD closer to float than PTQ: {verdict} ({len(vset.issame)} pairs)")


def _sign_test(wins: int, n: int) -> float:
    """Two-sided exact binomial sign test of ``wins`` successes in ``n`` trials at p = 1/2."""
    from math import comb

    k = min(wins, n - wins)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def aggregate(paths: list[str]) -> dict:
    """Pool acceptance runs (JSON from ``--acceptance --out``) that differ only in their seed."""
    runs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: cannot read an acceptance result ({e}); pass files written by "
                             f"--acceptance ... --out") from None
        missing = [k for k in ("settings", "float", "ptq", "kd", "paired") if k not in d]
        if missing:
            raise SystemExit(f"{path}: not an acceptance result, keys {missing} are missing")
        runs.append((path, d))
    ref = {k: v for k, v in runs[0][1]["settings"].items() if k != "seed"}
    for path, d in runs[1:]:
        diff = sorted(k for k in set(ref) | set(d["settings"]) if k != "seed"
                      and ref.get(k) != d["settings"].get(k))
        if "lr" not in ref and "lr" not in d["settings"]:  # older runs keep their lr in kd_train only
            lr0, lr = runs[0][1].get("kd_train", {}).get("lr"), d.get("kd_train", {}).get("lr")
            if lr != lr0:
                diff.append(f"lr ({lr} vs {lr0})")
        if diff:
            raise SystemExit(f"{path}: settings differ from {runs[0][0]} in {diff}; pool only runs that differ "
                             f"in their seed")
    f0 = runs[0][1]["float"]
    for path, d in runs[1:]:
        if d["float"]["accuracy"] != f0["accuracy"]:
            raise SystemExit(f"{path}: the float model scores differently from {runs[0][0]}; pool runs of one "
                             f"checkpoint on one benchmark")

    def discordant(d: dict, name: str) -> int:  # pairs whose decision differs from the float model's
        return sum(g["b"] + g["c"] for g in d["paired"][f"{name}-vs-float"]["groups"].values())

    rows = []
    for path, d in runs:
        f, p, k = d["float"], d["ptq"], d["kd"]
        rows.append({"run": path, "seed": d["settings"].get("seed"),
                     "ptq_avg": p["avg"], "kd_avg": k["avg"], "ptq_ser": p["ser"], "kd_ser": k["ser"],
                     "gap_avg_ptq": abs(p["avg"] - f["avg"]), "gap_avg_kd": abs(k["avg"] - f["avg"]),
                     "gap_ser_ptq": abs(p["ser"] - f["ser"]), "gap_ser_kd": abs(k["ser"] - f["ser"]),
                     "disc_ptq": discordant(d, "ptq"), "disc_kd": discordant(d, "kd"),
                     "cos_ptq": float(np.mean(list(p["cos_to_float"].values()))),
                     "cos_kd": float(np.mean(list(k["cos_to_float"].values())))})
    n = len(rows)
    summary = {}
    for m in ("avg", "ser"):
        diff = np.array([r[f"gap_{m}_ptq"] - r[f"gap_{m}_kd"] for r in rows])  # > 0: KD closer to float
        wins, losses = int((diff > 0).sum()), int((diff < 0).sum())  # ties drop out of the sign test
        summary[m] = {"mean_gap_ptq": float(np.mean([r[f"gap_{m}_ptq"] for r in rows])),
                      "mean_gap_kd": float(np.mean([r[f"gap_{m}_kd"] for r in rows])),
                      "mean_reduction": float(diff.mean()),
                      "se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                      "kd_closer_in": wins, "runs": n, "sign_test_p": _sign_test(wins, wins + losses)}
    if all("score_drift" in d["ptq"] and "score_drift" in d["kd"] for _, d in runs):
        for r, (_, d) in zip(rows, runs):  # mean over groups of the mean |score - float score| per pair
            r["drift_ptq"] = float(np.mean(list(d["ptq"]["score_drift"].values())))
            r["drift_kd"] = float(np.mean(list(d["kd"]["score_drift"].values())))
        wins = sum(r["drift_kd"] < r["drift_ptq"] for r in rows)
        losses = sum(r["drift_kd"] > r["drift_ptq"] for r in rows)
        summary["score_drift"] = {"mean_ptq": float(np.mean([r["drift_ptq"] for r in rows])),
                                  "mean_kd": float(np.mean([r["drift_kd"] for r in rows])),
                                  "kd_lower_in": int(wins), "runs": n,
                                  "sign_test_p": _sign_test(int(wins), int(wins + losses))}
    disc = np.array([r["disc_ptq"] - r["disc_kd"] for r in rows])
    summary["discordant"] = {"mean_ptq": float(np.mean([r["disc_ptq"] for r in rows])),
                             "mean_kd": float(np.mean([r["disc_kd"] for r in rows])),
                             "kd_fewer_in": int((disc > 0).sum()), "runs": n,
                             "sign_test_p": _sign_test(int((disc > 0).sum()), int((disc != 0).sum()))}
    groups = list(f0["accuracy"])
    per_group = {name: {g: float(np.mean([d[name]["accuracy"][g] for _, d in runs])) for g in groups}
                 for name in ("ptq", "kd")}
    per_group["float"] = dict(f0["accuracy"])
    for name in ("float", "ptq", "kd"):
        per_group[name] = {"accuracy": per_group[name],
                           "avg": float(np.mean([d[name]["avg"] for _, d in runs])),
                           "ser": float(np.mean([d[name]["ser"] for _, d in runs])),
                           "std": float(np.mean([d[name]["std"] for _, d in runs]))}
    if "score_drift" in summary:  # per group: where the quantization moved the pair scores most
        for name in ("ptq", "kd"):
            per_group[name]["score_drift"] = {g: float(np.mean([d[name]["score_drift"][g] for _, d in runs]))
                                              for g in groups}
    if all(d.get("null", {}).keys() >= {"ptq", "kd"} for _, d in runs):
        # the SER etc. that each model's amount of score change would give, blind to the group
        summary["null"] = {}
        for name in ("ptq", "kd"):
            nulls = [d["null"][name] for _, d in runs]
            summary["null"][name] = {
                k: {"observed": float(np.mean([x["metrics"][k]["observed"] for x in nulls])),
                    "expected": float(np.mean([x["metrics"][k]["expected"] for x in nulls])),
                    "excess": float(np.mean([x["metrics"][k]["observed"] - x["metrics"][k]["expected"]
                                             for x in nulls]))} for k in ("avg", "std", "ser")}
            summary["null"][name]["excess_error_pp"] = {
                g: float(np.mean([x["per_group"][g]["excess_error_pp"] for x in nulls])) for g in groups}
        # what KD's smaller (or larger) change alone predicts: |expected - float| PTQ minus KD, per run
        # (> 0: KD expected closer to float); compare with the observed reduction in summary[metric]
        for k in ("avg", "std", "ser"):
            e = np.array([abs(d["null"]["ptq"]["metrics"][k]["expected"] - d["float"][k])
                          - abs(d["null"]["kd"]["metrics"][k]["expected"] - d["float"][k]) for _, d in runs])
            summary["null"][f"{k}_expected_reduction"] = {
                "mean": float(e.mean()), "se": float(e.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")}
    out = {"settings": ref, "runs": rows, "summary": summary, "mean_over_runs": per_group}
    print("| run | seed | PTQ AVG | KD AVG | PTQ SER | KD SER | pairs off float PTQ / KD | cos PTQ / KD |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['seed']} | {r['ptq_avg']:.3f} | {r['kd_avg']:.3f} | {r['ptq_ser']:.2f} | "
              f"{r['kd_ser']:.2f} | {r['disc_ptq']} / {r['disc_kd']} | {r['cos_ptq']:.5f} / {r['cos_kd']:.5f} |")
    print(f"\nfloat: AVG {f0['avg']:.3f}, SER {f0['ser']:.2f}. Mean over {n} runs (per group):")
    print("| model | " + " | ".join(groups) + " | AVG | STD | SER |")
    print("|---|" + "---:|" * (len(groups) + 3))
    for name in ("float", "ptq", "kd"):
        r = per_group[name]
        print(f"| {name} | " + " | ".join(f"{r['accuracy'][g]:.2f}" for g in groups)
              + f" | {r['avg']:.3f} | {r['std']:.2f} | {r['ser']:.2f} |")
    for m in ("avg", "ser"):
        s = summary[m]
        print(f"|{m.upper()} - float|: PTQ {s['mean_gap_ptq']:.3f}, KD {s['mean_gap_kd']:.3f}; reduction "
              f"{s['mean_reduction']:+.3f} +- {s['se']:.3f} (SE); KD closer in {s['kd_closer_in']}/{n} runs, "
              f"sign test p {s['sign_test_p']:.3g}")
    s = summary["discordant"]
    print(f"pairs decided differently from float: PTQ {s['mean_ptq']:.1f}, KD {s['mean_kd']:.1f}; KD fewer in "
          f"{s['kd_fewer_in']}/{n} runs, sign test p {s['sign_test_p']:.3g}")
    if "score_drift" in summary:
        s = summary["score_drift"]
        print(f"mean |pair score - float score|: PTQ {s['mean_ptq']:.5f}, KD {s['mean_kd']:.5f}; KD lower in "
              f"{s['kd_lower_in']}/{n} runs, sign test p {s['sign_test_p']:.3g}")
        for name in ("ptq", "kd"):
            print(f"  {name} per group: " + ", ".join(f"{g} {v:.5f}" for g, v in
                                                     per_group[name]["score_drift"].items()))
    if "null" in summary:
        print(f"group-blind null: the SER the float model gets from each model's amount of score change, blind "
              f"to the group (float SER {f0['ser']:.2f}):")
        for name in ("ptq", "kd"):
            s = summary["null"][name]
            print(f"  {name}: SER observed {s['ser']['observed']:.2f}, expected {s['ser']['expected']:.2f}, excess "
                  f"{s['ser']['excess']:+.2f}; excess error pp " + ", ".join(
                      f"{g} {v:+.3f}" for g, v in s["excess_error_pp"].items()))
        s = summary["null"]["ser_expected_reduction"]
        print(f"  |SER - float| reduction expected from the amounts of change alone (KD vs PTQ): "
              f"{s['mean']:+.3f} +- {s['se']:.3f} (SE); observed {summary['ser']['mean_reduction']:+.3f}")
    return out
