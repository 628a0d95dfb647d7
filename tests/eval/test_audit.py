"""Regression tests from an audit of `qfair evaluate` / `qfair compare` and their reports."""
import json

import numpy as np
import pytest

from qfair.eval import compare, compare_pair, embed, evaluate_arrays, kfold_predictions
from qfair.eval.metrics import with_threshold
from qfair.report import build_tables, write_report
from qfair.utils.errors import DataError

from .conftest import TinyNet, make_pairs, make_vset


def _strict_json(text):
    """json.loads that refuses the bare NaN / Infinity tokens Python would otherwise accept."""
    def bad(token):
        raise ValueError(f"bare {token} in JSON")
    return json.loads(text, parse_constant=bad)


# --- k-fold accuracy against a brute-force search --------------------------------------------------
def _brute_force(d, same, folds, mode):
    """Literal threshold search: every candidate threshold, best train accuracy, ties to the smallest."""
    correct = np.zeros(len(d), bool)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        if mode == "grid":
            cands = np.arange(0, 4, 0.01)
        else:
            u = np.unique(d[tr])
            cands = np.concatenate(([u[0]], u[:-1] + (u[1:] - u[:-1]) / 2, [np.nextafter(u[-1], np.inf)]))
        accs = [np.count_nonzero((d[tr] < t) == same[tr]) for t in cands]
        t = cands[int(np.argmax(accs))]
        correct[te] = (d[te] < t) == same[te]
    return correct


@pytest.mark.parametrize("mode", ["exact", "grid"])
def test_kfold_matches_brute_force_with_ties_and_unbalanced_labels(mode):
    rng = np.random.default_rng(3)
    n = 97  # uneven folds
    same = rng.random(n) < 0.25  # unbalanced: about 1 genuine pair in 4
    d = np.where(same, rng.normal(0.9, 0.3, n), rng.normal(1.4, 0.3, n))
    d = np.clip(np.round(d, 1), 0, 4)  # many ties
    folds = np.repeat(np.arange(10), [10] * 7 + [9] * 3)
    ok, _, acc = kfold_predictions(d, same, folds, mode)
    np.testing.assert_array_equal(ok, _brute_force(d, same, folds, mode))
    assert acc == pytest.approx([ok[folds == f].mean() for f in range(10)])


# --- edge cases of the fairness summary ----------------------------------------------------------
def _two_groups(perfect_a=True, n=40, seed=0):
    rng = np.random.default_rng(seed)
    s = np.arange(n) % 2 == 0
    da = np.where(s, 0.5, 1.5) + rng.normal(0, 0.01, n) if perfect_a else np.where(s, 0.9, 1.3) + rng.normal(0, 0.3, n)
    db = np.where(s, 0.9, 1.3) + rng.normal(0, 0.3, n)
    return np.concatenate([da, db]), np.concatenate([s, s]), np.array(["A"] * n + ["B"] * n)


def test_all_correct_group_gives_inf_ser_and_valid_outputs(tmp_path):
    d, s, g = _two_groups()
    r = evaluate_arrays(d, s, g, n_bootstrap=50, name="ref")
    r2 = evaluate_arrays(d + np.random.default_rng(1).normal(0, 0.05, len(d)), s, g, n_bootstrap=50, name="q")
    assert r.per_group["A"]["accuracy"] == 100.0 and r.fairness.ser == np.inf
    c = compare_pair(r, r2, null_draws=5)
    write_report(tmp_path, [r, r2], [c], figures=False)
    doc = _strict_json((tmp_path / "metrics.json").read_text())
    assert doc["results"][0]["fairness"]["ser"] == "inf"
    md = (tmp_path / "report.md").read_text()
    assert "nan" not in md.lower().replace("nan ", "")  # undefined p-values / SER are shown as '-', not 'nan'
    assert "p nan" not in " ".join(build_tables([r, r2], [c])[0].notes)
    assert "inf" in (tmp_path / "results.csv").read_text() and "inf" in (tmp_path / "tables.tex").read_text()


