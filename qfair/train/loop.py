"""The fine-tuning loop, :func:`fit`: distillation (+ optional margin head) with resumable checkpoints.

One step (0-based ``s``): lr = ``lr_at(s)``; activation ranges track while ``s < range_update_steps``
and are frozen after; the batch is global batch ``s`` of the deterministic data order (sharded over
ranks); teacher embeddings come from the cache or a no-grad forward; loss = margin + lambda * KD with
optional fairness weights (the margin head in float32, also under AMP); backward; clip the gradient
norm of the student (+ projection) -- not the margin head's: the reference recipes (ElasticFace,
arcface_torch) clip the backbone only --; stop on a NaN / Inf gradient; SGD step; then log / evaluate
/ checkpoint. A checkpoint after step ``s`` holds everything the next step depends on (weights,
optimizer, observer ranges, fairness weights, RNG states, data position), so ``resume=True`` ends with
the same weights as an uninterrupted run (CPU, same thread count).
"""
from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import config_from_dict, config_to_dict
from ..utils.errors import CheckpointError, ConfigError, DataError, QuantError
from ..utils.io import to_json
from . import ranges as R
from .batches import as_batch, as_source
from .checks import (check_labels, check_same_settings, diverged, diverged_in_layer, labels_of_batches,
                     single_pass)
from .checkpoint import fork_rng, load_checkpoint, load_module_state, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import all_reduce_sum, barrier, dist_info, resolve_device
from .fairness import GroupKDWeighter
from .heads import MarginHead, create_head
from .losses import global_margin_mean
from .monitor import MetricsLog, Progress
from .optim import lr_at, make_sgd, scaled_lr, set_lr
from .step import DistillStep, freeze_batchnorm
from .teacher import check_pair, embedding_size

# evaluator(model) -> (score, details): higher score is better (see qfair.train.evaluation)
Evaluator = Callable[[nn.Module], "tuple[float, dict[str, Any]]"]


@dataclass
class FitResult:
    """What :func:`fit` returns (the student is trained in place)."""

    steps: int
    loss: float
    images_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    out_dir: Path | None = None
    resumed_from: int | None = None


