"""Typed configs of the fine-tuning loop (:class:`TrainConfig`), ``qfair qat`` and ``qfair distill``.

Defaults are the QuantFace QAT recipe (README references [5]): KD only (MSE of unit embeddings), SGD
Nesterov 0.9, weight decay 5e-4, lr 0.1 at a total batch of 512 scaled linearly, clip 5, activation
ranges updated for 300 steps then frozen. configs/distill_*.yaml holds the distillation-study recipe
(section 6). Every key is also a command-line flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import cfg_field, validate_fields
from ..utils.errors import ConfigError


def _kd_names() -> list[str]:
    from .losses import KD_LOSSES

    return KD_LOSSES.names() + list(KD_LOSSES.aliases())


def _head_names() -> list[str]:
    from .heads import HEADS

    return ["none", *HEADS.names(), *HEADS.aliases()]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`qfair.train.fit` (the loop itself; data and models are arguments)."""

    seed: int = cfg_field(0, help="seed of initialisation, data order and augmentation")
    steps: int = cfg_field(0, range=(0, None), help="optimizer steps; 0 = epochs x batches per epoch")
    epochs: int = cfg_field(1, range=(1, None), help="passes over the training data when steps is 0")
    batch_size: int = cfg_field(128, range=(1, None), help="TOTAL batch over all processes")
    lr: float | None = cfg_field(None, range=(0, None), help="explicit learning rate (overrides base_lr scaling)")
    base_lr: float = cfg_field(0.1, range=(0, None), help="learning rate at base_batch (linear scaling rule)")
    base_batch: int = cfg_field(512, range=(1, None), help="batch size at which base_lr is given")
    momentum: float = cfg_field(0.9, range=(0, 1))
    nesterov: bool = cfg_field(True)
    weight_decay: float = cfg_field(5e-4, range=(0, None))
    schedule: Literal["constant", "step", "cosine"] = cfg_field("constant", help="lr schedule after warm-up")
    milestones: tuple[float, ...] = cfg_field((), help="step schedule: where lr is multiplied by lr_gamma")
    milestone_unit: Literal["epoch", "step"] = cfg_field("epoch", help="unit of milestones")
    lr_gamma: float = cfg_field(0.1, range=(0, 1))
    warmup_steps: int = cfg_field(0, range=(0, None))
    min_lr_ratio: float = cfg_field(0.0, range=(0, 1), help="cosine floor as a fraction of lr")
    grad_clip: float = cfg_field(5.0, range=(0, None), help="max gradient norm; 0 disables")
    range_update_steps: int = cfg_field(300, range=(0, None),
                                        help="steps during which activation ranges keep updating, then frozen")
    learnable_scales: bool = cfg_field(False, help="learn quantizer scales (LSQ) with the weights")
    scale_lr_mult: float = cfg_field(0.01, range=(0, None), help="lr multiplier of learnable scales")
    freeze_bn: bool = cfg_field(False, help="keep BatchNorm running statistics fixed during fine-tuning")
    hflip: bool = cfg_field(True, help="random horizontal flip of training images")
    kd_loss: str = cfg_field("mse", choices=_kd_names, help="distance between unit embeddings")
    kd_weight: float = cfg_field(1.0, range=(0, None), help="lambda of the distillation term")
    margin: str = cfg_field("none", choices=_head_names,
                            help="margin head on identity labels (the data must have them); none = KD only")
    margin_weight: float = cfg_field(1.0, range=(0, None))
    margin_s: float | None = cfg_field(None, range=(0, None), help="head scale s (default per head)")
    margin_m: float | None = cfg_field(None, help="head margin m (default per head)")
    num_classes: int = cfg_field(0, range=(0, None), help="identities for the margin head; 0 = from labels")
    fair_kd: bool = cfg_field(False, help="fairness-aware distillation: upweight groups that drift most")
    fair_gamma: float = cfg_field(1.0, range=(0, 10), help="strength of the group reweighting")
    fair_momentum: float = cfg_field(0.9, range=(0, 0.9999), help="EMA momentum of the per-group KD loss")
    checkpoint_every: int = cfg_field(100, range=(0, None), help="steps between checkpoints; 0 = only at end")
    log_every: int = cfg_field(10, range=(1, None))
    eval_every: int = cfg_field(0, range=(0, None), help="steps between evaluations; 0 = only at the end")
    best_metric: Literal["avg", "min", "to", "std", "ser"] = cfg_field("avg", help="what 'best' checkpoint means")
    device: str = cfg_field("auto", help="auto, cpu, cuda or cuda:N")
    amp: bool = cfg_field(True, help="mixed precision on CUDA (ignored on CPU)")

    def __post_init__(self) -> None:
        validate_fields(self)  # configs built in Python are checked as config files are
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("schedule 'step' needs milestones (e.g. milestones: [8, 14, 20, 25])")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"milestones must be increasing, got {list(self.milestones)}")
        if self.kd_weight == 0 and (self.margin == "none" or self.margin_weight == 0):
            raise ConfigError("kd_weight is 0 and there is no margin loss (margin none or margin_weight 0): nothing "
                              "to train")
        if self.fair_kd and self.kd_weight == 0:
            raise ConfigError("fair_kd reweights the distillation term, and kd_weight is 0: raise kd_weight or drop "
                              "fair_kd")


