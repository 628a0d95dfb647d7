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
    reference: str | None = None  # the references' names, comma-separated (one per model of a study)
    notes: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)

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
    out = f"{x:.{digits}f}"
    # -0.001 rounds to "-0.00": a change too small to show must not read as a loss
    return out[1:] if out.startswith("-") and not out.strip("-0.") else out


def build_tables(results: Sequence[Any], comparisons: Sequence[Any] = ()) -> list[Table]:
    """One table per benchmark from EvalResults (and PairedComparisons for the marks)."""
    tables = []
    for bench in dict.fromkeys(r.benchmark for r in results):
        rs = [r for r in results if r.benchmark == bench]
        groups = list(dict.fromkeys(g for r in rs for g in r.groups))
        comps = {c.other: c for c in comparisons if c.benchmark == bench}
        # a study of several models compares each model's variants with that model's own float model
        refs = list(dict.fromkeys(c.reference for c in comps.values()))
        rs.sort(key=lambda r: _row_order(r.name, refs, comps))
        rows = []
        for r in rs:
            acc = r.accuracies()
            rows.append({
                "model": r.name, "reference": r.name in refs,
                "compared_to": comps[r.name].reference if r.name in comps else "",
                "bits": r.meta.get("bits", "-"), "calibration": r.meta.get("calibration", "-"),
                "acc": {g: acc.get(g, float("nan")) for g in groups},
                "avg": r.fairness.avg, "std": r.fairness.std, "ser": r.fairness.ser,
                "marks": comps[r.name].marks() if r.name in comps else {},
            })
        notes = [f"{r.name}: {n}" for r in rs for n in r.notes]
        notes += [null_note(c) for c in comps.values() if getattr(c, "null", None)]
        tables.append(Table(bench, groups, rows, ", ".join(refs) or None, notes, refs))
    return tables


def _row_order(name: str, refs: list[str], comps: dict[str, Any]) -> tuple[int, bool]:
    """Sort key: each reference row first, followed by the rows compared with it (as in the studies); rows
    compared with nothing last. The sort is stable, so the order within a block is the results' order."""
    ref = name if name in refs else comps[name].reference if name in comps else None
    return (refs.index(ref) if ref in refs else len(refs), name not in refs)


def reference_legend(t: "Table") -> str:
    """What the marks of ``t`` are measured against: one reference, or each row's block reference."""
    refs = t.references or ([t.reference] if t.reference else [])
    if len(refs) == 1:
        return f"reference: {refs[0]}"
    return f"references: {', '.join(refs)} (each row is compared with the reference row heading its block)"


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
    esc = str.maketrans({"|": "\\|", "*": "\\*", "_": "\\_"})  # a '|' in a group name would add a column
    lines = ["| " + " | ".join(c.translate(esc) for c in cols) + " |",
             "|" + "|".join([":---"] * 3 + ["---:"] * (len(cols) - 3)) + "|"]
    lines += ["| " + " | ".join(c.translate(esc) for c in row) + " |" for row in t.cells()]
    return "\n".join(lines) + "\n"


# '<' and '>' too: in text mode with LaTeX's default (OT1) font encoding they print as '¡' and '¿'
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


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
    if t.reference:  # the marks as the cells show them, so the caption says which is which
        marks = " / ".join("$^{" + m + "}$" for m in ("*", "**", "***"))
        legend = MARK_LEGEND.split(":", 1)[1].strip()
        caption += f" Marks {marks}: {latex_escape(legend)}; {latex_escape(reference_legend(t))}."
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                      rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head, r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}"]) + "\n"


def to_csv(tables: Sequence[Table]) -> str:
    """Wide CSV of every table (one row per benchmark and model), raw numbers, marks in own columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    groups = list(dict.fromkeys(g for t in tables for g in t.groups))
    w.writerow(["benchmark", "model", "reference", "bits", "calibration", *groups, "AVG", "STD", "SER",
                *[f"mark_{g}" for g in groups], "compared_to"])
    for t in tables:
        for r in t.rows:
            w.writerow([t.benchmark, r["model"], int(bool(r.get("reference"))), r["bits"], r["calibration"],
                        *[_raw(r["acc"].get(g)) for g in groups], _raw(r["avg"]), _raw(r["std"]), _raw(r["ser"]),
                        *[r["marks"].get(g, "") for g in groups], r.get("compared_to", "")])
    return buf.getvalue()


def _raw(x: Any) -> str:
    if x is None:
        return ""
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "" if math.isnan(x) else repr(round(x, 6))


def to_rich(t: Table):
    """A rich Table for the terminal."""
    from rich.table import Table as RichTable

    caption = f"{MARK_LEGEND}; {reference_legend(t)}" if t.reference else None
    rt = RichTable(title=f"{t.benchmark}: accuracy (%) per group", caption=caption)
    for i, c in enumerate(t.columns):
        rt.add_column(c, justify="left" if i < 3 else "right")
    for row in t.cells():
        rt.add_row(*row)
    return rt
