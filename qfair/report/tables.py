"""Result tables laid out like the studies' tables: model, bits, calibration, per-group accuracy,
AVG, STD, SER, with significance marks against the float reference (Holm-adjusted McNemar).

One :class:`Table` per benchmark, rendered to rich (terminal), Markdown, LaTeX and CSV.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

MARK_LEGEND = ("Marks * / ** / ***: accuracy differs from the reference model on the same pairs "
               "(McNemar, Holm-corrected over groups) at p < 0.05 / 0.01 / 0.001")


@dataclass
class Table:
    """A study-style table of one benchmark. ``rows`` hold raw values; ``marks[row][group]`` a mark."""

    benchmark: str
    groups: list[str]
    rows: list[dict[str, Any]]
    reference: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return ["Model", "Bits", "Calibration", *self.groups, "AVG", "STD", "SER"]

    def cells(self, latex: bool = False) -> list[list[str]]:
        """Formatted cells: accuracies with 2 decimals, SER 'inf', marks appended."""
        out = []
        for r in self.rows:
            line = [str(r["model"]) + (" (ref)" if r.get("reference") else ""), str(r["bits"]), str(r["calibration"])]
            for g in self.groups:
                mark = r["marks"].get(g, "")
                if mark and latex:
                    mark = "$^{" + mark + "}$"
                line.append(fmt(r["acc"][g]) + mark)
            line += [fmt(r["avg"]), fmt(r["std"]), fmt(r["ser"])]
            out.append(line)
        return out


def fmt(x: Any, digits: int = 2) -> str:
    """Number for a table: 'inf', 'nan' -> '-', else fixed decimals."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def build_tables(results: Sequence[Any], comparisons: Sequence[Any] = ()) -> list[Table]:
    """One table per benchmark from EvalResults (and PairedComparisons for the marks)."""
    tables = []
    for bench in dict.fromkeys(r.benchmark for r in results):
        rs = [r for r in results if r.benchmark == bench]
        groups = list(dict.fromkeys(g for r in rs for g in r.groups))
        comps = {c.other: c for c in comparisons if c.benchmark == bench}
        reference = next(iter(comps.values())).reference if comps else None
        rs.sort(key=lambda r: r.name != reference)  # the reference row first, as in the studies
        rows = []
        for r in rs:
            acc = r.accuracies()
            rows.append({
                "model": r.name, "reference": r.name == reference,
                "bits": r.meta.get("bits", "-"), "calibration": r.meta.get("calibration", "-"),
                "acc": {g: acc.get(g, float("nan")) for g in groups},
                "avg": r.fairness.avg, "std": r.fairness.std, "ser": r.fairness.ser,
                "marks": comps[r.name].marks() if r.name in comps else {},
            })
        notes = [f"{r.name}: {n}" for r in rs for n in r.notes]
        notes += [null_note(c) for c in comps.values() if getattr(c, "null", None)]
        tables.append(Table(bench, groups, rows, reference, notes))
    return tables


def null_note(c: Any) -> str:
    """One line on a comparison's group-blind null: the SER that change of its size gives, blind to the
    group, and the groups that lost significantly more (Holm p < 0.05) than that."""
    n = c.null
    ser = n["metrics"]["ser"]
    beyond = [f"{g} {v['excess_error_pp']:+.2f} pp (Holm p {v['p_holm']:.2g})" for g, v in n["per_group"].items()
              if v.get("p_holm", 1.0) < 0.05]
    lo, hi = ser["interval"]
    if not math.isfinite(ser["expected"]):  # SER infinite or undefined in the draws: no yardstick for it
        what = (f"SER {fmt(ser['observed'])}; group-blind change of the same size gives no finite SER "
                f"(a group without errors), so SER cannot be judged against it")
    else:
        what = (f"SER {fmt(ser['observed'])}; group-blind change of the same size gives {fmt(ser['expected'])} "
                f"[{fmt(lo)}, {fmt(hi)}] (p {fmt_p(ser['p'])})")
    return f"{c.other} vs {c.reference}: {what}; groups beyond it: {', '.join(beyond) if beyond else 'none'}"


def fmt_p(p: Any) -> str:
    """A p-value with 2 significant digits; '-' when undefined (NaN)."""
    if p is None or not math.isfinite(float(p)):
        return "-"
    return f"{float(p):.2g}"


def to_markdown(t: Table) -> str:
    cols = t.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join([":---"] * 3 + ["---:"] * (len(cols) - 3)) + "|"]
    esc = str.maketrans({"|": "\\|", "*": "\\*", "_": "\\_"})
    lines += ["| " + " | ".join(c.translate(esc) for c in row) + " |" for row in t.cells()]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))


def to_latex(t: Table) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs})."""
    cols = t.columns
    spec = "lll" + "r" * (len(cols) - 3)
    head = " & ".join(latex_escape(c) for c in cols) + r" \\"
    body = []
    for row in t.cells(latex=True):
        body.append(" & ".join([latex_escape(c) for c in row[:3]] + row[3:]) + r" \\")
    caption = latex_escape(f"Verification accuracy (%) per group on {t.benchmark}.")
    if t.reference:
        caption += " " + latex_escape(MARK_LEGEND.replace(" * / ** / ***", "")) + "."
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                      rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}"]) + "\n"


def to_csv(tables: Sequence[Table]) -> str:
    """Wide CSV of every table (one row per benchmark and model), raw numbers, marks in own columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    groups = list(dict.fromkeys(g for t in tables for g in t.groups))
    w.writerow(["benchmark", "model", "reference", "bits", "calibration", *groups, "AVG", "STD", "SER",
                *[f"mark_{g}" for g in groups]])
    for t in tables:
        for r in t.rows:
            w.writerow([t.benchmark, r["model"], int(bool(r.get("reference"))), r["bits"], r["calibration"],
                        *[_raw(r["acc"].get(g)) for g in groups], _raw(r["avg"]), _raw(r["std"]), _raw(r["ser"]),
                        *[r["marks"].get(g, "") for g in groups]])
    return buf.getvalue()


def _raw(x: Any) -> str:
    if x is None:
        return ""
    x = float(x)
    return "inf" if math.isinf(x) else "" if math.isnan(x) else repr(round(x, 6))


def to_rich(t: Table):
    """A rich Table for the terminal."""
    from rich.table import Table as RichTable

    rt = RichTable(title=f"{t.benchmark}: accuracy (%) per group", caption=MARK_LEGEND if t.reference else None)
    for i, c in enumerate(t.columns):
        rt.add_column(c, justify="left" if i < 3 else "right")
    for row in t.cells():
        rt.add_row(*row)
    return rt
