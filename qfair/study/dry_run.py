"""``qfair study --dry-run``: the stages a study would run, in order, and what its folder already holds.

Nothing is written. A finished stage is judged as the run judges it (:meth:`_Study.resume_state`): its
settings changed (the run stops, or rebuilds it with ``recompute``) or its files are damaged (rebuilt).
"""
from __future__ import annotations

from .config import StudyConfig
from .plan import plan
from .runner import _Study

SETTINGS_CHANGED = "settings changed"  # how describe_plan marks a finished stage the run would refuse
REPORT_REMOVED = "the previous report is removed when the study starts"


def describe_plan(cfg: StudyConfig, recompute: bool = False) -> list[str]:
    """One line per stage, in the order :func:`run_study` runs them (``[i/N] id`` as the run prints it),
    with what the stage is built from and whether ``cfg.out`` already holds it finished -- and, checked as
    the run checks it (:meth:`_Study.resume_state`), whether a finished stage's settings changed (the run
    stops, or rebuilds it with ``recompute``) or its files are damaged (the run rebuilds it). A last line
    (starting :data:`REPORT_REMOVED`) says when the run would remove the previous report first
    (:meth:`_Study.report_removal`). Nothing is written; a float model is loaded only to compare the settings
    of a finished stage built from it."""
    st = _Study(cfg, say=lambda msg: None)
    root = st.root
    variants = plan(cfg)
    damaged, changed = st.resume_state(variants)
    lines = []
    for i, v in enumerate(variants, 1):
        what = {"float": "evaluate the float model", "ptq": f"quantize ({v.recipe} recipe)",
                "kd": f"fine-tune {v.parent} with KD",
                "onnx": f"export {v.parent} to ONNX ({cfg.export.target})"}[v.kind]
        state = "finished" if v.kind != "float" and root.stage_done(v.id) else "to run"
        if v.id in changed:
            state += f", {SETTINGS_CHANGED}: {changed[v.id]}"
        elif v.id in damaged:
            state += f", but damaged (rebuilt when the study runs): {damaged[v.id]}"
        lines.append(f"[{i}/{len(variants)}] {v.id:<34} {v.bits_label:<5} {v.calib_label:<26} {what}  ({state})")
    removal = None if changed and not recompute else st.report_removal(recomputed=bool(changed))  # (or it stops)
    if removal is not None:
        files, why = removal
        names = ", ".join(str(p.relative_to(root.path)) for p in files)
        lines.append(f"{REPORT_REMOVED} ({names}): {why}; the study writes a new one when it finishes")
    return lines
