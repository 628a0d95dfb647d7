"""``QuantConfig``: what to quantize and how (typed, frozen, validated; YAML keys mirror CLI flags).

Importing this module is cheap (no torch): the CLI builds its flags from these dataclasses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import cfg_field, validate_fields
from ..utils.errors import ConfigError

PTQ_METHODS = ("bn_reestimate", "bias_correction", "adaround", "brecq")


def _recipes() -> list[str]:
    from .recipes import RECIPES

    return RECIPES.names() + sorted(RECIPES.aliases())


def _observers() -> list[str]:
    from .observers import OBSERVERS

    return OBSERVERS.names() + sorted(OBSERVERS.aliases())


def _check_bits(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
        raise ConfigError(f"{what}: got {value!r}, allowed range is [2, 8]")


@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings. ``bits`` sets both widths; ``wbits`` / ``abits`` override it."""

    bits: int = cfg_field(8, help="bit width of weights and activations (2..8)", range=(2, 8))
    wbits: Optional[int] = cfg_field(None, help="weight bits (default: --bits)", range=(2, 8))
    abits: Optional[int] = cfg_field(None, help="activation bits (default: --bits)", range=(2, 8))
    recipe: str = cfg_field("quantface", help="placement recipe: quantface (QuantFace; alias reference) or deploy "
                         "(TensorRT-style; alias tensorrt)",
                         choices=_recipes)
    observer: str = cfg_field("minmax", help="activation range observer: minmax, moving_average_minmax, "
                              "percentile, mse or entropy", choices=_observers)
    weight_observer: str = cfg_field("minmax", help="weight range observer (minmax is recomputed every "
                                     "forward, the others are computed once)", choices=_observers)
    percentile: float = cfg_field(99.99, help="percentile observer: kept percentile, in (50, 100]",
                                  range=(50.0, 100.0))
    averaging_constant: float = cfg_field(0.01, help="moving_average_minmax observer: EMA constant, in (0, 1]",
                                          range=(0.0, 1.0))
    weight_symmetric: Optional[bool] = cfg_field(None, help="symmetric weights (default: by recipe)")
    act_symmetric: Optional[bool] = cfg_field(None, help="symmetric activations (default: by recipe)")
    per_channel: bool = cfg_field(True, help="per-output-channel weight scales (axis 0)")
    narrow_range: bool = cfg_field(False, help="narrow integer range for symmetric weights (-127..127)")
    fold_bn: Optional[bool] = cfg_field(None, help="fold BatchNorm into the preceding conv where exact "
                                        "(default: by recipe; deploy folds, quantface never)")
    skip: tuple[str, ...] = cfg_field((), help="module name patterns (fnmatch) kept in float, e.g. 'fc' 'conv1'")
    layer_wbits: dict[str, int] = cfg_field(default_factory=dict, flag=False,
                                            help="module name pattern -> weight bits (mixed precision)")
    layer_abits: dict[str, int] = cfg_field(default_factory=dict, flag=False,
                                            help="module name pattern -> activation bits (mixed precision)")
    ptq: tuple[str, ...] = cfg_field((), help="PTQ improvements applied after calibration, in order",
                                     choices=list(PTQ_METHODS))
    adaround_iters: int = cfg_field(200, help="adaround / brecq: optimisation steps per layer / block",
                                      range=(1, 100000))
    adaround_samples: int = cfg_field(64, help="adaround / brecq: calibration images used (a quarter held out)",
                                      range=(1, 100000))
    calib_size: int = cfg_field(256, help="number of calibration images", range=(1, None))
    calib_batch_size: int = cfg_field(32, help="calibration batch size", range=(1, None))
    seed: int = cfg_field(0, help="random seed (calibration sampling, adaround)")

    def __post_init__(self) -> None:
        validate_fields(self)
        _check_bits("bits", self.bits)
        object.__setattr__(self, "wbits", self.bits if self.wbits is None else self.wbits)
        object.__setattr__(self, "abits", self.bits if self.abits is None else self.abits)
        _check_bits("wbits", self.wbits)
        _check_bits("abits", self.abits)
        for what, table in (("layer_wbits", self.layer_wbits), ("layer_abits", self.layer_abits)):
            for pattern, b in table.items():
                _check_bits(f"{what}['{pattern}']", b)
        # the field ranges are inclusive; these ends are not usable: the 50th percentile is the median (a zero-width
        # range), and an EMA constant of 0 never moves from the first batch
        if not self.percentile > 50.0:
            raise ConfigError(f"percentile: got {self.percentile!r}, allowed range is (50, 100] (99.99 keeps all but "
                              "the extreme 0.01 % on each side)")
        if not self.averaging_constant > 0.0:
            raise ConfigError(f"averaging_constant: got {self.averaging_constant!r}, allowed range is (0, 1] (0 would "
                              "keep the first batch's range for ever)")
        for name in self.ptq:
            if name not in PTQ_METHODS:
                raise ConfigError(f"ptq: unknown method '{name}', allowed: {', '.join(PTQ_METHODS)}")


@dataclass(frozen=True)
class QuantizeRunConfig(QuantConfig):
    """``qfair quantize``: the model, the calibration source and the output, plus every QuantConfig key."""

    model: Optional[str] = cfg_field(None, help="float checkpoint (or a registry name with --allow-random)")
    arch: Optional[str] = cfg_field(None, help="architecture name (qfair models); guessed from the checkpoint "
                                    "when omitted")
    allow_random: bool = cfg_field(False, help="allow quantizing a randomly initialised registry model "
                                   "(tests and demos only)")
    calib: str = cfg_field("synthetic", help="calibration source: real, synthetic, builtin or builtin-synthetic",
                           choices=["real", "synthetic", "builtin",
                                                                          "builtin-synthetic"])
    calib_data: Optional[str] = cfg_field(None, help="calibration image folder / file (real: required; "
                                          "synthetic: a generated folder, or none for data-free images)")
    skip_corrupt: bool = cfg_field(False, help="skip unreadable calibration images (counted in a warning) "
                                   "instead of stopping at the first one")
    out: Optional[str] = cfg_field(None, help="output run folder")

    def quant_config(self) -> QuantConfig:
        """The QuantConfig part of this run config."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(QuantConfig)}
        return QuantConfig(**{k: getattr(self, k) for k in names})
