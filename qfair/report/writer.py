"""Write a full report folder: report.md, metrics.json, results.csv, tables.tex and figures/*.png."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ..utils.io import atomic_write_text
from .tables import MARK_LEGEND, build_tables, fmt, fmt_p, reference_legend, to_csv, to_latex, to_markdown

_MD_ESCAPES = str.maketrans({"*": "\\*", "_": "\\_"})  # a model name like r50_fp32 must not start italics


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def _ci(v: Any, digits: int = 2, scale: float = 1.0) -> str:
    if not v:
        return ""
    return f" [{fmt(v[0] * scale, digits)}, {fmt(v[1] * scale, digits)}]"


def _model_section(r: Any) -> list[str]:
    t = r.threshold
    rf = r.rate_fairness
    out = [f"### {r.name}", "",
           f"Bits {r.meta.get('bits', '-')}, calibration {r.meta.get('calibration', '-')}, "
           f"recipe {r.meta.get('recipe', '-')}, backend {r.meta.get('backend', '-')}. "
           f"Overall accuracy {fmt(r.overall['accuracy'])} +- {fmt(r.overall['accuracy_fold_std'])}.", "",
           f"AVG {fmt(r.fairness.avg)}{_ci(r.fairness_ci.get('avg'))}, STD {fmt(r.fairness.std)}"
           f"{_ci(r.fairness_ci.get('std'))} (ddof={r.fairness.ddof}), SER {fmt(r.fairness.ser)}"
           f"{_ci(r.fairness_ci.get('ser'))}, gap {fmt(r.fairness.gap)}, TO {fmt(r.fairness.to)}.", "",
           f"Global threshold (cosine) {t['value']:.4f} from {t['source']} at target FMR {t['target_fmr']:g} "
           f"(pooled FMR {fmt(t['pooled_fmr'] * 100, 3)}%, FNMR {fmt(t['pooled_fnmr'] * 100, 2)}%). "
           f"FDR {fmt(rf['fdr'], 4)}{_ci(rf.get('fdr_ci'), 4)}, IR {fmt(rf['ir'], 3)}{_ci(rf.get('ir_ci'), 3)}, "
           f"GARBE {fmt(rf['garbe'], 4)}{_ci(rf.get('garbe_ci'), 4)} (alpha {rf['alpha']}).", "",
           "| Group | pairs | accuracy | 95% CI | bootstrap CI | FMR % | FNMR % | FNMR@FMR % | EER % | AUC |",
           "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in r.groups:
        p = r.per_group[g]
        out.append(f"| {g} | {p['n_pairs']} | {fmt(p['accuracy'])} | {_ci(p['accuracy_ci']).strip()} | "
                   f"{_ci(p.get('accuracy_ci_bootstrap')).strip()} | {fmt(p['fmr'] * 100, 3)} | "
                   f"{fmt(p['fnmr'] * 100)} | {fmt(p['fnmr_at_fmr'] * 100)} | {fmt(p['eer'] * 100)} | "
                   f"{fmt(p['auc'], 4)} |")
    if r.bootstrap.get("note"):
        out += ["", f"Bootstrap: {r.bootstrap['n']} resamples; {r.bootstrap['note']}."]
    return out + [""]


def _comparison_section(c: Any) -> list[str]:
    d = c.deltas
    out = [f"### {c.other} vs {c.reference}", "",
           "| Group | b (ref right, other wrong) | c (reverse) | test | p | p (Holm) | error change (pp) | 95% CI | "
           "FMR at ref. threshold % (ref -> other) |", "|:---|---:|---:|:---|---:|---:|---:|---:|---:|"]
    for g, p in c.per_group.items():
        dr = c.fmr_drift["per_group"][g]
        out.append(f"| {g} | {p['b']} | {p['c']} | {p['method']} | {fmt_p(p['p_value'])} | {fmt_p(p['p_holm'])}"
                   f"{p['mark']} | {fmt(p['error_delta_pp'])} | {_ci(p.get('error_delta_ci')).strip()} | "
                   f"{fmt(dr['fmr_ref'] * 100, 3)} -> {fmt(dr['fmr_other'] * 100, 3)} |")
    out += ["", "Changes (other - reference) with paired bootstrap 95% intervals: " + ", ".join(
        f"{k.upper()} {fmt(v['delta'])}{_ci(v.get('delta_ci'))}" for k, v in d.items()) + "."]
    out += [f"- {n}" for n in c.notes]
    if getattr(c, "null", None):
        out += [""] + _null_section(c)
    return out + [""]


def _null_section(c: Any) -> list[str]:
    """The group-blind null of a comparison: is a group's loss, or the STD / SER change, more than
    change of the same size, blind to the group, would give?"""
    n = c.null
    out = [f"Group-blind null ({n['n_draws']} permutations of the residual per-pair changes, mean |score change| "
           f"{n['mean_abs_score_change']:.4f}): what {c.reference} would score if each pair had changed by as "
           f"much as in {c.other}, whatever its group. p is two-sided, (k + 1) / (n + 1) over the draws, so "
           f"never below {1 / (n['n_draws'] + 1):.4f}.", "",
           "| | reference | observed | expected under the null | 95% of draws | p | excess error (pp) |",
           "|:---|---:|---:|---:|---:|---:|---:|"]
    for g, v in n["per_group"].items():
        p = fmt_p(v['p']) + (f" (Holm {fmt_p(v['p_holm'])})" if "p_holm" in v else "")
        out.append(f"| {g} | {fmt(v['reference'])} | {fmt(v['observed'])} | {fmt(v['expected'])} | "
                   f"{_ci(v['interval']).strip()} | {p} | {fmt(v['excess_error_pp'])} |")
    for k, v in n["metrics"].items():
        out.append(f"| {k.upper()} | {fmt(v['reference'])} | {fmt(v['observed'])} | {fmt(v['expected'])} | "
                   f"{_ci(v['interval']).strip()} | {fmt_p(v['p'])} | |")
    return out


DATA_FILES = ("metrics.json", "results.csv", "tables.tex")  # written beside the Markdown report
FIGURE_KINDS = ("accuracy", "det", "tradeoff")


def reports_in(folder: str | Path, report_name: str = "report.md") -> list[Path]:
    """Files in ``folder`` that :func:`write_report` wrote (with that ``report_name``): the Markdown
    report, its data files and its figures."""
    folder = Path(folder)
    found = [folder / n for n in (report_name, *DATA_FILES) if (folder / n).is_file()]
    for kind in FIGURE_KINDS:
        found += [p for p in (folder / "figures").glob(f"{kind}_*.png") if p.is_file()]
    return sorted(found)


def write_report(out_dir: str | Path, results: Sequence[Any], comparisons: Sequence[Any] = (), *,
                 figures: bool = True, title: str = "qfair evaluation",
                 report_name: str = "report.md", preface: str | None = None) -> dict[str, Path]:
    """Write every artefact into ``out_dir``; returns name -> path (the Markdown report under the key
    ``"report.md"`` whatever ``report_name`` it is written as). ``preface`` is a warning shown in bold
    under the title. Figures are skipped (with a line in report.md) when matplotlib is missing."""
    from ..utils.io import output_folder, to_json

    out = output_folder(out_dir)  # a file in the way: a QfairError naming it, not a FileExistsError
    tables = build_tables(results, comparisons)
    # every data file rendered before any file is written: a value that cannot be rendered must not leave
    # this run's report.md beside the previous run's metrics.json and tables
    data = {"metrics.json": to_json({"results": [r.to_dict() for r in results],
                                     "comparisons": [c.to_dict() for c in comparisons]}),
            "results.csv": to_csv(tables), "tables.tex": "\n".join(to_latex(t) for t in tables)}
    written: dict[str, Path] = {}
    fig_lines: dict[str, list[str]] = {}
    if figures:
        from ..utils.errors import MissingDependencyError
        from .figures import accuracy_figure, det_figure, tradeoff_figure

        for t in tables:
            rs = [r for r in results if r.benchmark == t.benchmark]
            b = _slug(t.benchmark)
            try:
                for kind, fn in zip(FIGURE_KINDS, (accuracy_figure, det_figure, tradeoff_figure)):
                    p = fn(rs, out / "figures" / f"{kind}_{b}.png")
                    written[f"{kind}_{b}"] = p
                    fig_lines.setdefault(t.benchmark, []).append(f"![{kind}](figures/{p.name})")
            except MissingDependencyError as exc:
                fig_lines[t.benchmark] = [f"(figures skipped: {exc})"]
    md = [f"# {title}", ""] + ([f"> **{preface}**", ""] if preface else [])
    for t in tables:
        md += [f"## {t.benchmark}", "", to_markdown(t)]
        if t.reference:
            md += [(MARK_LEGEND + f"; {reference_legend(t)}.").translate(_MD_ESCAPES), ""]
        md += [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
        md += fig_lines.get(t.benchmark, []) + [""]
        for r in results:
            if r.benchmark == t.benchmark:
                md += _model_section(r)
        for c in comparisons:
            if c.benchmark == t.benchmark:
                md += _comparison_section(c)
    # figures of an earlier report in this folder (another benchmark, or figures now off) would be taken
    # for this one's: remove the ones this call did not write
    kept = {p.resolve() for p in written.values()}
    for stale in reports_in(out, report_name):
        if stale.parent.name == "figures" and stale.resolve() not in kept:
            stale.unlink(missing_ok=True)
    written["report.md"] = atomic_write_text(out / report_name, "\n".join(md))
    for name in DATA_FILES:
        written[name] = atomic_write_text(out / name, data[name])
    return written
