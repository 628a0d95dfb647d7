"""Entry points: :func:`qat` (``qfair qat``), :func:`distill` (``qfair distill``), :func:`kd_finetune`.

Both commands load (and check) the teacher first -- a teacher that does not load is an error before
anything else happens (the reference code swallowed it and distilled from a random network, README
references [5]) -- then build the student, check that the embeddings can be compared, build the data,
and call :func:`qfair.train.fit`. The run folder gets ``config.yaml``, ``metrics.jsonl``,
``checkpoints/``, the trained model (``model.pt`` + ``quant.json`` for a quantized student, so
``qfair evaluate`` / ``qfair export`` take the folder) and ``train.json`` (summary).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.errors import CheckpointError, ConfigError, DataError, QfairError, require_module
from .batches import IndexedSource
from .checks import _KEEP_ON_RESUME
from .config import DistillConfig, QatConfig, TrainConfig
from . import ranges as R
from .distributed import dist_info, main_then_others, resolve_device
from .loop import FitResult, fit
from .teacher import TeacherCache, check_pair, embedding_size


def train_config(cfg: Any) -> TrainConfig:
    """The :class:`TrainConfig` part of a QatConfig / DistillConfig."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})


def load_teacher(path: str | None, arch: str | None, *, what: str = "teacher", arch_flag: str = "--teacher-arch",
                 origin: str = "") -> nn.Module:
    """Load the float teacher (or another float model of the run: ``what``) or raise CheckpointError (never fall
    back to a random network). ``arch_flag`` is the option that sets ``arch`` (named in the hints), ``origin``
    says where the path came from when the user did not type it."""
    if not path:
        raise ConfigError("no teacher: pass --teacher CHECKPOINT (or --model for qat)")
    from ..models import load_model

    try:
        teacher = load_model(path, arch, arch_flag=arch_flag)
    except QfairError as exc:
        raise CheckpointError(f"{what} {path}{origin} could not be loaded, so training did not start: {exc}") \
            from None
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{what} {path}{origin} could not be loaded ({type(exc).__name__}: {exc}); "
                              f"training did not start. Check the file and {arch_flag}") from None
    if R.is_quantized(teacher):  # a packed .qpk loads as its quantized model
        raise CheckpointError(f"{what} {path}{origin} is a quantized model; the {what} must be the float model "
                              "(the checkpoint it was quantized from), so training did not start")
    return teacher.eval()


def _calib_batches(spec: str, n: int, seed: int, model: nn.Module) -> list[torch.Tensor]:
    from .batches import to_model_input
    from .data import load_train_images

    imgs = load_train_images(spec, n, seed=seed, model=model).images[:n]
    return [to_model_input(imgs[i:i + 32]) for i in range(0, len(imgs), 32)]


def _saved_step(path: Path) -> str:
    """``"at step N"`` (or ``"finished at step N"``) for a training checkpoint, ``""`` if it cannot be read."""
    from .checkpoint import load_checkpoint

    try:
        ck = load_checkpoint(path)
    except QfairError:
        return ""
    step = ck.get("step")
    return "" if step is None else f"{'finished ' if ck.get('done') else ''}at step {int(step)}"


PATH_KEYS = ("student", "model", "teacher", "student_init", "teacher_cache")  # settings that are a file or folder
SPEC_KEYS = ("data", "mix_data", "bench", "calib")  # settings that may be KIND:PATH


def _path_part(key: str, value: Any) -> tuple[str, str] | None:
    """``(prefix, path)`` of a file setting: ``("", value)`` for a path key, ``("real:", "imgs")`` for a spec
    (a spec without a kind: ``("", value)``); None for a setting that names no path."""
    if key not in PATH_KEYS + SPEC_KEYS or not isinstance(value, str) or not value:
        return None
    head, sep, rest = value.partition(":")
    return (head + sep, rest) if key in SPEC_KEYS and sep else ("", value)


def _rebase(key: str, value: Any, started: Path) -> Any:
    """``value`` with its relative path read from ``started`` (the folder the run was started in) when it names
    nothing from the current folder but does from there; else ``value`` unchanged. A spec (``real:imgs``) keeps
    its kind; ``builtin`` specs, bare spec words and ``auto`` / ``none`` name no path."""
    part = _path_part(key, value)
    if part is None or value.lower() in ("auto", "none", "null", "off"):
        return value
    prefix, path = part
    if key in SPEC_KEYS and (not prefix or prefix.startswith("builtin")):
        return value
    p = Path(path)
    if not path or p.is_absolute() or p.exists() or not (started / p).exists():
        return value
    return prefix + str(started / p)


