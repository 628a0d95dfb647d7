"""Config dataclasses of the data commands (``qfair synth``, ``qfair groups``); YAML keys = flags."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import cfg_field
from ..utils.errors import ConfigError


@dataclass(frozen=True)
class SynthConfig:
    """``qfair synth``: data-free synthetic face images from a model's BatchNorm statistics."""

    model: str = cfg_field("", help="float checkpoint whose BatchNorm statistics drive the synthesis")
    arch: str = cfg_field("", help="architecture of the checkpoint (guessed from its keys if empty)")
    n: int = cfg_field(64, help="number of images", range=(1, 1_000_000))
    out: str = cfg_field("", help="output folder for the PNG files (and _contact_sheet.png)")
    source: str = cfg_field("bn", help="bn: from the model's BatchNorm statistics (ZeroQ); builtin-synthetic: "
                                       "the built-in benchmark's synthetic domain (no model needed)",
                            choices=["bn", "builtin-synthetic"])
    iters: int = cfg_field(30, help="optimisation steps per batch", range=(1, 100_000))
    lr: float = cfg_field(0.1, help="Adam learning rate", range=(1e-6, 10.0))
    tv: float = cfg_field(0.02, help="weight of the total-variation (smoothness) prior", range=(0.0, 100.0))
    init_res: int = cfg_field(56, help="side of the optimised image before upsampling to 112", range=(4, 112))
    batch_size: int = cfg_field(32, help="images optimised together", range=(1, 4096))
    seed: int = cfg_field(0, help="random seed")
    allow_random: bool = cfg_field(False, help="allow --model to be an architecture name (random weights; "
                                               "only for testing the command)")

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("synth: --out FOLDER is required")
        if self.source == "bn" and not self.model:
            raise ConfigError("synth: --model CHECKPOINT is required with --source bn (or use --source "
                              "builtin-synthetic, which needs no model)")


@dataclass(frozen=True)
class GroupsConfig:
    """``qfair groups train|estimate``: a linear group classifier on a frozen face model."""

    model: str = cfg_field("", help="float face model checkpoint (frozen feature extractor)")
    arch: str = cfg_field("", help="architecture of the checkpoint (guessed if empty)")
    data: str = cfg_field("builtin", help="train: 'builtin' (the built-in benchmark's groups) or a folder "
                                          "<group>/<identity>/<image> (e.g. BUPT-Balancedface); estimate: any "
                                          "image folder, .rec, or builtin-synthetic")
    head: str = cfg_field("", help="group classifier file (written by train, read by estimate)")
    n: int = cfg_field(2000, help="images to use (train: labelled, estimate: sampled)", range=(1, 10_000_000))
    epochs: int = cfg_field(30, help="training epochs of the linear head", range=(1, 10_000))
    lr: float = cfg_field(0.05, help="learning rate of the linear head", range=(1e-6, 10.0))
    holdout: float = cfg_field(0.2, help="fraction of identities held out for the accuracy report",
                               range=(0.05, 0.9))
    batch_size: int = cfg_field(64, help="batch size for embedding", range=(1, 4096))
    seed: int = cfg_field(0, help="random seed")
    allow_random: bool = cfg_field(False, help="allow --model to be an architecture name (random weights)")
