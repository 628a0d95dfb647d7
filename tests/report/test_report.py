"""Tables (Markdown, LaTeX, CSV, rich), the report folder and the figures."""
import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from qfair.eval import compare, evaluate_arrays
from qfair.report import build_tables, to_csv, to_latex, to_markdown, to_rich, write_report
from qfair.report.tables import latex_escape


def _results():
    rng = np.random.default_rng(0)
    groups = np.repeat(["Caucasian", "African"], 400)
    same = np.tile((np.arange(400) // 20) % 2 == 0, 2)
    ids = np.stack([np.char.add(groups, (np.arange(800) % 37).astype(str))] * 2, 1)
    ids[~same, 1] = np.char.add(groups[~same], "x")
    dist = np.where(same, rng.normal(0.9, 0.3, 800), rng.normal(1.7, 0.2, 800)).clip(0, 4)
    dist[(groups == "Caucasian")] = np.where(same[groups == "Caucasian"], 0.2, 1.8)  # no errors -> SER inf
    worse = np.clip(dist + rng.normal(0, 0.4, 800) * (groups == "African"), 0, 4)
    fp = evaluate_arrays(dist, same, groups, pair_ids=ids, name="r50_fp32", benchmark="rfw",
                         meta={"bits": "FP32", "calibration": "-"}, n_bootstrap=100)
    q = evaluate_arrays(worse, same, groups, pair_ids=ids, name="r50_w6", benchmark="rfw",
                        meta={"bits": "W6A6", "calibration": "synthetic", "quantized": True}, n_bootstrap=100)
    return [fp, q], compare(fp, q)


def test_tables_layout_marks_and_formats():
    results, comps = _results()
    (t,) = build_tables(results, comps)
    assert t.columns == ["Model", "Bits", "Calibration", "Caucasian", "African", "AVG", "STD", "SER"]
    cells = t.cells()
    assert cells[0][0] == "r50_fp32 (ref)" and cells[0][-1] == "inf"  # Caucasian made no error
    mark = comps[0].per_group["African"]["mark"]
    assert mark and cells[1][4].endswith(mark)
    md = to_markdown(t)
    assert "| r50\\_fp32 (ref) | FP32 | - | 100.00 |" in md and "\\*" in md
    tex = to_latex(t)
    assert r"r50\_fp32 (ref) & FP32" in tex and "$^{" + mark + "}$" in tex and r"\toprule" in tex
    rows = list(csv.DictReader(io.StringIO(to_csv([t]))))
    assert rows[1]["model"] == "r50_w6" and rows[1]["bits"] == "W6A6" and rows[0]["SER"] == "inf"
    assert float(rows[1]["African"]) == pytest.approx(results[1].per_group["African"]["accuracy"], abs=1e-6)
    assert rows[1]["mark_African"] == mark and rows[0]["reference"] == "1"
    assert to_rich(t).row_count == 2
    assert latex_escape("a_b%&#") == r"a\_b\%\&\#"


def test_write_report_folder(tmp_path):
    pytest.importorskip("matplotlib")
    results, comps = _results()
    written = write_report(tmp_path, results, comps)
    for name in ("report.md", "metrics.json", "results.csv", "tables.tex"):
        assert (tmp_path / name).is_file()
    for key in ("accuracy_rfw", "det_rfw", "tradeoff_rfw"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["results"][0]["fairness"]["ser"] == "inf"
    assert doc["comparisons"][0]["other"] == "r50_w6"
    md = (tmp_path / "report.md").read_text()
    assert "SER is infinite" in md and "rule of three" in md and "![det](figures/det_rfw.png)" in md
    assert math.isinf(results[0].fairness.ser)


def test_tradeoff_figure_draws_an_interval_that_excludes_the_point(tmp_path):
    # a percentile bootstrap interval of STD can lie wholly above the estimate (STD is biased);
    # matplotlib refuses negative error bars, which used to crash evaluate, compare and study
    pytest.importorskip("matplotlib")
    from qfair.report.figures import tradeoff_figure

    results, _ = _results()
    r = results[1]
    r.fairness_ci["std"] = [r.fairness.std + 0.03, r.fairness.std + 15.0]
    assert tradeoff_figure(results, tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_name_preface_and_reports_in(tmp_path):
    from qfair.report import reports_in

    results, comps = _results()
    written = write_report(tmp_path, results, comps, figures=False, report_name="eval_report.md",
                           preface="SYNTHETIC numbers")
    assert written["report.md"] == tmp_path / "eval_report.md" and not (tmp_path / "report.md").exists()
    lines = (tmp_path / "eval_report.md").read_text().splitlines()
    assert lines[:4] == ["# qfair evaluation", "", "> **SYNTHETIC numbers**", ""]
    (tmp_path / "notes.md").write_text("mine")
    assert [p.name for p in reports_in(tmp_path, "eval_report.md")] == [
        "eval_report.md", "metrics.json", "results.csv", "tables.tex"]


def test_imports_stay_cheap_and_eval_never_imports_train():
    code = ("import sys, qfair.eval, qfair.report, qfair.cli.evaluate, qfair.cli.compare\n"
            "bad = [m for m in ('torch', 'onnxruntime', 'onnx', 'matplotlib', 'qfair.train') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    code2 = ("import sys, numpy as np, torch\nfrom qfair.eval import evaluate\n"
             "from tests.eval.conftest import make_vset, TinyNet\n"
             "evaluate(TinyNet.make(), make_vset(n_pairs=40), n_bootstrap=10)\n"
             "assert 'qfair.train' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code2], check=True)


def test_numeric_bits_and_calibration_render():
    """meta={"bits": 8} is accepted by evaluate(); the tables must render it, not crash on a non-string cell."""
    rng = np.random.default_rng(1)
    groups = np.repeat(["A", "B"], 100)
    same = np.tile(np.arange(100) % 2 == 0, 2)
    dist = np.where(same, rng.normal(0.8, 0.3, 200), rng.normal(1.6, 0.3, 200))
    r = evaluate_arrays(dist, same, groups, name="m", benchmark="b", meta={"bits": 8, "calibration": 0.5},
                        n_bootstrap=10)
    (t,) = build_tables([r], [])
    assert "| m | 8 | 0.5 |" in to_markdown(t) and to_rich(t).row_count == 1
