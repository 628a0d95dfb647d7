"""``StudyConfig``: the matrix a study runs (typed, validated; YAML keys mirror the dataclass)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from ..config import cfg_field, load_config
from ..utils.errors import ConfigError, DataError, QfairError

BUILTIN_PREFIX = "builtin:"
_ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _recipes() -> list[str]:
    from ..quant.recipes import RECIPES

    return RECIPES.names()


def _observers() -> list[str]:
    from ..quant.observers import OBSERVERS

    return OBSERVERS.names() + sorted(OBSERVERS.aliases())


def _ptq_methods() -> list[str]:
    from ..quant.config import PTQ_METHODS

    return list(PTQ_METHODS)


def _repeated(key: str, values: tuple) -> None:
    """A value listed twice in a list setting would build (and report) the same stage twice."""
    seen: set = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{key}: {v!r} is listed twice; list each value once")
        seen.add(v)


@dataclass(frozen=True)
class ModelSpec:
    """One float model: ``checkpoint`` is a file, or ``builtin:NAME`` for a shipped demo model
    (``builtin:mobilefacenet``, ``builtin:iresnet18w16``; see :func:`builtin_models`)."""

    name: str = cfg_field(help="label used in tables and folder names")
    checkpoint: str = cfg_field(help="float checkpoint path (relative paths: from the folder qfair runs in), or "
                                     "builtin:mobilefacenet / builtin:iresnet18w16")
    arch: Optional[str] = cfg_field(None, help="architecture, as `qfair models` lists it (guessed from the "
                                               "checkpoint when omitted)")

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\: "):
            raise ConfigError(f"models: name '{self.name}' must be non-empty without '/', '\\', ':' or spaces")

    def resolved_checkpoint(self) -> Path:
        if self.checkpoint.startswith(BUILTIN_PREFIX):
            name = self.checkpoint[len(BUILTIN_PREFIX):]
            path = _ASSETS / f"demo_{name}.pt"
            if not path.exists():
                raise ConfigError(f"models: unknown built-in model '{self.checkpoint}'; shipped: "
                                  f"{', '.join(BUILTIN_PREFIX + n for n in builtin_models()) or 'none'}")
            return path
        return Path(self.checkpoint)


def builtin_models() -> list[str]:
    """Names of the demo models shipped in qfair/assets (``demo_<name>.pt``)."""
    return sorted(p.stem[len("demo_"):] for p in _ASSETS.glob("demo_*.pt"))


@dataclass(frozen=True)
class CalibSpec:
    """A calibration source: ``label`` in tables, ``source`` as ``qfair.data.calibration_batches`` takes it
    (real:PATH, synthetic:PATH, synthetic (data-free), builtin, builtin-synthetic)."""

    label: str = cfg_field(help="label in tables (e.g. real, synthetic, data-free)")
    source: str = cfg_field(help="calibration source spec")
    size: Optional[int] = cfg_field(None, help="images from this source (default: the study's calib_size)",
                                    range=(1, None))


@dataclass(frozen=True)
class FinetuneSpec:
    """KD fine-tuning of PTQ variants against their float teacher (README references [5])."""

    enabled: bool = cfg_field(True)
    bits: tuple[int, ...] = cfg_field((6,), help="fine-tune the variants with these bit widths", range=(2, 8))
    start_from: str = cfg_field("synthetic", help="label of the calibration whose PTQ model is fine-tuned")
    data: str = cfg_field("builtin-synthetic", help="fine-tuning images (calibration source spec)")
    images: int = cfg_field(512, help="number of fine-tuning images", range=(1, None))
    steps: int = cfg_field(60, help="optimisation steps", range=(1, None))
    batch_size: int = cfg_field(16, range=(1, None))
    lr: float = cfg_field(0.002, range=(0.0, None))
    range_update_steps: int = cfg_field(10, help="activation ranges track for these first steps, then freeze",
                                        range=(0, None))
    freeze_bn: bool = cfg_field(False, help="keep BatchNorm running statistics fixed (advisable with few images: "
                                "with BN in training mode its statistics drift away from the float teacher's)")
    weight_decay: float = cfg_field(0.0, range=(0.0, None),
                                    help="L2 decay toward zero; 0 for short fine-tuning from a trained model (decay "
                                         "pulls it away from the teacher faster than a small KD loss pulls back)")


@dataclass(frozen=True)
class ExportSpec:
    """Export variants to ONNX and evaluate the graph in ONNX Runtime."""

    enabled: bool = cfg_field(True)
    target: str = cfg_field("onnxruntime", choices=["onnxruntime", "tensorrt"])
    bits: tuple[int, ...] = cfg_field((8,), help="export the PTQ variants with these bit widths", range=(2, 8))
    calibration: tuple[str, ...] = cfg_field(("real",), help="... and these calibration labels")
    recipe: str = cfg_field("deploy", help="recipe the exported variant is quantized with", choices=_recipes)


@dataclass(frozen=True)
class EvalSpec:
    flip: bool = cfg_field(True, help="flip test-time augmentation")
    batch_size: int = cfg_field(64, range=(1, None))
    n_bootstrap: int = cfg_field(1000, help="identity-bootstrap resamples", range=(0, None))
    null_draws: int = cfg_field(200, help="group-blind null permutations per comparison (0 = skip)",
                                range=(0, None))
    mode: str = cfg_field("exact", choices=["exact", "grid"])
    target_fmr: float = cfg_field(1e-3, range=(0.0, 1.0))


@dataclass(frozen=True)
class StudyConfig:
    """A study: every model x recipe x bits x calibration, then fine-tuning and export.

    Relative paths (checkpoints, calibration and benchmark data, ``out``) are read from the folder qfair
    runs in, not from the YAML file's folder (the shipped ``configs/study_*.yaml`` expect the repository
    root). ``bits: []`` evaluates the float models only (with fine-tuning and export disabled)."""

    name: str = cfg_field("study", help="study name (report title)")
    out: str = cfg_field("runs/study", help="output folder (rerunning resumes it)")
    # numpy refuses a negative seed: caught here, not after the float model was evaluated
    seed: int = cfg_field(0, help="random seed (calibration data, fine-tuning, bootstrap)", range=(0, None))
    models: tuple[ModelSpec, ...] = cfg_field((), flag=False, help="float models")
    bench: tuple[str, ...] = cfg_field(("builtin",), help="verification benchmarks, KIND:PATH specs (rfw:/data/RFW, "
                                                          "lfw:/data/lfw.bin, csv:pairs.csv, builtin, builtin:tiny)")
    bits: tuple[int, ...] = cfg_field((8, 6), help="bit widths (weights and activations)", range=(2, 8))
    recipes: tuple[str, ...] = cfg_field(("quantface",), help="placement recipes", choices=_recipes)
    observer: str = cfg_field("minmax", help="activation observer", choices=_observers)
    ptq: tuple[str, ...] = cfg_field((), help="PTQ improvements applied after calibration, in order",
                                     choices=_ptq_methods)
    calibration: tuple[CalibSpec, ...] = cfg_field((), flag=False, help="calibration sources")
    calib_size: int = cfg_field(256, help="calibration images per source", range=(1, None))
    calib_batch_size: int = cfg_field(32, range=(1, None))
    finetune: FinetuneSpec = cfg_field(default_factory=FinetuneSpec)
    export: ExportSpec = cfg_field(default_factory=ExportSpec)
    eval: EvalSpec = cfg_field(default_factory=EvalSpec)
    synthetic_benchmark: bool = cfg_field(False, flag=False,
                                          help="set by the demo: every number comes from the built-in benchmark")

    def __post_init__(self) -> None:
        if not self.out.strip():
            raise ConfigError("out: empty; name the study's output folder (e.g. out: runs/my_study)")
        if not self.models:
            raise ConfigError("models: a study needs at least one model (name, checkpoint, arch)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"models: names must be unique, got {names}")
        self._check_archs()
        if not self.bench:
            raise ConfigError("bench: a study needs at least one benchmark, e.g. bench: [\"rfw:/data/RFW\"] or "
                              "[builtin]")
        if not self.recipes:
            raise ConfigError("recipes: a study needs at least one recipe (quantface or deploy)")
        from ..quant.recipes import RECIPES

        # one spelling per recipe: 'QuantFace' would otherwise name folders '-QuantFace' beside '-quantface'
        object.__setattr__(self, "recipes", tuple(RECIPES.canonical(r) for r in self.recipes))
        object.__setattr__(self, "export", replace(self.export, recipe=RECIPES.canonical(self.export.recipe)))
        for key, values in (("bench", self.bench), ("bits", self.bits), ("recipes", self.recipes),
                            ("finetune.bits", self.finetune.bits), ("export.bits", self.export.bits),
                            ("export.calibration", self.export.calibration)):
            _repeated(key, values)
        labels = [c.label for c in self.calibration]
        if not labels:
            raise ConfigError("calibration: a study needs at least one calibration source (label, source)")
        for i, lab in enumerate(labels):
            if not lab or lab != lab.strip() or any(ch in lab for ch in "/\\:"):
                raise ConfigError(f"calibration[{i}].label: {lab!r} names folders: give it non-empty, without "
                                  "'/', '\\', ':' or surrounding spaces")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"calibration: labels must be unique, got {labels}")
        if self.finetune.enabled:
            if self.finetune.start_from not in labels:
                raise ConfigError(f"finetune.start_from: '{self.finetune.start_from}' is not a calibration label "
                                  f"({', '.join(labels)})")
            if not self.finetune.bits:
                raise ConfigError("finetune.bits: empty while finetune.enabled is true; list the bit widths to "
                                  "fine-tune, or set enabled: false")
        if self.export.enabled:
            for lab in self.export.calibration:
                if lab not in labels:
                    raise ConfigError(f"export.calibration: '{lab}' is not a calibration label ({', '.join(labels)})")
            for key in ("bits", "calibration"):
                if not getattr(self.export, key):
                    raise ConfigError(f"export.{key}: empty while export.enabled is true; list what to export, or "
                                      "set enabled: false")
        self._check_variant_ids()

    def _check_archs(self) -> None:
        from ..models import MODELS

        for i, m in enumerate(self.models):
            if m.arch is not None and m.arch not in MODELS:
                try:
                    MODELS.canonical(m.arch)
                except QfairError as exc:
                    msg = exc.args[0] if exc.args else str(exc)  # a KeyError's str() adds quotes
                    raise ConfigError(f"models[{i}].arch (name {m.name}): {msg}; or leave arch out to guess it "
                                      "from the checkpoint") from None

    def _check_variant_ids(self) -> None:
        """Two different stages must not share a folder (e.g. a calibration labelled 'real-deploy' and the
        export's deploy variant of 'real')."""
        from .plan import plan

        seen: set[str] = set()
        for v in plan(self):
            if v.id in seen:
                raise ConfigError(f"variant '{v.id}' names two different stages (its folder would hold both); "
                                  "rename a model or calibration label")
            seen.add(v.id)


def _source_problem(spec: str) -> str | None:
    """What is wrong with a calibration / fine-tuning source spec that can be seen without reading it
    (unknown kind, missing path), or None."""
    from ..data.calibration import CALIB_SOURCES

    kind, _, path = spec.partition(":")
    if kind not in CALIB_SOURCES.names():
        return f"unknown source kind '{kind}' in {spec!r}; known: {', '.join(CALIB_SOURCES.names())}"
    if kind == "mix":
        from ..data.mixing import parse_mix

        try:
            parts = parse_mix(path)
        except QfairError as exc:
            return str(exc)
        return next((msg for msg in (_source_problem(s) for s, _ in parts) if msg), None)
    if kind == "real" and not path:
        return "source 'real' needs a path: real:/data/faces_emore (image folder, .rec or .bin)"
    if kind in ("real", "synthetic") and path and not Path(path).exists():
        return f"{path}: data path not found{_relative_hint(path)}"
    return None


def _relative_hint(path: str | Path) -> str:
    """Where a relative path was looked for: the study reads paths from the folder qfair runs in."""
    if Path(path).is_absolute():
        return ""
    return f" (relative paths are read from {Path.cwd()}, not from the YAML's folder)"


def check_paths(cfg: StudyConfig, source: str | None = None) -> None:
    """Check every model checkpoint and data path the study's stages will read, before any stage runs.
    Errors name ``source`` (the study's YAML file) and the entry, e.g.
    ``st.yaml: calibration[0] (label real): /data/x: data path not found``; every problem found is listed,
    one a line, so that a study with several wrong paths is fixed in one pass."""
    where = f"{source}: " if source else ""
    problems: list[str] = []
    for i, m in enumerate(cfg.models):
        try:
            path = m.resolved_checkpoint()
        except ConfigError as exc:
            problems.append(f"models[{i}].checkpoint: {str(exc).removeprefix('models: ')}")
            continue
        if not path.exists():
            problems.append(f"models[{i}] (name {m.name}): checkpoint {path} not found{_relative_hint(path)}; fix "
                            "the path or the working folder the study runs from")
    for i, c in enumerate(cfg.calibration):
        msg = _source_problem(c.source)
        if msg:
            problems.append(f"calibration[{i}] (label {c.label}): {msg}")
    if cfg.finetune.enabled:
        msg = _source_problem(cfg.finetune.data)
        if msg:
            problems.append(f"finetune.data: {msg}")
    if problems:
        raise DataError("\n".join(where + p for p in problems))


def load_study(path: str | Path | None, overrides: dict | None = None) -> StudyConfig:
    return load_config(StudyConfig, path, overrides)


def demo_config(out: str = "runs/demo", quick: bool = False, model: str | None = None) -> StudyConfig:
    """The ``qfair demo`` study: a shipped demo model on the built-in benchmark (no downloads)."""
    path = _ASSETS / "study_demo.yaml"
    cfg = load_config(StudyConfig, path, {"out": out})
    if model is not None:
        spec = next((m for m in cfg.models if m.name == model or m.checkpoint == BUILTIN_PREFIX + model), None)
        if spec is None:
            if model not in builtin_models():
                raise ConfigError(f"--model: unknown demo model '{model}'; shipped: {', '.join(builtin_models())}")
            spec = ModelSpec(name=model, checkpoint=BUILTIN_PREFIX + model)
        cfg = replace(cfg, models=(spec,))
    if quick:  # used by the tests: the same pipeline on a handful of images
        cfg = replace(cfg, bench=("builtin:tiny",), calib_size=8, calib_batch_size=8,
                      calibration=tuple(replace(c, size=None) for c in cfg.calibration),
                      eval=replace(cfg.eval, n_bootstrap=50, null_draws=20),
                      finetune=replace(cfg.finetune, steps=3, images=16, batch_size=8))
    return cfg