def test_single_group_benchmark():
    d, s, g = _two_groups(perfect_a=False)
    r = evaluate_arrays(d[g == "A"], s[g == "A"], g[g == "A"], n_bootstrap=20)
    assert r.groups == ["A"] and np.isnan(r.fairness.std) and r.fairness.ser == 1.0
    assert any("STD undefined" in n for n in r.notes)
    assert r.overall["accuracy"] == r.per_group["A"]["accuracy"]


def test_group_with_one_pair_is_named():
    d, s, g = _two_groups(perfect_a=False)
    g = g.astype(object)
    g[0] = "Lonely"
    with pytest.raises(DataError, match="group 'Lonely' has 1 pair"):
        evaluate_arrays(d, s, g, n_bootstrap=0)


def test_garbe_undefined_is_explained():
    d, s, g = _two_groups(perfect_a=False)
    r = evaluate_arrays(d, s, g, n_bootstrap=0, target_fmr=1e-6)  # no impostor accepted anywhere: FMR all 0
    assert all(r.per_group[k]["fmr"] == 0 for k in r.groups) and np.isnan(r.rate_fairness["garbe"])
    assert any(n.startswith("GARBE undefined: every group has FMR 0") for n in r.notes)


def test_settings_say_where_folds_come_from():
    d, s, g = _two_groups(perfect_a=False)
    own = evaluate_arrays(d, s, g, n_bootstrap=0, folds=np.arange(len(d)) % 5)
    cont = evaluate_arrays(d, s, g, n_bootstrap=0)
    assert own.settings["folds"] == "the benchmark's own"
    assert cont.settings["folds"] == "10 contiguous per group"


# --- compare ---------------------------------------------------------------------------------------
def test_compare_refuses_results_sharing_a_name():
    d, s, g, ids = make_pairs(per_group=100)
    a = evaluate_arrays(d, s, g, pair_ids=ids, n_bootstrap=0, name="Sequential")
    b = evaluate_arrays(d + 0.01, s, g, pair_ids=ids, n_bootstrap=0, name="Sequential")
    with pytest.raises(DataError, match="several results are named 'Sequential'"):
        compare(a, b, null_draws=0)
    with pytest.raises(DataError, match="reference index 5 is out of range"):
        compare(a, evaluate_arrays(d, s, g, n_bootstrap=0, name="other"), reference=5, null_draws=0)


def test_with_threshold_equals_evaluating_at_that_threshold():
    d, s, g, ids = make_pairs(per_group=100)
    r = evaluate_arrays(d, s, g, pair_ids=ids, n_bootstrap=30, name="m", groups_wanted=["Asian", "Indian"])
    again = with_threshold(r, 0.3)
    direct = evaluate_arrays(d, s, g, pair_ids=ids, n_bootstrap=30, name="m", threshold=0.3,
                             groups_wanted=["Asian", "Indian"])
    assert again.groups == direct.groups == ["Asian", "Indian"]
    assert again.threshold == direct.threshold and again.threshold["source"] == "inherited"
    assert again.per_group == direct.per_group and again.settings == direct.settings


# --- report folder ---------------------------------------------------------------------------------
def test_stale_figures_of_an_earlier_report_are_removed(tmp_path):
    d, s, g = _two_groups(perfect_a=False)
    r = evaluate_arrays(d, s, g, n_bootstrap=0)
    (tmp_path / "figures").mkdir()
    old = tmp_path / "figures" / "accuracy_other-benchmark.png"
    old.write_bytes(b"png")
    mine = tmp_path / "figures" / "my_plot.png"  # not a report figure: kept
    mine.write_bytes(b"png")
    write_report(tmp_path, [r], figures=False)
    assert not old.exists() and mine.exists()


# --- embedding cache -------------------------------------------------------------------------------
def test_cache_sees_an_edited_image_outside_the_sample(tmp_path):
    vset = make_vset(n_images=40, n_pairs=60)
    used = set(np.unique(vset.pairs).tolist())
    sampled = set(np.unique(np.linspace(0, 39, 16).astype(int)).tolist())
    i = min(used - sampled)  # an image the old 16-image sample never looked at
    net = TinyNet.make()
    first = embed(net, vset, flip=False, cache_dir=tmp_path)
    vset.images._images[i] = 255 - vset.images._images[i]
    second = embed(net, vset, flip=False, cache_dir=tmp_path)
    assert not np.allclose(first[i], second[i]), "stale embedding served from the cache"
    np.testing.assert_allclose(second, embed(net, vset, flip=False), atol=1e-6)


