"""Run a study stage by stage; finished stages are read back, never recomputed.

Each variant gets a run folder under ``cfg.out`` (``model.pt`` + ``quant.json``, or ``model.onnx``)
and a stage marker written only after it is complete, so an interrupted study resumes where it
stopped. Embeddings are cached on disk, so re-evaluating a finished variant costs only the metrics.

A finished stage is reused only when the settings recorded in its ``config.yaml`` equal the settings it
would be built with now (:func:`stage_settings`); otherwise the study stops before running anything
(and before rewriting the study's ``config.yaml``), unless ``recompute=True`` rebuilds the changed
stages and the stages built from them. A finished stage whose files are missing or damaged (deleted,
cut short by a crash of the machine) is rebuilt, with the stages built from it, and said so.

The study's own ``config.yaml`` describes the report files beside it: a run with other settings (or
rebuilding changed stages) removes the previous report before it records its settings, so a run stopped
half-way never leaves one settings' config beside another's report (see :meth:`_Study.start`).

A study holds its folder's lock while it runs (a second study into the same folder stops at once), and
removes the temporary files of writes that a hard kill interrupted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..runs import RunDir
from ..utils.errors import CheckpointError, ConfigError, QfairError
from .config import StudyConfig, check_paths
from .integrity import stage_damage
from .plan import Variant, plan

UNRECORDED = "(no record)"  # see _Study.report_changes
TIMINGS = "timings.json"  # beside the report: how long this run's stages took
SYNTHETIC_NOTE = ("All numbers in this report come from qfair's built-in SYNTHETIC benchmark (rendered face-like "
                  "images in four made-up groups): they demonstrate the mechanism, they are not evidence about "
                  "real faces or real demographic groups. Real conclusions need RFW or a comparable benchmark.")


@dataclass
class StudyResult:
    out: Path
    results: list[Any]
    comparisons: list[Any]
    files: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)


def _say_default(msg: str) -> None:
    print(msg, flush=True)


def _diff_keys(stored: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose recorded value differs from the value now. Only keys both have are compared: a key
    the record lacks was added to stage records by a later qfair (the setting it names was fixed then), and
    a key only the record has is one the stage is no longer built from."""
    if isinstance(stored, dict) and isinstance(now, dict):
        out: list[str] = []
        for k, v in stored.items():
            if k in now:
                out += _diff_keys(v, now[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if stored == now else [prefix or "config"]


def _moved_keys(stored: dict[str, Any], now: dict[str, Any]) -> tuple[str, ...]:
    """Keys whose change does not change a stage, because the record holds what they resolve to: the
    checkpoint's path when the digest of the weights read from it equals theirs now (``ckpt.pt`` ->
    ``./ckpt.pt``, a study moved to a machine that keeps checkpoints elsewhere), the architecture as
    spelled (``arch`` left out and guessed, ``IResNet18``) when the architecture built is recorded too, and
    the study-wide ``calib_size`` where the calibration's own image count is recorded. A change of what
    they resolve to is reported under ``float_weights`` / ``float_arch`` / ``calibration.size``."""
    moved: tuple[str, ...] = ()
    if isinstance(stored.get("calibration"), dict) and "size" in stored["calibration"]:
        # a PTQ stage calibrates on exactly calibration.size images (compared on its own): the study-wide
        # calib_size in its quant settings is then no setting of it (quantize() reads the batches given)
        moved += ("quant.calib_size",)
    if "float_weights" in stored and stored.get("float_weights") == now.get("float_weights"):
        moved += ("model.checkpoint", "model.arch") if "float_arch" in stored else ("model.checkpoint",)
    return moved


def _lookup(doc: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


class _Study:
    def __init__(self, cfg: StudyConfig, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say
        self.root = RunDir(Path(cfg.out))  # config.yaml is written by start(), after the checks
        self.cache = self.root.path / ".cache" / "embeddings"
        self.float_models: dict[str, Any] = {}
        self.models: dict[str, Any] = {}
        self._calib: dict[tuple[str, str], list] = {}
        self._digests: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def start(self, recomputed: bool = False) -> None:
        """Create the study folder and record the study's config (after :meth:`changed_stages` passed).

        ``config.yaml`` describes everything at the top of the folder: the report files there too. Those are
        derived from the stages' results and rewritten from them (cheaply: embeddings are cached) at the end
        of every run, while each stage folder records its own settings. So when the settings recorded
        differ from the ones now (:meth:`report_changes`), or ``recomputed`` stages are rebuilt (a float
        checkpoint retrained at the same path changes stages, not the study's config), the previous
        report is removed *before* the new ``config.yaml`` is written: a run stopped half-way then leaves
        the new config and no report (rerun to resume), never the new config beside the old settings'
        numbers. Writing ``config.yaml`` only together with the report would not do: the stages rebuilt
        before the stop would sit under a report of the models they replaced. A rerun with unchanged
        settings keeps the report (still true of every finished stage) until the new one replaces it."""
        removal = self.report_removal(recomputed)
        if removal is not None:
            old, why = removal
            for p in old:  # the config.yaml that describes them is still the old one while this runs
                p.unlink(missing_ok=True)
            names = ", ".join(str(p.relative_to(self.root.path)) for p in old)
            self.say(f"removed the previous report ({names}): {why}; the study writes a new one when it finishes")
        self.root = RunDir.create(self.cfg.out, self.cfg, command=f"qfair study ({self.cfg.name})",
                                  seed=self.cfg.seed)

    def report_removal(self, recomputed: bool) -> tuple[list[Path], str] | None:
        """The report files :meth:`start` removes, and why; None when it keeps them (no report, or one made with
        the settings now from stages that are not rebuilt). The run and the dry run both ask this."""
        changes = self.report_changes()  # None: no report here
        if changes is None or not (changes or recomputed):
            return None
        why = ("no readable record of its settings" if changes == [UNRECORDED] else
               f"made with other settings ({', '.join(changes)})" if changes else
               "made from the stages now rebuilt")
        return self.report_files(), why

    def report_files(self) -> list[Path]:
        """The study's top-level results (report, data files, figures, timings), as far as they exist."""
        from ..report.writer import reports_in

        timings = self.root.path / TIMINGS
        return reports_in(self.root.path) + ([timings] if timings.is_file() else [])

    def report_changes(self) -> list[str] | None:
        """Dotted keys of the study config whose value recorded in the folder's ``config.yaml`` differs from
        the one now (``[UNRECORDED]``: a report with no readable record of its settings; None: no report to
        describe). ``out`` is left out: where the folder is named from does not change what it holds."""
        if not self.report_files():
            return None
        from ..config import config_to_dict

        try:
            stored = self.root.read_config().get("config")
        except (OSError, AttributeError):  # damaged, or not a mapping
            stored = None
        if not isinstance(stored, dict):
            return [UNRECORDED]
        now = config_to_dict(self.cfg)
        return [k for k in _diff_keys(stored, now) if k != "out"]

    def resume_state(self, variants: list[Variant]) -> tuple[dict[str, str], dict[str, str]]:
        """``(damaged, changed)``: what a run would rebuild (:meth:`damaged_stages`) and what it refuses
        without ``recompute`` (:meth:`changed_stages`). The run and the dry run both ask this."""
        damaged = self.damaged_stages(variants)
        return damaged, self.changed_stages(variants, damaged)

    # ------------------------------------------------------------------ resume checks
    def stage_settings(self, v: Variant) -> dict[str, Any] | None:
        """Everything stage ``v`` is built from, as recorded in its ``config.yaml`` (None: float, no stage)."""
        cfg = self.cfg
        if v.kind == "ptq":  # KD and ONNX stages are built from a PTQ stage: a change here reaches them too
            return {"variant": v.id, "calibration": {"label": v.calib.label, "source": v.calib.source,
                                                     "size": v.calib.size or cfg.calib_size},
                    "quant": self.quant_config(v), "model": v.model, **self.float_identity(v)}
        if v.kind == "kd":
            from ..config import config_to_dict

            ft = {k: x for k, x in config_to_dict(cfg.finetune).items() if k not in ("enabled", "bits")}
            return {"variant": v.id, "start": v.parent, "finetune": ft, "model": v.model, "seed": cfg.seed,
                    **self.float_identity(v)}  # the teacher
        if v.kind == "onnx":
            return {"variant": v.id, "start": v.parent, "target": cfg.export.target,
                    "parity": {"source": v.calib.source, "images": cfg.calib_size,
                               "batch_size": cfg.calib_batch_size},
                    "model": v.model, "seed": cfg.seed, **self.float_identity(v)}
        return None

    def changed_stages(self, variants: list[Variant], damaged: dict[str, str] | None = None) -> dict[str, str]:
        """Finished stages whose recorded settings differ from the ones the config gives now, and the
        finished stages built from them: ``{variant id: what changed}``. Stages in ``damaged`` (see
        :meth:`damaged_stages`) are rebuilt anyway and not compared."""
        from ..config import config_to_dict

        changed: dict[str, str] = {}
        for v in variants:
            if v.kind == "float" or not self.root.stage_done(v.id) or v.id in (damaged or {}):
                continue
            if v.parent in changed:
                changed[v.id] = f"built from the changed stage {v.parent}"
                continue
            stored = RunDir(self.folder(v)).read_config().get("config")
            if stored is None:  # no record (written by an older qfair): nothing to compare
                continue
            now = config_to_dict(self.stage_settings(v))
            diff = [k for k in _diff_keys(stored, now) if k not in _moved_keys(stored, now)]
            if diff:
                changed[v.id] = "; ".join(f"{k}: {_lookup(stored, k)!r} -> {_lookup(now, k)!r}" for k in diff)
        return changed

    def damaged_stages(self, variants: list[Variant]) -> dict[str, str]:
        """Finished stages whose files are missing or unreadable, and the finished stages built from them:
        ``{variant id: what is wrong}``. Cheap checks (files exist, records parse, archives complete), so a
        resumed study does not stop half-way on a stage it could rebuild."""
        damaged: dict[str, str] = {}
        for v in variants:
            if v.kind == "float" or not self.root.stage_done(v.id):
                continue
            if v.parent in damaged:
                damaged[v.id] = f"built from the damaged stage {v.parent}"
                continue
            if v.parent is not None and not self.root.stage_done(v.parent):  # its marker was removed by hand
                damaged[v.id] = f"built from {v.parent}, which is not marked finished and is built again"
                continue
            why = stage_damage(self.folder(v), v.kind)
            if why:
                damaged[v.id] = why
        return damaged

    def folders(self, variants: list[Variant]) -> dict[Path, str]:
        """Every folder the study writes into, and what it holds."""
        root = self.root.path
        out = {root: "the study folder", root / ".stages": "stage markers", self.cache.parent: "caches",
               self.cache: "the embedding cache", root / "figures": "figures"}
        out.update({self.folder(v): f"stage {v.id}" for v in variants if v.kind != "float"})
        return out

    def check_layout(self, variants: list[Variant]) -> None:
        """Fail before any work when something the study writes is blocked: a file where it writes a folder,
        or a folder where it writes a file (otherwise the study would stop after building a stage)."""
        from ..report.writer import DATA_FILES
        from ..utils.io import output_file

        root = self.root.path
        for path, what in self.folders(variants).items():
            if path.exists() and not path.is_dir():
                raise QfairError(f"{path} is a file, but the study writes a folder there ({what}). Nothing was "
                                 "run: move or delete that file, or choose another output folder.")
        if root.is_dir():
            for name in ("config.yaml", "report.md", *DATA_FILES, TIMINGS):
                output_file(root / name)

    def forget(self, variant_id: str) -> None:
        """Drop the finished marker of a stage so that it is rebuilt (its files are overwritten then)."""
        (self.root.path / ".stages" / f"{variant_id}.done").unlink(missing_ok=True)

    # ------------------------------------------------------------------ building blocks
    def float_model(self, v: Variant):
        if v.model.name not in self.float_models:
            from ..models import load_model

            path = v.model.resolved_checkpoint()
            if not path.exists():
                raise CheckpointError(f"model '{v.model.name}': checkpoint {path} not found")
            self.float_models[v.model.name] = load_model(path, arch=v.model.arch)
            from ..utils.digest import model_digest

            # taken on load, before any stage could touch the model
            self._digests[v.model.name] = model_digest(self.float_models[v.model.name])
        return self.float_models[v.model.name]

    def float_identity(self, v: Variant) -> dict[str, Any]:
        """What a stage's float model is: the digest of its weights, and the architecture built for them
        (registry name and arguments, whether ``arch`` was given or guessed)."""
        arch = getattr(self.float_model(v), "qfair_arch", None)
        return {"float_weights": self.float_digest(v), "float_arch": arch or v.model.arch}

    def float_digest(self, v: Variant) -> str:
        """Digest of the float model's weights as loaded: a checkpoint replaced at the same path (retrained)
        is a changed setting, not a finished stage to resume."""
        self.float_model(v)
        return self._digests[v.model.name]

    def calib_batches(self, v: Variant, source: str, n: int, batch_size: int):
        key = (v.model.name, f"{source}|{n}|{batch_size}")
        if key not in self._calib:
            from ..data import calibration_batches

            t = time.time()
            self._calib[key] = calibration_batches(source, n, batch_size, model=self.float_model(v), seed=self.cfg.seed)
            self.timings[f"calibration data {source}"] = round(time.time() - t, 2)
        return self._calib[key]

    def quant_config(self, v: Variant):
        from ..quant import QuantConfig

        return QuantConfig(bits=v.bits, recipe=v.recipe, observer=self.cfg.observer, ptq=tuple(self.cfg.ptq),
                           calib_size=self.cfg.calib_size, calib_batch_size=self.cfg.calib_batch_size,
                           seed=self.cfg.seed)

    def folder(self, v: Variant) -> Path:
        return self.root.path / v.id

    # ------------------------------------------------------------------ stages
    def build(self, v: Variant):
        """The model of a variant (torch module, or the path of an ONNX graph)."""
        from ..quant import load_quantized, quantize, save_quantized

        if v.kind == "float":
            return self.float_model(v)
        folder = self.folder(v)
        if self.root.stage_done(v.id):
            return folder / "model.onnx" if v.kind == "onnx" else load_quantized(folder)
        t = time.time()
        if v.kind == "ptq":
            batches = self.calib_batches(v, v.calib.source, v.calib.size or self.cfg.calib_size,
                                         self.cfg.calib_batch_size)
            model = quantize(self.float_model(v), self.quant_config(v), batches)
            model.qfair_quant["calib"] = v.calib.label
            RunDir.create(folder, self.stage_settings(v), command="qfair study: ptq", seed=self.cfg.seed)
            save_quantized(model, folder)
            result = model
        elif v.kind == "kd":
            result = self._finetune(v, folder)
        else:  # onnx
            result = self._export(v, folder)
        self.root.mark_done(v.id, {"seconds": round(time.time() - t, 2)})
        self.timings[v.id] = round(time.time() - t, 2)
        if v.kind != "onnx":  # evaluate the model as saved, exactly as a resumed run will (same results file)
            result = load_quantized(folder)
        return result

    def _finetune(self, v: Variant, folder: Path):
        import torch

        from ..quant import load_quantized, save_quantized
        from ..train import kd_finetune

        ft = self.cfg.finetune
        student = load_quantized(self.folder_of(v.parent))
        batches = self.calib_batches(v, ft.data, ft.images, ft.batch_size)
        images = torch.cat([b[0] if isinstance(b, (list, tuple)) else b for b in batches])
        RunDir.create(folder, self.stage_settings(v), command="qfair study: kd", seed=self.cfg.seed)
        res = kd_finetune(student, self.float_model(v), images, steps=ft.steps, lr=ft.lr, batch_size=ft.batch_size,
                          range_update_steps=ft.range_update_steps, seed=self.cfg.seed, freeze_bn=ft.freeze_bn,
                          weight_decay=ft.weight_decay)
        student.eval()
        student.qfair_quant["calib"] = v.calib.label
        student.qfair_quant["finetune"] = {"steps": ft.steps, "data": ft.data, "final_loss": float(res.loss)}
        save_quantized(student, folder)
        return student

    def _export(self, v: Variant, folder: Path):
        from ..export import export_onnx

        batches = self.calib_batches(v, v.calib.source, self.cfg.calib_size, self.cfg.calib_batch_size)
        RunDir.create(folder, self.stage_settings(v), command="qfair study: onnx", seed=self.cfg.seed)
        import torch

        images = torch.cat([b[0] if isinstance(b, (list, tuple)) else b for b in batches])
        return export_onnx(self.folder_of(v.parent), target=self.cfg.export.target, out=folder / "model.onnx",
                           parity_data=images)

    def folder_of(self, variant_id: str) -> Path:
        return self.root.path / variant_id

    def evaluate(self, v: Variant, model: Any, vset: Any):
        from ..eval import evaluate

        e = self.cfg.eval
        meta = {"bits": v.bits_label, "calibration": v.calib_label, "recipe": v.recipe or "-",
                "variant": v.id, "kind": v.kind, "model": v.model.name}
        return evaluate(model, vset, name=v.id, backend="onnxruntime" if v.kind == "onnx" else None,
                        flip=e.flip, batch_size=e.batch_size, cache_dir=self.cache, mode=e.mode,
                        target_fmr=e.target_fmr, n_bootstrap=e.n_bootstrap, seed=self.cfg.seed, meta=meta)


def preflight(cfg: StudyConfig, source: str | None = None) -> list[Any]:
    """Check every checkpoint, data path and benchmark ``cfg`` reads, and open the benchmarks (errors name
    ``source`` and the entry). Nothing is written."""
    from ..data import open_benchmark

    check_paths(cfg, source)
    benches = []
    for i, b in enumerate(cfg.bench):
        try:
            benches.append(open_benchmark(b))
        except QfairError as exc:
            raise type(exc)(f"{source + ': ' if source else ''}bench[{i}]: {exc}") from None
    return benches


def run_study(cfg: StudyConfig, say: Callable[[str], None] | None = None, *, recompute: bool = False,
              source: str | None = None) -> StudyResult:
    """Run (or resume) every stage of ``cfg`` and write the combined report into ``cfg.out``.

    Before any stage runs: every model checkpoint, data path and benchmark is checked (errors name
    ``source``, the study's YAML file, and the entry), and finished stages whose recorded settings differ
    from ``cfg``'s are an error -- or, with ``recompute=True``, are rebuilt with the stages built from them.
    """
    from ..utils.io import output_folder

    say = say or _say_default
    t0 = time.time()
    benches = preflight(cfg, source)
    st = _Study(cfg, say)
    variants = plan(cfg)
    st.check_layout(variants)
    output_folder(st.root.path)
    with st.root.lock():  # released when this returns or raises, and by the OS when the process is killed
        return _run_locked(st, variants, benches, recompute=recompute, source=source, t0=t0)


def _run_locked(st: _Study, variants: list[Variant], benches: list[Any], *, recompute: bool, source: str | None,
                t0: float) -> StudyResult:
    from ..eval import compare
    from ..report.writer import write_report
    from ..utils.io import remove_stale_temps

    cfg, say = st.cfg, st.say
    damaged, changed = st.resume_state(variants)
    if changed and not recompute:
        lines = "\n".join(f"  {vid}: {why}" for vid, why in changed.items())
        raise ConfigError(
            f"{st.root.path} holds finished stages made with other settings than "
            f"{source or 'the study config'} gives now:\n{lines}\n"
            "Nothing was run or changed. Keep those results by choosing a new output folder ("
            f"{f'out: in {source} or ' if source else ''}--out DIR), or rerun with --recompute to rebuild these "
            "stages (their results are replaced).")
    stale = remove_stale_temps(*st.folders(variants))
    if stale:
        say(f"removed {len(stale)} temporary file(s) left by an interrupted run")
    for vid, why in damaged.items():
        say(f"rebuilding {vid}: marked finished, but {why}")
        st.forget(vid)
    for vid, why in changed.items():
        say(f"recomputing {vid} ({why})")
        st.forget(vid)
    st.start(recomputed=bool(changed))
    results = []
    for i, v in enumerate(variants, 1):
        resumed = st.root.stage_done(v.id)
        t = time.time()
        model = st.build(v)
        for vset in benches:
            r = st.evaluate(v, model, vset)
            results.append(r)
            accs = "  ".join(f"{g} {a:.2f}" for g, a in r.accuracies().items())
            say(f"[{i}/{len(variants)}] {v.id:<34} {v.bits_label:<5} {v.calib_label:<26} {accs}  "
                f"STD {r.fairness.std:.2f}  SER {r.fairness.ser:.2f}"
                f"{'  (resumed)' if resumed else ''}  [{time.time() - t:.0f}s]")
        if v.kind != "float":  # keep memory flat on long studies
            del model
    comparisons = []
    for m in cfg.models:
        mine = [r for r in results if r.meta.get("model") == m.name]
        if len(mine) < 2:  # a float-only study: nothing to compare
            continue
        comparisons += compare(mine, reference=f"{m.name}-fp32", seed=cfg.seed,
                               n_bootstrap=cfg.eval.n_bootstrap, null_draws=cfg.eval.null_draws)
    notes_title = f"qfair study: {cfg.name}"
    files = write_report(st.root.path, results, comparisons, title=notes_title,
                         preface=SYNTHETIC_NOTE if cfg.synthetic_benchmark else None)
    st.timings["total"] = round(time.time() - t0, 1)
    st.root.write_json(TIMINGS, st.timings)
    return StudyResult(out=st.root.path, results=results, comparisons=comparisons, files=files, timings=st.timings)
