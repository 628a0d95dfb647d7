"""Identity parameters of the built-in synthetic face benchmark.

An identity is a vector of ``N_PARAMS`` fixed facial parameters (geometry, colours, marks). A group is a
distribution over those vectors: ``value = base + group_offset + spread_g * scale * z`` with z ~ N(0, 1).
Groups differ in appearance (skin / hair / iris colour, geometry offsets) and in difficulty: a smaller
``spread`` packs identities closer together (harder to tell apart), a larger ``nuisance`` makes images of
one identity vary more. Everything here is synthetic and says nothing about real people.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# name -> (base, scale). Coordinates are in the canonical face frame: x, y in [-1, 1] over the
# 112x112 image (y down), face centred at the origin. Colours are linear RGB in [0, 1].
PARAM_SPEC: dict[str, tuple[float, float]] = {
    "head_w": (0.56, 0.045), "head_h": (0.70, 0.045), "jaw": (0.28, 0.10),
    "eye_y": (-0.08, 0.035), "eye_dx": (0.235, 0.025), "eye_w": (0.095, 0.014), "eye_h": (0.045, 0.009),
    "brow_dy": (0.115, 0.022), "brow_thick": (0.030, 0.009), "brow_tilt": (0.0, 0.25),
    "nose_len": (0.22, 0.035), "nose_w": (0.075, 0.018),
    "mouth_y": (0.40, 0.035), "mouth_w": (0.17, 0.028), "lip_thick": (0.034, 0.009),
    "hairline": (-0.42, 0.08), "hair_vol": (0.08, 0.05), "hair_part": (0.0, 0.35), "hair_len": (0.15, 0.25),
    "ear": (0.09, 0.02),
    "skin_r": (0.0, 0.05), "skin_g": (0.0, 0.05), "skin_b": (0.0, 0.05),
    "hair_r": (0.0, 0.08), "hair_g": (0.0, 0.08), "hair_b": (0.0, 0.08),
    "iris_r": (0.30, 0.10), "iris_g": (0.25, 0.08), "iris_b": (0.18, 0.08),
    "lip_r": (0.0, 0.05), "lip_g": (0.0, 0.04), "lip_b": (0.0, 0.04),
    "blush": (0.10, 0.06),
    "mole1_x": (0.0, 0.30), "mole1_y": (0.15, 0.25), "mole2_x": (0.0, 0.30), "mole2_y": (0.15, 0.25),
    "mole_size": (0.018, 0.008), "beard": (-1.0, 1.0), "glasses": (-1.5, 1.0),
}
PARAM_NAMES: tuple[str, ...] = tuple(PARAM_SPEC)
N_PARAMS = len(PARAM_NAMES)
P = {name: i for i, name in enumerate(PARAM_NAMES)}  # name -> column index


@dataclass(frozen=True)
class GroupSpec:
    """One synthetic demographic group. ``offsets`` shift parameter bases (absolute units);
    ``spread`` scales between-identity variation (smaller = harder); ``nuisance`` scales
    within-identity variation (pose, light, expression); ``noise`` is extra sensor noise."""

    name: str
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    spread: float = 1.0
    nuisance: float = 1.0
    noise: float = 0.0
    offsets: dict[str, float] = field(default_factory=dict)
    hair_spread: float = 1.0


# Four neutral groups. A is the majority of the training split and the easiest; D the rarest and the
# hardest (identities packed closest together, lower feature contrast on darker skin, more nuisance).
DEFAULT_GROUPS: tuple[GroupSpec, ...] = (
    GroupSpec("GroupA", skin=(0.86, 0.68, 0.58), hair=(0.45, 0.33, 0.20), spread=1.00, nuisance=1.00,
              hair_spread=2.2, offsets={"eye_dx": 0.005, "nose_len": 0.01}),
    GroupSpec("GroupB", skin=(0.80, 0.62, 0.46), hair=(0.10, 0.08, 0.07), spread=0.85, nuisance=1.05,
              hair_spread=0.6, offsets={"head_w": 0.02, "eye_h": -0.006, "nose_w": 0.005}),
    GroupSpec("GroupC", skin=(0.68, 0.48, 0.34), hair=(0.09, 0.07, 0.06), spread=0.75, nuisance=1.10,
              hair_spread=0.6, noise=0.005, offsets={"brow_thick": 0.004, "nose_w": 0.01, "mouth_w": 0.01}),
    GroupSpec("GroupD", skin=(0.42, 0.28, 0.20), hair=(0.07, 0.05, 0.05), spread=0.65, nuisance=1.15,
              hair_spread=0.5, noise=0.01, offsets={"nose_w": 0.02, "lip_thick": 0.008, "hair_vol": -0.03}),
)

_BASE = np.array([PARAM_SPEC[n][0] for n in PARAM_NAMES], dtype=np.float64)
_SCALE = np.array([PARAM_SPEC[n][1] for n in PARAM_NAMES], dtype=np.float64)
_COLOUR_COLS = {"skin": [P["skin_r"], P["skin_g"], P["skin_b"]], "hair": [P["hair_r"], P["hair_g"], P["hair_b"]]}
# parameters whose spread is not shrunk by the group difficulty (marks, accessories)
_FIXED_SPREAD = [P[n] for n in ("mole1_x", "mole1_y", "mole2_x", "mole2_y", "beard", "glasses")]


def sample_identities(group: GroupSpec, n: int, rng: np.random.Generator, difficulty: float = 1.0) -> np.ndarray:
    """``(n, N_PARAMS)`` float32 identity parameters of ``group``.

    ``difficulty`` > 1 shrinks every group's between-identity spread further (harder benchmark),
    < 1 widens it.
    """
    z = rng.standard_normal((n, N_PARAMS))
    spread = np.full(N_PARAMS, group.spread / max(difficulty, 1e-3))
    spread[_FIXED_SPREAD] = 1.0
    for col in _COLOUR_COLS["hair"]:
        spread[col] *= group.hair_spread
    base = _BASE.copy()
    for key, off in group.offsets.items():
        base[P[key]] += off
    vals = base + spread * _SCALE * z
    # colours are absolute: group colour + a shared lightness shift (first channel's draw, so the hue
    # stays natural) + small per-channel tints
    for kind, mean, tone in (("skin", group.skin, (1.0, 0.9, 0.8)), ("hair", group.hair, (1.0, 0.75, 0.5))):
        cols = _COLOUR_COLS[kind]
        light = z[:, cols[0]:cols[0] + 1] * _SCALE[cols[0]] * spread[cols[0]] * 1.6 * np.asarray(tone)
        vals[:, cols] = np.asarray(mean) + light + 0.25 * (vals[:, cols] - base[cols])
    # keep physically sensible ranges
    vals[:, P["eye_h"]] = np.clip(vals[:, P["eye_h"]], 0.02, 0.08)
    vals[:, P["eye_w"]] = np.clip(vals[:, P["eye_w"]], 0.06, 0.14)
    vals[:, P["brow_thick"]] = np.clip(vals[:, P["brow_thick"]], 0.012, 0.06)
    vals[:, P["lip_thick"]] = np.clip(vals[:, P["lip_thick"]], 0.015, 0.06)
    vals[:, P["mole_size"]] = np.clip(vals[:, P["mole_size"]], 0.006, 0.04)
    cols = _COLOUR_COLS["skin"] + _COLOUR_COLS["hair"] + [P["iris_r"], P["iris_g"], P["iris_b"]]
    vals[:, cols] = np.clip(vals[:, cols], 0.02, 0.98)
    return vals.astype(np.float32)


def group_index(groups: tuple[GroupSpec, ...], name: str) -> int:
    for i, g in enumerate(groups):
        if g.name == name:
            return i
    raise KeyError(name)
