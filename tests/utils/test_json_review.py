"""to_json writes NaN and inf inside numpy arrays and torch tensors as strings (JSON has no NaN)."""
from __future__ import annotations

import json

import numpy as np
import torch

from qfair.utils.io import atomic_write_json, to_json


def test_nan_and_inf_inside_arrays_and_tensors_become_strings(tmp_path):
    doc = {"ci": np.array([0.5, np.nan]), "t": torch.tensor([float("inf"), -float("inf"), 1.5]),
           "m": np.array([[1.0, np.inf]], dtype=np.float32), "s": np.float32("nan"), "i": np.arange(2)}
    back = json.loads(to_json(doc))
    assert back == {"ci": [0.5, "nan"], "t": ["inf", "-inf", 1.5], "m": [[1.0, "inf"]], "s": "nan", "i": [0, 1]}
    p = atomic_write_json(tmp_path / "m.json", doc)
    assert json.loads(p.read_text()) == back


def test_floats_keep_full_precision():
    x = 1 / 3 + 1e-12
    assert json.loads(to_json({"x": x, "a": np.array([x])})) == {"x": x, "a": [x]}
