"""The variants a study runs, as a pure function of its config (testable without running anything)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import CalibSpec, ModelSpec, StudyConfig


@dataclass(frozen=True)
class Variant:
    """One model to build and evaluate. ``kind``: float | ptq | kd | onnx."""

    id: str
    kind: str
    model: ModelSpec
    recipe: Optional[str] = None
    bits: Optional[int] = None
    calib: Optional[CalibSpec] = None
    parent: Optional[str] = None  # the variant this one is built from (kd: its PTQ start; onnx: its PTQ model)

    @property
    def bits_label(self) -> str:
        return "FP32" if self.bits is None else f"W{self.bits}A{self.bits}"

    @property
    def calib_label(self) -> str:
        if self.calib is None:
            return "-"
        return self.calib.label + {"kd": " + KD", "onnx": " (ONNX Runtime)"}.get(self.kind, "")


def ptq_id(model: ModelSpec, recipe: str, bits: int, calib: CalibSpec, n_recipes: int) -> str:
    rec = f"-{recipe}" if n_recipes > 1 or recipe != "quantface" else ""
    return f"{model.name}-w{bits}a{bits}-{calib.label}{rec}"


def plan(cfg: StudyConfig) -> list[Variant]:
    """Float models first, then PTQ (model x recipe x bits x calibration), KD fine-tuning, ONNX exports."""
    out: list[Variant] = []
    calib = {c.label: c for c in cfg.calibration}
    for m in cfg.models:
        out.append(Variant(id=f"{m.name}-fp32", kind="float", model=m))
        ptq: dict[tuple[str, int, str], Variant] = {}
        for recipe in cfg.recipes:
            for bits in cfg.bits:
                for c in cfg.calibration:
                    v = Variant(ptq_id(m, recipe, bits, c, len(cfg.recipes)), "ptq", m, recipe, bits, c)
                    ptq[(recipe, bits, c.label)] = v
                    out.append(v)
        if cfg.finetune.enabled:
            for recipe in cfg.recipes:
                for bits in cfg.finetune.bits:
                    c = calib[cfg.finetune.start_from]
                    start = ptq.get((recipe, bits, c.label))
                    if start is None:  # fine-tuning a width the PTQ grid does not have: build its start too
                        start = Variant(ptq_id(m, recipe, bits, c, len(cfg.recipes)), "ptq", m, recipe, bits, c)
                        ptq[(recipe, bits, c.label)] = start
                        out.append(start)
                    out.append(Variant(start.id + "-kd", "kd", m, recipe, bits, c, parent=start.id))
        if cfg.export.enabled:
            for bits in cfg.export.bits:
                for lab in cfg.export.calibration:
                    c = calib[lab]
                    recipe = cfg.export.recipe
                    start = ptq.get((recipe, bits, lab))
                    if start is None:
                        start = Variant(ptq_id(m, recipe, bits, c, 2), "ptq", m, recipe, bits, c)
                        ptq[(recipe, bits, lab)] = start
                        out.append(start)
                    out.append(Variant(start.id + "-onnx", "onnx", m, recipe, bits, c, parent=start.id))
    return out
