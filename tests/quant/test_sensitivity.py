"""Sensitivity: units, ranking by drift, per-group deltas from an evaluation callback, YAML overrides."""
import pytest
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


def test_with_ptq_corrections_each_unit_is_left_out_of_the_whole(tiny_r18, images):
    """With PTQ corrections (made for the fully quantized model) a unit's drift is what keeping it in float
    recovers: drift(all) - drift(all but the unit), checked here against the quantized model measured by hand."""
    import torch.nn.functional as F

    from qfair.quant import quantize
    from qfair.quant.ptq import set_quantizers
    from qfair.quant.quantizer import iter_quantizers

    cfg = QuantConfig(bits=4, recipe="quantface", calib_batch_size=4, ptq=("bias_correction",))
    res = sensitivity(tiny_r18, cfg, images, granularity="block", probe_images=8)
    assert res["method"] == "leave_one_out"
    q = quantize(tiny_r18, cfg, images).eval()
    with torch.no_grad():
        ref = tiny_r18(images)
        drift_all = 1 - float(F.cosine_similarity(ref, q(images)).mean())
        row = next(r for r in res["units"] if r["unit"] == "layer1.0")
        others = {name for name, _ in iter_quantizers(q)}
        set_quantizers(q, False)
        set_quantizers(q, True, others - set(row["quantizers"]))
        drift_without = 1 - float(F.cosine_similarity(ref, q(images)).mean())
    assert res["all"]["drift"] == pytest.approx(drift_all, abs=1e-6)
    assert row["drift"] == pytest.approx(drift_all - drift_without, abs=1e-6)
    drifts = [r["drift"] for r in res["units"]]
    assert drifts == sorted(drifts, reverse=True)


def test_without_ptq_each_unit_is_measured_alone(tiny_r18, images):
    res = sensitivity(tiny_r18, QuantConfig(bits=4, calib_batch_size=4), images, probe_images=8)
    assert res["method"] == "alone" and all(r["drift"] >= 0 for r in res["units"])