def _resolved(key: str, value: Any) -> Any:
    """A setting compared on resume: a path that exists as its resolved absolute path (the same file typed
    another way is the same setting), anything else as it is."""
    part = _path_part(key, value)
    if part is None:
        return value
    prefix, path = part
    try:
        return prefix + str(Path(path).resolve()) if path and Path(path).exists() else value
    except OSError:
        return value


def rebase_settings(saved: dict[str, Any], started_in: Any) -> dict[str, Any]:
    """A resumed run's settings with relative paths that the current folder lacks read from ``started_in`` (the
    folder recorded when the run started), so a run resumes from any folder; unchanged without one."""
    if not isinstance(started_in, str) or not started_in or Path.cwd() == Path(started_in):
        return saved
    started = Path(started_in)
    out = dict(saved)
    for k in PATH_KEYS + SPEC_KEYS:
        if k in out:
            out[k] = _rebase(k, out[k], started)
    return out


def resumed_settings(out: str | Path, command: str) -> dict[str, Any] | None:
    """The settings the run in ``out`` was started with: the ``config:`` section of its config.yaml (None when
    that file records none), relative paths read from the folder it was started in when the current folder
    lacks them (:func:`rebase_settings`). ConfigError when there is no run to resume or ``out`` holds another
    command's run; DamagedRunFileError, naming the file, when config.yaml cannot be read."""
    from ..runs import RunDir

    out = Path(out)
    if not (out / "config.yaml").exists():
        raise ConfigError(f"--resume: there is nothing to resume in {out} (no run was started there: "
                          f"{out / 'config.yaml'} does not exist); check --out, or drop --resume to start a new run")
    other = RunDir(out).foreign_command(command)
    if other:
        raise ConfigError(f"--resume: {out} holds a `{other.split(' --')[0]}` run, not a `{command}` run; check --out "
                          "and the command")
    stored = RunDir.open(out).read_config()  # a damaged config.yaml stops the resume here, naming the file
    saved = stored.get("config") if isinstance(stored, dict) else None
    return rebase_settings(saved, stored.get("started_in")) if isinstance(saved, dict) else None


def started_in(out: str | Path) -> str | None:
    """The folder the run in ``out`` was started in (recorded in its config.yaml), None if not recorded."""
    from ..runs import RunDir

    try:
        where = RunDir(Path(out)).read_config().get("started_in")
    except QfairError:
        return None
    return where if isinstance(where, str) else None


def _check_resume(out: str | Path, cfg: Any, resume: bool, command: str) -> None:
    """Checked before any heavy work: a fresh run never overwrites a run folder that holds checkpoints or another
    run's results, a resumed run needs a run to resume (of this command, with a readable checkpoint), and it must
    use the settings that run was started with."""
    from ..config import config_to_dict
    from ..runs import RunDir
    from .checkpoint import load_checkpoint

    out = Path(out)
    last = out / "checkpoints" / "last.pt"
    if not resume and last.exists():
        at = _saved_step(last)
        raise ConfigError(f"{out} holds a run{' ' + at if at else ''} ({last}); pass --resume to continue it, "
                          "or choose another --out (nothing was overwritten)")
    student = getattr(cfg, "student", None)
    if student and out.exists() and Path(student).exists() and out.resolve() == Path(student).resolve():
        raise ConfigError(f"--out {out} is the student's run folder (--student): the fine-tuned model would replace "
                          "the model it starts from; choose another --out")
    if not resume:
        other = RunDir(out).foreign_command(command)
        done = [n for n in ("model.pt", "quant.json", "train.json") if (out / n).exists()]
        if other or done:
            what = f"a `{other.split(' --')[0]}` run" if other else f"a finished run ({', '.join(done)})"
            raise ConfigError(f"{out} holds {what}; `{command}` writes config.yaml, model.pt and quant.json there and "
                              "would replace it: choose another --out (nothing was overwritten)")
        return
    saved = resumed_settings(out, command)
    now = config_to_dict(cfg)
    if saved is not None:
        diff = sorted(k for k in set(saved) | set(now) if k not in _KEEP_ON_RESUME
                      and _resolved(k, saved.get(k)) != _resolved(k, now.get(k)))
        if diff:
            shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
            raise ConfigError(f"--resume: the settings differ from the run in {out} (keys: {', '.join(diff)}; "
                              f"{shown}{'...' if len(diff) > 5 else ''}); a run resumes with the settings it was "
                              f"started with (its config.yaml: `{command} --out {out} --resume` alone uses them), and "
                              f"only {', '.join(_KEEP_ON_RESUME)} may change. Drop the other changes, or start a new "
                              "run in another --out")
    if last.exists():
        load_checkpoint(last)  # a damaged checkpoint stops here, not after the models and data are loaded


