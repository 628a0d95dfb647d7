"""Settings of ``qfair evaluate`` / ``qfair compare`` (keys of configs/evaluate.yaml mirror the flags)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import cfg_field, validate_fields
from ..utils.errors import ConfigError


@dataclass(frozen=True)
class EvalConfig:
    """How models are evaluated and compared."""

    mode: str = cfg_field("exact", help="threshold search: exact (score midpoints) or grid (insightface, "
                          "reproduces published numbers)", choices=["exact", "grid"])
    flip: bool = cfg_field(True, help="flip test-time augmentation: normalize(f(x) + f(flip x))")
    batch_size: int = cfg_field(64, help="images per forward pass", range=(1, 4096))
    n_folds: int = cfg_field(10, help="folds when the benchmark has none", range=(2, 100))
    target_fmr: float = cfg_field(1e-3, help="FMR of the global threshold chosen on pooled impostor scores",
                                  range=(0.0, 1.0))
    alpha: float = cfg_field(0.5, help="weight of FMR vs FNMR in FDR, IR and GARBE", range=(0.0, 1.0))
    ddof: int = cfg_field(1, help="STD degrees of freedom (1 = sample std, as in the studies)", range=(0, 1))
    n_bootstrap: int = cfg_field(1000, help="bootstrap resamples (0 = none)", range=(0, 100000))
    seed: int = cfg_field(0, help="bootstrap seed")
    exact_below: int = cfg_field(25, help="McNemar uses the exact binomial test when b + c is below this",
                                 range=(0, None))
    null_draws: int = cfg_field(200, help="permutations of the group-blind null in comparisons: what change "
                                "of the same size, blind to the group, does to each group and to STD/SER "
                                "(0 = skip)", range=(0, 100000))
    cache: bool = cfg_field(True, help="cache embeddings on disk (--cache-dir, else $QFAIR_CACHE, $QFAIR_CACHE_DIR or "
                             "~/.cache/qfair)")
    figures: bool = cfg_field(True, help="write PNG figures (needs matplotlib)")

    def __post_init__(self) -> None:
        validate_fields(self)  # configs built in Python are checked as config files are
        if self.target_fmr <= 0.0:
            raise ConfigError(f"target_fmr must be > 0 (got {self.target_fmr}); e.g. 1e-3")
