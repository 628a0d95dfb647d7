"""Review of the report tables: several references in one table (a study of several models), the LaTeX
caption's mark legend and escaping, -inf in the CSV, and a report that cannot be rendered leaving the
previous one whole."""
import csv
import io
import json

import numpy as np
import pytest

from qfair.eval import compare, evaluate_arrays
from qfair.report import build_tables, to_csv, to_latex, to_markdown, write_report
from qfair.report.tables import _raw, latex_escape

GROUPS = np.repeat(["Caucasian", "African"], 400)
SAME = np.tile((np.arange(400) // 20) % 2 == 0, 2)


def _result(name: str, seed: int, bits: str = "W8A8", shift: float = 0.0):
    """A result on 800 fixed pairs; ``shift`` moves the African genuine distances (more errors there)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([np.char.add(GROUPS, (np.arange(800) % 37).astype(str))] * 2, 1)
    ids[~SAME, 1] = np.char.add(GROUPS[~SAME], "x")
    dist = np.where(SAME, rng.normal(0.9, 0.3, 800), rng.normal(1.7, 0.2, 800)).clip(0, 4)
    dist = dist + shift * (SAME & (GROUPS == "African"))
    return evaluate_arrays(dist, SAME, GROUPS, pair_ids=ids, name=name, benchmark="rfw",
                           meta={"bits": bits, "calibration": "-"}, n_bootstrap=0)


@pytest.fixture(scope="module")
def two_models():
    """Two float models, each with a quantized variant compared with its own float model, listed with the
    float models first (as ``qfair compare a-fp32 b-fp32 a-w8 b-w8`` could list them)."""
    a, b = _result("a-fp32", 0, "FP32"), _result("b-fp32", 0, "FP32")
    aq, bq = _result("a-w8", 1), _result("b-w8", 0, shift=0.5)
    comps = (compare([a, aq], reference="a-fp32", n_bootstrap=0, null_draws=0)
             + compare([b, bq], reference="b-fp32", n_bootstrap=0, null_draws=0))
    return [a, b, aq, bq], comps


def test_each_model_is_marked_against_its_own_reference(two_models):
    results, comps = two_models
    (t,) = build_tables(results, comps)
    assert comps[1].marks()["African"]  # b-w8 is significantly worse than b-fp32 (so the mark matters)
    # each reference row heads the rows compared with it, and is labelled as a reference
    assert [c[0] for c in t.cells()] == ["a-fp32 (ref)", "a-w8", "b-fp32 (ref)", "b-w8"]
    assert t.references == ["a-fp32", "b-fp32"]
    rows = list(csv.DictReader(io.StringIO(to_csv([t]))))
    assert [(r["model"], r["reference"], r["compared_to"]) for r in rows] == [
        ("a-fp32", "1", ""), ("a-w8", "0", "a-fp32"), ("b-fp32", "1", ""), ("b-w8", "0", "b-fp32")]
    tex = to_latex(t)
    assert "references: a-fp32, b-fp32" in tex and r"b-fp32 (ref) & FP32" in tex


def test_report_legend_names_every_reference(two_models, tmp_path):
    results, comps = two_models
    write_report(tmp_path, results, comps, figures=False)
    md = (tmp_path / "report.md").read_text()
    assert "references: a-fp32, b-fp32 (each row is compared with the reference row heading its block)" in md
    assert "reference: a-fp32." not in md


def test_single_reference_legend_unchanged(two_models, tmp_path):
    results, comps = two_models
    (t,) = build_tables(results[::2], comps[:1])
    assert t.reference == "a-fp32" and t.references == ["a-fp32"]
    write_report(tmp_path, results[::2], comps[:1], figures=False)
    assert "; reference: a-fp32." in (tmp_path / "report.md").read_text()


def test_latex_caption_shows_the_marks_and_escapes_less_than(two_models):
    results, comps = two_models
    (t,) = build_tables(results, comps)
    caption = next(line for line in to_latex(t).splitlines() if line.startswith(r"\caption"))
    # the caption names the marks as the cells print them, so a reader can tell * from ***
    assert "Marks $^{*}$ / $^{**}$ / $^{***}$:" in caption
    # '<' in LaTeX text mode (OT1 encoding) prints as an inverted exclamation mark
    assert "<" not in caption and r"p \textless{} 0.05" in caption
    assert latex_escape("a<b>c") == r"a\textless{}b\textgreater{}c"


def test_csv_keeps_the_sign_of_infinity():
    assert _raw(float("-inf")) == "-inf" and _raw(float("inf")) == "inf" and _raw(float("nan")) == ""


def test_unrenderable_report_leaves_the_previous_one_whole(two_models, tmp_path):
    results, comps = two_models
    write_report(tmp_path, results[::2], comps[:1], figures=False)
    before = {n: (tmp_path / n).read_bytes() for n in ("report.md", "metrics.json", "results.csv", "tables.tex")}
    bad = _result("c-w8", 2)
    bad.meta["bits"] = object()  # not JSON-serialisable: metrics.json cannot be written
    with pytest.raises(TypeError):
        write_report(tmp_path, [*results[::2], bad], comps[:1], figures=False)
    after = {n: (tmp_path / n).read_bytes() for n in before}
    assert after == before  # not this run's report.md beside the previous run's metrics.json
    json.loads(after["metrics.json"])


def test_markdown_header_escapes_group_names():
    rng = np.random.default_rng(3)
    groups = np.repeat(["A|B", "C_D"], 100)
    same = np.tile(np.arange(100) % 2 == 0, 2)
    dist = np.where(same, rng.normal(0.8, 0.3, 200), rng.normal(1.6, 0.3, 200))
    r = evaluate_arrays(dist, same, groups, name="m", benchmark="b", n_bootstrap=0)
    header, rule, row = to_markdown(build_tables([r])[0]).splitlines()
    assert header == r"| Model | Bits | Calibration | A\|B | C\_D | AVG | STD | SER |"
    # every line has as many unescaped '|' as the rule: no extra column
    assert all(len(line.replace(r"\|", "").split("|")) == len(rule.split("|")) for line in (header, row))


def test_a_file_in_place_of_the_report_folder_is_a_clear_error(two_models, tmp_path):
    from qfair.utils.errors import QfairError

    results, comps = two_models
    (tmp_path / "rep").write_text("mine")
    with pytest.raises(QfairError, match=r"rep: it exists and is not a folder"):
        write_report(tmp_path / "rep", results, comps, figures=False)
    assert (tmp_path / "rep").read_text() == "mine"


def test_a_change_that_rounds_to_zero_has_no_minus_sign():
    from qfair.report.tables import fmt

    assert [fmt(x) for x in (-0.001, -0.0, -0.0049, 0.004)] == ["0.00"] * 4
    assert [fmt(-0.005001), fmt(-10.001), fmt(-0.00001, 4), fmt(float("-inf"))] == ["-0.01", "-10.00", "0.0000", "-inf"]