def test_cache_sees_an_edited_file_of_a_lazy_store(tmp_path):
    from qfair.data.verification import LazyImageStore
    from qfair.eval import benchmark_fingerprint

    files = []
    for k in range(20):
        p = tmp_path / f"{k}.bin"
        p.write_bytes(bytes([k]))
        files.append(str(p))

    def loader(src, name):
        return np.full((112, 112, 3), open(src, "rb").read()[0], np.uint8)

    vset = make_vset(n_images=20, n_pairs=20)
    vset.images = LazyImageStore(files, files, loader)
    before = benchmark_fingerprint(vset)
    i = min(set(range(20)) - set(np.linspace(0, 19, 16).astype(int).tolist()))  # not among the 16 sampled
    (tmp_path / f"{i}.bin").write_bytes(bytes([99, 1]))
    assert benchmark_fingerprint(vset) != before


# --- targets ---------------------------------------------------------------------------------------
def _qdq_onnx(net, path, quantized=True):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = net[2].weight.detach().numpy().T.astype(np.float32)
    nodes, src = [], "input"
    inits = [numpy_helper.from_array(w, "W")]
    if quantized:
        inits += [numpy_helper.from_array(np.array(1 / 127, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        src = "dq"
    nodes += [helper.make_node("AveragePool", [src], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
              helper.make_node("Flatten", ["p"], ["f"], axis=1),
              helper.make_node("MatMul", ["f", "W"], ["embedding"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_quantized_onnx_without_report_is_not_labelled_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    from qfair.eval.targets import load_target

    net = TinyNet.make()
    _, _, meta = load_target(_qdq_onnx(net, tmp_path / "copied.onnx"))
    assert meta["quantized"] and meta["bits"] == "quantized"
    assert "no export report (copied.export.json)" in meta["target_note"]
    _, _, meta = load_target(_qdq_onnx(net, tmp_path / "float.onnx", quantized=False))
    assert meta["bits"] == "FP32" and "target_note" not in meta
    folder = tmp_path / "run"
    folder.mkdir()
    _qdq_onnx(net, folder / "model.onnx")  # a folder holding only a graph, no quant.json
    _, _, meta = load_target(folder)
    assert meta["bits"] == "quantized"


def test_cli_inherit_threshold_without_reference(tmp_path):
    pytest.importorskip("onnxruntime")
    from qfair.cli import main

    a = _qdq_onnx(TinyNet.make(0), tmp_path / "a.onnx", quantized=False)
    b = _qdq_onnx(TinyNet.make(1), tmp_path / "b.onnx")
    out = tmp_path / "cmp"
    assert main(["compare", str(b), str(a), "--inherit-threshold", "--bench", "builtin:tiny", "--no-flip",
                 "--n-bootstrap", "10", "--null-draws", "0", "--no-figures", "--no-cache", "--out", str(out)]) == 0
    doc = _strict_json((out / "metrics.json").read_text())
    th = {r["name"]: r["threshold"] for r in doc["results"]}
    assert doc["comparisons"][0]["reference"] == "a"  # the float graph
    assert th["b"]["source"] == "inherited" and th["b"]["value"] == th["a"]["value"]
    assert any("no export report" in n for n in doc["results"][1]["notes"] + doc["results"][0]["notes"])


def test_evaluate_in_model_folder_records_command_and_versions(tmp_path):
    pytest.importorskip("onnxruntime")
    import yaml

    from qfair.cli import main

    folder = tmp_path / "run"
    folder.mkdir()
    _qdq_onnx(TinyNet.make(), folder / "model.onnx", quantized=False)
    (folder / "config.yaml").write_text("config: {}\n")
    assert main(["evaluate", str(folder), "--bench", "builtin:tiny", "--no-flip", "--n-bootstrap", "0",
                 "--no-figures", "--no-cache", "--out", str(folder)]) == 0
    doc = yaml.safe_load((folder / "eval_config.yaml").read_text())
    assert {"command", "versions", "config", "seed"} <= set(doc) and doc["config"]["n_bootstrap"] == 0
    assert (folder / "config.yaml").read_text() == "config: {}\n"