@dataclass(frozen=True)
class DataSettings:
    """Where training images come from (shared by qat and distill). See :func:`qfair.train.data.build_source`."""

    data: str = cfg_field("builtin", help="builtin | real:PATH | synthetic:PATH | synthetic (data-free) | "
                                          "builtin-synthetic")
    data_n: int = cfg_field(2048, range=(1, None), help="images taken from the data source (builtin: rounded up to "
                                                           "whole identities of 8 images, at least 4 identities)")
    mix_data: str | None = cfg_field(None, help="second source mixed in (e.g. synthetic:PATH)")
    mix_ratio: float = cfg_field(0.7, range=(0, 1), help="fraction of each batch taken from `data` when mixing")
    bench: str | None = cfg_field(None, help="verification benchmark for periodic per-group evaluation "
                                             "(e.g. builtin:small, rfw:/data/RFW)")


@dataclass(frozen=True)
class QatConfig(TrainConfig, DataSettings):
    """``qfair qat``: quantization-aware fine-tuning of a quantized student against its float teacher."""

    student: str | None = cfg_field(None, help="run folder written by `qfair quantize` (the student)")
    model: str | None = cfg_field(None, help="float checkpoint: the teacher, and the student if no --student")
    arch: str | None = cfg_field(None, help="architecture of --model (guessed when omitted)")
    teacher: str | None = cfg_field(None, help="teacher checkpoint when it is not --model")
    teacher_arch: str | None = cfg_field(None, help="architecture of --teacher (guessed when omitted)")
    wbits: int = cfg_field(6, range=(2, 8), help="weight bits when the student is built on the fly")
    abits: int = cfg_field(6, range=(2, 8), help="activation bits when the student is built on the fly")
    recipe: str = cfg_field("quantface", help="quantizer placement recipe when built on the fly")
    calib: str = cfg_field("builtin", help="calibration data when the student is built on the fly")
    calib_n: int = cfg_field(256, range=(1, None))

    def __post_init__(self) -> None:
        TrainConfig.__post_init__(self)
        if not (self.student or self.model):
            raise ConfigError("qat needs --student RUN_DIR (from `qfair quantize`) or --model CHECKPOINT")


@dataclass(frozen=True)
class DistillConfig(TrainConfig, DataSettings):
    """``qfair distill``: a smaller student architecture learns from a teacher (distillation study)."""

    teacher: str | None = cfg_field(None, help="teacher checkpoint (required)")
    teacher_arch: str | None = cfg_field(None, help="teacher architecture (guessed when omitted)")
    student_arch: str = cfg_field("mobilefacenet", help="student architecture (registry name)")
    student_kwargs: dict[str, int] = cfg_field(default_factory=dict, flag=False,
                                               help="extra create_model arguments of the student (e.g. width)")
    student_init: str | None = cfg_field(None, help="optional student checkpoint to start from")
    embedding_size: int = cfg_field(0, range=(0, None), help="student embedding size; 0 = the teacher's")
    projection: bool = cfg_field(False, help="learn a linear map student dim -> teacher dim")
    quantize: bool = cfg_field(False, help="quantize the student and distil into it (QAT at the same time)")
    wbits: int = cfg_field(8, range=(2, 8))
    abits: int = cfg_field(8, range=(2, 8))
    recipe: str = cfg_field("quantface")
    teacher_cache: str | None = cfg_field("auto", help="folder for precomputed teacher embeddings; "
                                                      "'auto' = <out>/teacher_cache, none = no cache")

    def __post_init__(self) -> None:
        TrainConfig.__post_init__(self)
        if not self.teacher:
            raise ConfigError("distill needs --teacher CHECKPOINT")
