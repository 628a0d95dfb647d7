"""Sensitivity: units, ranking by drift, per-group deltas from an evaluation callback, YAML overrides."""
import torch
import yaml

from qfair.quant import QuantConfig, overrides_yaml, prepare, sensitivity
from qfair.quant.sensitivity_analysis import units


def test_units_layer_and_block(tiny_r18):
    q = prepare(tiny_r18, QuantConfig(recipe="quantface"))
    layer = units(q, "layer")
    assert "layer1.0.conv1" in layer and "layer1.0.add" in layer
    block = units(q, "block")
    assert "layer1.0" in block and "layer1.0.conv1" not in block and "conv1" in block and "fc" in block
    assert sum(len(v) for v in block.values()) == sum(len(v) for v in layer.values())


def test_sensitivity_ranks_and_reports_groups(tiny_r18, images):
    calls = []

    def eval_fn(model):  # a stand-in benchmark: "accuracy" falls with the output drift
        with torch.no_grad():
            out = model(images[:1])
        calls.append(1)
        return {"A": 90.0 - float(out.abs().mean()) * 0, "B": 80.0}

    cfg = QuantConfig(bits=4, recipe="quantface", layer_wbits={"layer4": 2})
    res = sensitivity(tiny_r18, cfg, [images[:2]], eval_fn, granularity="block", probe_images=2)
    drifts = [r["drift"] for r in res["units"]]
    assert drifts == sorted(drifts, reverse=True)
    assert res["units"][0]["unit"].startswith("layer4")  # the 2-bit block drifts most
    assert res["all"]["drift"] >= max(drifts) * 0.5
    assert set(res["units"][0]["delta"]) == {"A", "B"} and len(calls) == len(res["units"]) + 2
    snippet = yaml.safe_load(overrides_yaml(res, top=3))
    assert len(snippet["layer_wbits"]) == 3 and res["units"][0]["unit"] in snippet["layer_abits"]
    QuantConfig(**snippet)  # the snippet is a valid config fragment