def _plain(obj: Any) -> Any:
    """JSON round trip: numpy scalars etc. become plain values a weights-only loader accepts."""
    return json.loads(to_json(obj))


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def fit(student: nn.Module, teacher: nn.Module | None, data: Any, cfg: TrainConfig | None = None, *,
        head: nn.Module | None = None, projection: nn.Module | None = None, out_dir: str | Path | None = None,
        resume: bool = False, evaluator: Evaluator | None = None, group_names: Sequence[str] | None = None,
        teacher_cache: Any = None, callbacks: Sequence[Callable[[int, dict], None]] = (),
        description: str = "fine-tune", **overrides: Any) -> FitResult:
    """Fine-tune ``student`` toward ``teacher`` on ``data`` (a source from ``qfair.train.batches`` or any
    iterable of (B,3,112,112) tensors / (images, labels[, groups]) tuples). ``overrides`` replace
    fields of ``cfg``. Writes ``metrics.jsonl`` and ``checkpoints/{last,best}.pt`` under ``out_dir``.
    Seeds torch / numpy / random with ``cfg.seed`` first (initialisation and augmentation are reproducible).

    The total batch of the linear lr scaling rule is the source's ``batch_size``; for the user's batches
    (which have none) it is the size of the first batch (``cfg.batch_size`` is not used for them).
    ``teacher_cache`` needs batches that carry dataset indices (an indexed source, the one the cache was
    built from)."""
    if overrides or cfg is None:  # validated like a config file: unknown keys and bad values are named
        cfg = config_from_dict(TrainConfig, {**config_to_dict(cfg or TrainConfig()), **overrides},
                               source="fit() arguments")
    if out_dir is not None and not resume and (Path(out_dir) / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"out_dir {out_dir} holds a fine-tuning run ({Path(out_dir) / 'checkpoints' / 'last.pt'}); "
                          "pass resume=True to continue it, or choose another out_dir (nothing was overwritten)")
    info = dist_info()
    device = resolve_device(cfg.device, info)
    _seed_all(cfg.seed)
    source = as_source(data, group_names)
    group_names = list(group_names or getattr(source, "group_names", None) or [])
    bpe = source.batches_per_epoch()
    batch_total = getattr(source, "batch_size", None)
    first = None  # the first global batch, looked at only where a setting depends on it
    if teacher_cache is not None or (not batch_total and (cfg.lr is None or info.active)):
        first = _first_batch(source)
    if teacher_cache is not None and first is not None and first.index is None:
        raise ConfigError("teacher_cache holds teacher embeddings by dataset index, and the training batches carry "
                          "no index (a list or iterable of batches); train on the indexed source the cache was built "
                          "from (e.g. IndexedSource), or pass the teacher instead of the cache")
    if not batch_total:
        batch_total = len(first) if first is not None else cfg.batch_size
    total = cfg.steps or (cfg.epochs * bpe if bpe else 0)
    if total <= 0:
        raise ConfigError("set steps: the data has no known length, so epochs cannot be converted to steps")
    if teacher is None and teacher_cache is None and cfg.margin == "none":
        raise ConfigError("nothing to learn from: give a teacher (or teacher embeddings) or a margin head")
    if teacher is not None:
        check_pair(student, teacher, projection)
        teacher.to(device).eval()  # run under no_grad; its requires_grad flags are left as the caller set them
    quantized = R.is_quantized(student)
    lsq_params = R.enable_learnable_scales(student) if cfg.learnable_scales and quantized else []
    if cfg.learnable_scales and not quantized:
        raise ConfigError("learnable_scales needs a quantized student (it learns the quantizer scales)")
    if head is None and cfg.margin != "none":
        head = _make_head(cfg, student, projection, source)
    student.to(device)
    for m in (projection, head):
        if m is not None:
            m.to(device)
    weighter = None
    if group_names:
        weighter = GroupKDWeighter(group_names, cfg.fair_gamma, cfg.fair_momentum, enabled=cfg.fair_kd)
    elif cfg.fair_kd:
        raise ConfigError("fair_kd needs group labels: use data with groups (e.g. builtin) or pass group_names")
    parts = [source.first, source.second] if hasattr(source, "first") else [source]
    if cfg.fair_kd and all(hasattr(p, "groups") and p.groups is None for p in parts):
        # group names alone (e.g. builtin-synthetic) would leave every sample unweighted: plain KD, silently
        raise ConfigError("fair_kd needs a group label per training image, and the training data has none (only "
                          "group names); use data with groups (e.g. builtin), or drop fair_kd")

    # ---- optimizer: scales (LSQ) without weight decay and with their own lr multiplier
    if info.active and batch_total % info.world:  # checked before any state is written, not at the first batch
        raise ConfigError(f"batch_size {batch_total} cannot be split evenly over {info.world} processes; use a "
                          f"multiple of {info.world} (it is the total batch over all processes)")
    lr0 = cfg.lr if cfg.lr is not None else scaled_lr(cfg.base_lr, batch_total, cfg.base_batch)
    scale_ids = {id(p) for p in lsq_params}
    main_params = [p for m in (student, projection, head) if m is not None for p in m.parameters()
                   if p.requires_grad and id(p) not in scale_ids]
    if not main_params and not lsq_params:
        raise ConfigError("the student has no trainable parameters (every requires_grad is False); if it was copied "
                          "from a frozen model, call student.requires_grad_(True) before fine-tuning")
    opt = make_sgd(main_params, lr0, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    if lsq_params:
        opt.add_param_group({"params": lsq_params, "weight_decay": 0.0, "lr_mult": cfg.scale_lr_mult})
    # gradient clipping: the student (+ projection, LSQ scales), not the margin head (reference recipes)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    clipped = [p for g in opt.param_groups for p in g["params"] if id(p) not in head_ids]
    unclipped = [p for g in opt.param_groups for p in g["params"] if id(p) in head_ids]
    if cfg.milestones and cfg.milestone_unit == "epoch" and not bpe:  # else epochs would silently count as steps
        raise ConfigError("milestones are in epochs (milestone_unit: epoch), but the data has no known length, so "
                          "epochs cannot be converted to steps; give the milestones in steps (milestone_unit: step)")
    milestones = [round(m * (bpe if cfg.milestone_unit == "epoch" else 1)) for m in cfg.milestones]
    sched = dict(lr=lr0, total_steps=total, schedule=cfg.schedule, milestones=milestones, gamma=cfg.lr_gamma,
                 warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    step_mod = DistillStep(student, projection, head, kd=cfg.kd_loss, kd_weight=cfg.kd_weight,
                           margin_weight=cfg.margin_weight)
    model = step_mod
    if info.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(step_mod, device_ids=[device.index] if device.type == "cuda" else None)

    # ---- state: fresh or resumed
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = out / "checkpoints" if out is not None else None
    log = MetricsLog(out / "metrics.jsonl" if out is not None and info.main else None)
    step, epoch, pos, best, resumed_from, last_loss = 0, 0, 0, None, None, math.nan
    if quantized:
        R.set_range_tracking(student, cfg.range_update_steps > 0)
    if resume and ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
        ck = load_checkpoint(ckpt_dir / "last.pt")
        check_same_settings(ck, cfg, ckpt_dir / "last.pt")
        for name, mod in (("student", student), ("projection", projection), ("head", head)):
            if mod is not None:
                load_module_state(mod, ck.get(name), name, ckpt_dir / "last.pt")
            elif ck.get(name) is not None:
                raise CheckpointError(f"{ckpt_dir / 'last.pt'}: the checkpoint holds a {name} state, but this run has "
                                      f"no {name}; resume with the same model and config, or start a new --out folder")
        opt.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if quantized:  # observer statistics and modes as saved (no freeze(): it would recompute the scale)
            R.load_range_state(student, ck["ranges"])
        if weighter is not None and ck.get("fair"):
            weighter.load_state_dict(ck["fair"])
        set_rng_state(ck["rng"])
        step, epoch, pos, best = ck["step"], ck["epoch"], ck["batch"], ck.get("best")
        last_loss = float(ck.get("last_loss", math.nan))
        resumed_from = step
        log.truncate_after(step)
    else:
        log.reset()  # a fresh start: lines left by an earlier run that failed before its first checkpoint go
    if out is not None and info.main:
        out.mkdir(parents=True, exist_ok=True)

    def checkpoint(path_name: str = "last.pt") -> None:
        if ckpt_dir is None or not info.main:
            return
        save_checkpoint(ckpt_dir / path_name, {
            "step": step, "epoch": epoch, "batch": pos, "total_steps": total, "done": step >= total,
            "student": student.state_dict(), "projection": projection.state_dict() if projection else None,
            "head": head.state_dict() if head is not None else None, "optimizer": opt.state_dict(),
            "scheduler": {"name": cfg.schedule, "step": step}, "scaler": scaler.state_dict() if scaler else None,
            "ranges": R.range_state(student) if quantized else {}, "fair": weighter.state_dict() if weighter else None,
            "rng": rng_state(), "best": best, "world": info.world, "config": config_to_dict(cfg),
            "last_loss": last_loss})

    # ---- the loop
    if isinstance(head, MarginHead):  # DDP: margins / norm statistics of the global batch (undone at the end)
        head.set_distributed(info.rank, info.world, all_reduce_sum)
    student.train()
    if cfg.freeze_bn:
        freeze_batchnorm(student)
    prog = Progress(total, step, description, active=info.main)
    images_seen, ips = 0, 0.0
    try:
        while step < total:
            got_any = False
            for batch in source.epoch(epoch, pos, info.rank, info.world):
                got_any = True
                if head is not None:
                    check_labels(batch, head, step)
                tracking = quantized and step < cfg.range_update_steps
                if quantized and step == cfg.range_update_steps:
                    R.set_range_tracking(student, False)
                lr = lr_at(step, **sched)
                set_lr(opt, lr)
                batch = batch.to(device)
                t_emb = _teacher_embeddings(teacher, teacher_cache, batch, device, use_amp)
                weights = None
                if cfg.fair_kd and batch.groups is None:
                    raise DataError(f"step {step + 1}: fair_kd needs group labels, and this batch has none; give "
                                    "(images, labels, groups) batches, or drop fair_kd")
                if weighter is not None and cfg.fair_kd and batch.groups is not None:
                    weights = weighter.sample_weights(batch.groups, reduce=all_reduce_sum if info.active else None)
                try:
                    # under DDP: activation ranges and the margin term (labelled rows may differ per process)
                    # those of one process with the whole global batch
                    with R.synced_ranges(student, active=tracking and info.active), \
                            global_margin_mean(info.world, all_reduce_sum), \
                            torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        loss, kd, margin, per = model(batch.images, t_emb, batch.labels, weights)
                except QuantError as exc:  # a tracking activation observer saw NaN / Inf: training diverged
                    bad = diverged_in_layer(exc)
                    if bad is None:
                        raise
                    raise DataError(diverged(step, bad)) from None
                _stop_if_not_finite(loss, step, info.active)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                norm = nn.utils.clip_grad_norm_(clipped, cfg.grad_clip) if cfg.grad_clip > 0 else None
                if scaler is None:  # (the AMP scaler skips steps with Inf / NaN gradients itself)
                    _stop_if_grads_not_finite(norm, unclipped if norm is not None else clipped + unclipped, step)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if weighter is not None and batch.groups is not None and t_emb is not None and cfg.kd_weight != 0:
                    weighter.update(per, batch.groups, reduce=all_reduce_sum if info.active else None)
                step, pos = step + 1, pos + 1
                if bpe and pos >= bpe:
                    epoch, pos = epoch + 1, 0
                images_seen += len(batch) * info.world
                record = None
                if step % cfg.log_every == 0 or step == total:
                    terms = all_reduce_sum(torch.stack([loss.detach().float(), kd, margin])).cpu() / info.world
                    ips, eta = prog.rates(step, images_seen)
                    last_loss = float(terms[0])
                    record = {"step": step, "epoch": epoch, "loss": last_loss, "kd": float(terms[1]),
                              "margin": float(terms[2]), "lr": lr, "images_per_s": ips, "eta_s": eta,
                              "tracking_ranges": bool(tracking)}
                    if weighter is not None and weighter.last:
                        record.update(weighter.log_dict())
                    log.write(record)
                    prog.update(step, last_loss, lr, ips)
                if evaluator is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
                    best = _evaluate(evaluator, student, step, best, ckpt_dir, projection, log, info, cfg)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 or step == total:
                    checkpoint()
                    barrier()
                for cb in callbacks:
                    cb(step, record or {"step": step})
                if step >= total or (bpe and pos == 0):
                    break
            if not got_any:
                once = epoch > 0 and single_pass(source)
                raise DataError(f"the training data yielded no batch in epoch {epoch} (position {pos})" + (
                    f" after {step} steps: it is an iterator, which can be read only once; pass a list of batches "
                    "(or any re-iterable), or set steps to at most the number of batches" if once else ""))
            if not bpe:
                epoch, pos = epoch + 1, 0
    finally:
        prog.close()
        if isinstance(head, MarginHead):
            head.set_distributed()
    if quantized:
        R.set_range_tracking(student, False)
    student.eval()
    return FitResult(steps=step, loss=last_loss, images_per_s=ips, history=list(log.records), best=best,
                     out_dir=out, resumed_from=resumed_from)


def _stop_if_not_finite(loss: torch.Tensor, step: int, distributed: bool) -> None:
    """DataError when the loss is NaN / Inf. Under DDP every process learns of it at the same step (one flag
    summed over the processes): a process stopping alone would leave the others waiting in backward's
    gradient all-reduce until the process group times out."""
    finite = bool(torch.isfinite(loss.detach()))
    if distributed:
        bad = int(all_reduce_sum(torch.tensor([0.0 if finite else 1.0], device=loss.device)).item())
        if bad and finite:
            raise DataError(diverged(step, f"the loss became NaN or Inf in {bad} other process(es) of the run"))
    if not finite:
        raise DataError(diverged(step, f"the loss became {float(loss.detach())}"))


def _stop_if_grads_not_finite(norm: torch.Tensor | None, others: Sequence[nn.Parameter], step: int) -> None:
    """DataError before the optimizer step when a gradient holds NaN / Inf: ``norm`` is the clipped parameters'
    total norm (None without clipping), ``others`` the parameters it does not cover. Under DDP the gradients
    are the same in every process (averaged in backward), so every process stops at the same step."""
    if norm is None or bool(torch.isfinite(norm)):
        grads = [p.grad.detach() for p in others if p.grad is not None]
        if not grads:
            return
        get_total_norm = getattr(nn.utils, "get_total_norm", None)  # torch >= 2.6
        norm = (get_total_norm(grads) if get_total_norm is not None else
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
        if bool(torch.isfinite(norm)):
            return
    raise DataError(diverged(step, f"the gradient norm became {float(norm)} (the weights were not updated with it)"))


def _first_batch(source: Any) -> Any:
    """The first global batch of ``source`` (None when it has none) without changing what training reads: a
    list's first item; an iterator's first item, put back in front of it; else a first batch drawn with the
    RNG states restored afterwards."""
    batches = getattr(source, "batches", None)
    if isinstance(batches, Sequence) and not isinstance(batches, (str, bytes)):
        return as_batch(batches[0]) if len(batches) else None
    if single_pass(source):  # an iterator can be read once: keep the item it gave
        rest = iter(batches)
        item = next(rest, None)
        if item is None:
            return None
        source.batches = itertools.chain([item], rest)
        return as_batch(item)
    with fork_rng():
        return next(iter(source.epoch(0, 0, 0, 1)), None)


def _make_head(cfg: TrainConfig, student: nn.Module, projection: nn.Module | None, source: Any) -> nn.Module:
    dim = getattr(projection, "out_features", None) if projection is not None else embedding_size(student)
    if dim is None:
        raise ConfigError("cannot size the margin head: the student has no `embedding_size` attribute")
    parts = [source.first, source.second] if hasattr(source, "first") else [source]
    labels = [p.labels for p in parts if getattr(p, "labels", None) is not None]
    iterable = not all(hasattr(p, "labels") for p in parts)  # the user's batches: labels come with them
    if not labels and iterable:
        seen = labels_of_batches(getattr(source, "batches", None))
        if seen is None:  # an iterator: its labels are known only while training (checked per batch)
            if cfg.num_classes:
                return create_head(cfg.margin, dim, cfg.num_classes, s=cfg.margin_s, m=cfg.margin_m)
            raise ConfigError(f"margin '{cfg.margin}': the identity labels of an iterator of batches are not known "
                              "before training, so the head cannot be sized from them; set num_classes, or pass a "
                              "list of (images, labels) batches")
        labels = seen
    if not labels:  # with num_classes set too: the margin loss would be skipped on every step, silently
        raise ConfigError(f"margin '{cfg.margin}' needs identity labels, and the training data has none (a flat "
                          "folder, data-free or synthetic images). Train on labelled data (real: a .rec or an "
                          "<identity>/<image> folder; builtin; (images, labels) batches), or set margin: none "
                          "(--margin none) for KD only")
    needed = max(int(t.max()) for t in labels) + 1
    classes = cfg.num_classes or needed
    if classes < needed:
        raise ConfigError(f"num_classes {cfg.num_classes} is smaller than the {needed} identities in the training "
                          "data; raise it, or set 0 to size the head from the labels")
    return create_head(cfg.margin, dim, classes, s=cfg.margin_s, m=cfg.margin_m)


@torch.no_grad()
def _teacher_embeddings(teacher: nn.Module | None, cache: Any, batch: Any, device: torch.device,
                        use_amp: bool) -> torch.Tensor | None:
    if cache is not None:
        if batch.index is None:
            raise DataError("a training batch carries no dataset index, so the teacher_cache cannot give its teacher "
                            "embeddings; train on the indexed source the cache was built from, or pass the teacher "
                            "instead of the cache")
        return cache.lookup(batch.index, batch.flipped).to(device)
    if teacher is None:
        return None
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        return teacher(batch.images).float()


def _evaluate(evaluator: Evaluator, student: nn.Module, step: int, best: dict | None, ckpt_dir: Path | None,
              projection: nn.Module | None, log: MetricsLog, info: Any, cfg: TrainConfig) -> dict | None:
    """Evaluate on rank 0 without disturbing training (RNG, BN mode, observers); keep the best weights."""
    if info.main:
        modes = {n: q.observer_enabled for n, q in R.act_quantizers(student)} if R.is_quantized(student) else {}
        for n, q in (R.act_quantizers(student) if modes else ()):
            q.observer_enabled = False
        was = student.training
        student.eval()
        with fork_rng():
            score, details = evaluator(student)
        student.train(was)
        if was and cfg.freeze_bn:
            freeze_batchnorm(student)
        for n, q in (R.act_quantizers(student) if modes else ()):
            q.observer_enabled = modes[n]
        log.write({"step": step, "eval": _plain(details), "score": float(score)})
        if best is None or float(score) > best["score"]:
            best = {"score": float(score), "step": step, "metrics": _plain(details)}
            if ckpt_dir is not None:
                save_checkpoint(ckpt_dir / "best.pt", {"step": step, "student": student.state_dict(),
                                                       "projection": projection.state_dict() if projection else None,
                                                       "best": best})
    if info.active:  # every rank learns the same 'best'
        import torch.distributed as dist

        box = [best]
        dist.broadcast_object_list(box, src=0)
        best = box[0]
    barrier()
    return best