def _check_world(batch_size: int) -> None:
    """Under torchrun every rank takes batch_size / world of each batch: refuse a split before any work."""
    world = dist_info().world
    if world > 1 and batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} cannot be split evenly over {world} processes; use a multiple "
                          f"of {world} (it is the total batch over all processes)")


def _prepare_run(out: str | Path, cfg: Any, command: str, resume: bool) -> Path:
    from ..runs import RunDir

    out = Path(out)
    if resume and (out / "config.yaml").exists():
        return out
    main_then_others(lambda: RunDir.create(out, cfg, command=command, seed=cfg.seed,
                                           extra={"started_in": str(Path.cwd())}),
                     what=f"creating the run folder {out}", device=resolve_device(cfg.device, dist_info()))
    return out


def _evaluator(cfg: Any):
    if not cfg.bench:
        return None
    from .evaluation import group_evaluator

    return group_evaluator(cfg.bench, cfg.best_metric)


def _summary(res: FitResult, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    from ..utils.io import atomic_write_json

    doc = {"steps": res.steps, "final_loss": res.loss, "images_per_s": res.images_per_s, "best": res.best,
           "resumed_from": res.resumed_from, "out": str(out), **extra}
    if dist_info().main:
        atomic_write_json(out / "train.json", doc)
    return doc


def _as_config(cls: type, cfg: Any, what: str) -> Any:
    """``cfg`` as ``cls``: itself, or built (and validated) from a mapping of its keys."""
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, Mapping):
        from ..config import config_from_dict

        return config_from_dict(cls, cfg, source=f"{what}() cfg")
    raise ConfigError(f"{what}: cfg must be a qfair.train.{cls.__name__} or a mapping of its keys, "
                      f"got {type(cfg).__name__}")


def _qat_teacher(cfg: QatConfig) -> tuple[str, str | None, str, str]:
    """(path, arch, the option that sets arch, where the path came from) of the qat teacher. ``--arch`` is the
    architecture of ``--model``: it applies to the teacher only when the teacher is ``--model``."""
    from ..runs import RunDir

    if cfg.teacher:
        return cfg.teacher, cfg.teacher_arch, "--teacher-arch", ""
    if cfg.model:
        return cfg.model, cfg.teacher_arch or cfg.arch, "--teacher-arch" if cfg.teacher_arch else "--arch", ""
    # the quantize (or qat) run of --student records the float model it started from
    stored = (RunDir.open(cfg.student).read_config() or {}).get("config", {}) or {}
    path = stored.get("teacher") or stored.get("model")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{cfg.student}/config.yaml does not name its float model; pass --teacher CHECKPOINT")
    arch = cfg.teacher_arch or (stored.get("teacher_arch") if stored.get("teacher") else stored.get("arch"))
    return path, arch, "--teacher-arch", f" (named in {Path(cfg.student) / 'config.yaml'}; --teacher overrides it)"


def qat(cfg: QatConfig | Mapping[str, Any], out: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Quantization-aware KD fine-tuning of a quantized student toward its float teacher (``qfair qat``).

    ``cfg``: a :class:`QatConfig` or a mapping of its keys (``student`` run folder or ``model`` checkpoint,
    ``teacher``, ``data``, ``steps``, ...). Writes the run folder ``out`` (refused when it holds a run, unless
    ``resume``); returns the summary written to ``out/train.json``. Load the result with
    ``qfair.load_quantized(out)``."""
    from ..quant import QuantConfig, load_quantized, quantize, save_quantized

    cfg = _as_config(QatConfig, cfg, "qat")
    _check_resume(out, cfg, resume, "qfair qat")
    _check_world(cfg.batch_size)
    teacher_path, teacher_arch, arch_flag, origin = _qat_teacher(cfg)
    teacher = load_teacher(teacher_path, teacher_arch, arch_flag=arch_flag, origin=origin)
    if cfg.student:
        student = load_quantized(cfg.student)
    else:
        float_model = (load_teacher(cfg.model, cfg.arch, what="model", arch_flag="--arch")
                       if cfg.model != teacher_path else teacher)  # quantize() prepares a copy
        qcfg = QuantConfig(wbits=cfg.wbits, abits=cfg.abits, recipe=cfg.recipe, seed=cfg.seed)
        student = quantize(float_model, qcfg, _calib_batches(cfg.calib, cfg.calib_n, cfg.seed, float_model))
    check_pair(student, teacher)
    from .data import build_source

    source = build_source(cfg.data, cfg.data_n, cfg.batch_size, seed=cfg.seed, hflip=cfg.hflip,
                          mix_data=cfg.mix_data, mix_ratio=cfg.mix_ratio, model=teacher)
    out = _prepare_run(out, cfg, "qfair qat", resume)
    res = fit(student, teacher, source, train_config(cfg), out_dir=out, resume=resume, evaluator=_evaluator(cfg),
              description="qat")
    if dist_info().main:
        save_quantized(student, out)
    return _summary(res, out, {"command": "qat", "teacher": str(teacher_path), "quant": student.qfair_quant})


def _check_student_arch(name: str) -> None:
    """An unknown student architecture is named with its option before the teacher loads."""
    from ..models import MODELS
    from ..utils.registry import UnknownNameError

    try:
        MODELS.canonical(name)
    except UnknownNameError as exc:
        raise ConfigError(f"--student-arch (student_arch): {exc}") from None


def distill(cfg: DistillConfig | Mapping[str, Any], out: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Distil a teacher into a (smaller) student architecture, optionally quantized at the same time
    (``qfair distill``).

    ``cfg``: a :class:`DistillConfig` or a mapping of its keys. Writes the run folder ``out``: ``model.pt``
    (a float student: ``qfair.load_model(out / "model.pt", arch=cfg.student_arch)``; a quantized one also
    gets quant.json: ``qfair.load_quantized(out)``); returns the summary written to ``out/train.json``."""
    from ..models import create_model
    from ..quant import QuantConfig, quantize, save_quantized
    from ..utils.io import atomic_torch_save

    cfg = _as_config(DistillConfig, cfg, "distill")
    _check_resume(out, cfg, resume, "qfair distill")
    _check_world(cfg.batch_size)
    _check_student_arch(cfg.student_arch)
    teacher = load_teacher(cfg.teacher, cfg.teacher_arch)
    t_dim = embedding_size(teacher)
    s_dim = cfg.embedding_size or t_dim
    torch.manual_seed(cfg.seed)
    if cfg.student_init:
        student = load_teacher(cfg.student_init, cfg.student_arch, what="student_init", arch_flag="--student-arch")
    else:
        student = create_model(cfg.student_arch, **{**({"num_features": s_dim} if s_dim else {}), **cfg.student_kwargs})
    projection = None
    if cfg.student_init and cfg.embedding_size and embedding_size(student) not in (None, cfg.embedding_size):
        raise ConfigError(f"--student-init {cfg.student_init} embeds in {embedding_size(student)}-d, but "
                          f"--embedding-size is {cfg.embedding_size}; set --embedding-size 0 (the checkpoint decides) "
                          "or pass another checkpoint")
    s_dim = embedding_size(student)
    if cfg.projection:
        if s_dim is None or t_dim is None:
            raise ConfigError("projection needs both models to declare embedding_size")
        projection = nn.Linear(s_dim, t_dim, bias=False)
    check_pair(student, teacher, projection)
    from .data import build_source

    source = build_source(cfg.data, cfg.data_n, cfg.batch_size, seed=cfg.seed, hflip=cfg.hflip,
                          mix_data=cfg.mix_data, mix_ratio=cfg.mix_ratio, model=teacher)
    if cfg.quantize:
        first = source.first if hasattr(source, "first") else source
        calib = [first.load(torch.arange(i, min(i + 32, len(first)))) for i in range(0, min(256, len(first)), 32)]
        student = quantize(student, QuantConfig(wbits=cfg.wbits, abits=cfg.abits, recipe=cfg.recipe, seed=cfg.seed),
                           calib)
    out = _prepare_run(out, cfg, "qfair distill", resume)
    cache = None
    if cfg.teacher_cache and cfg.teacher_cache.lower() not in ("null", "none", "off"):
        cache_dir = out / "teacher_cache" if cfg.teacher_cache == "auto" else Path(cfg.teacher_cache)
        device = resolve_device(cfg.device, dist_info())  # the run's device (as fit resolves it); kept on the CPU
        def build() -> TeacherCache:  # rank 0 computes and stores; the others then read the file
            return TeacherCache.build(teacher, source, cache_dir, device=device)

        cache = main_then_others(build, build, what=f"building the teacher cache in {cache_dir}", device=device)
    res = fit(student, None if cache is not None else teacher, source, train_config(cfg), projection=projection,
              out_dir=out, resume=resume, evaluator=_evaluator(cfg), teacher_cache=cache, description="distill")
    if dist_info().main:
        if cfg.quantize:
            save_quantized(student, out)
        else:
            atomic_torch_save(student.state_dict(), out / "model.pt")
        if projection is not None:
            atomic_torch_save(projection.state_dict(), out / "projection.pt")
    return _summary(res, out, {"command": "distill", "teacher": cfg.teacher, "student_arch": cfg.student_arch,
                               "teacher_cache": cache.key if cache is not None else None})


def kd_finetune(student: nn.Module, teacher: nn.Module, batches: Any, *, steps: int = 200, lr: float = 0.01,
                batch_size: int = 32, range_update_steps: int | None = None, seed: int = 0,
                out_dir: str | Path | None = None, **overrides: Any) -> FitResult:
    """Quick KD fine-tuning for demos and notebooks (CPU, a few hundred steps).

    ``batches``: a ``TrainSplit``-like object (``images``, ``labels``, ``groups``, ``group_names``), an
    image tensor (N, 3, H, W) (uint8 or normalised float), a source, or any iterable of batches.
    Activation ranges track for ``range_update_steps`` (default: a quarter of the steps, at most 300).
    ``overrides`` are :class:`TrainConfig` fields (e.g. ``fair_kd=True``, ``kd_loss="cosine"``).
    Weight decay defaults to 0 here (the reference recipe's 5e-4 is for epochs of training): over a few
    hundred steps from a trained model, decay toward zero moves the student away from its teacher faster
    than a KD loss of ~1e-4 pulls it back (demo MobileFaceNet W6A6, frozen BN, 100 steps at lr 0.00625:
    the held-out KD loss rose with 5e-4 and fell with 0; tools/bench_train.py --acceptance).

    ``student`` (trained in place; usually ``qfair.quantize(...)``'s result) and ``teacher`` (the float
    model, not modified) are ``nn.Module`` objects; save a quantized student with ``qfair.save_quantized``.
    """
    require_module(student, "kd_finetune: student must be", error=ConfigError,
                   load_with="qfair.load_quantized / qfair.load_model; the student is trained in place, so it "
                             "must be an object you keep")
    require_module(teacher, "kd_finetune: teacher must be", error=ConfigError, load_with="qfair.load_model")
    if isinstance(batches, torch.Tensor) and (batches.dim() != 4 or not len(batches)):
        raise DataError(f"kd_finetune: an image tensor must be (N, 3, H, W) with N >= 1 (qfair face models: "
                        f"H = W = 112), got {tuple(batches.shape)}")
    if hasattr(batches, "images") and hasattr(batches, "labels") and not hasattr(batches, "epoch"):
        batches = IndexedSource(batches.images, batches.labels, getattr(batches, "groups", None),
                                batch_size=min(batch_size, len(batches.images)), seed=seed,
                                hflip=overrides.get("hflip", True), group_names=getattr(batches, "group_names", None))
    elif isinstance(batches, torch.Tensor):
        batches = IndexedSource(batches, batch_size=min(batch_size, len(batches)), seed=seed,
                                hflip=overrides.get("hflip", True))
    if range_update_steps is None:
        range_update_steps = min(300, steps // 4)
    overrides.setdefault("checkpoint_every", 0)
    overrides.setdefault("weight_decay", 0.0)
    return fit(student, teacher, batches, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
               range_update_steps=range_update_steps, out_dir=out_dir, **overrides)
