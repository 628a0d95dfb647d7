"""Regressions from the quantization audit: entropy ranges, sensitivity's reference, calibration dtypes,
damaged quant.json, config ends, run-folder clashes, early layer-pattern checks, scale overflow."""
import json

import pytest
import torch
import yaml

from qfair.cli import main
from qfair.quant import QuantConfig, load_quantized, quantize, save_quantized, sensitivity
from qfair.quant.math import compute_qparams, fake_quantize_ref, qrange, quant_error
from qfair.quant.observers import make_observer
from qfair.utils.errors import CheckpointError, ConfigError, QuantError

from .test_cli_quantize import calib, ckpt  # noqa: F401  (pytest fixtures)

FAST = ["--calib", "synthetic", "--calib-size", "4", "--calib-batch-size", "4"]


# ---------------------------------------------------------------------------- entropy observer

def _relu(n: int, seed: int = 0) -> torch.Tensor:
    return torch.relu(torch.randn(n, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("sym", [True, False])
def test_entropy_keeps_relu_bulk_at_8_bits(sym):
    # half the values are exact zeros (a ReLU's spike): smeared into a merged bin it used to dominate the
    # divergence and clip at 2.0 of a 4.7 range, a quantization error 400x minmax's
    x = _relu(100_000)
    qmin, qmax = qrange(8, sym)
    obs = make_observer("entropy", qmin, qmax, sym)
    obs.observe(x)
    lo, hi = obs.compute_range()
    assert float(hi) > 3.0
    err = quant_error(x, float(lo), float(hi), qmin, qmax, sym)
    assert err < 2 * quant_error(x, 0.0, float(x.max()), qmin, qmax, sym)


def test_entropy_does_not_collapse_at_2_bits():
    # 2 levels a side used to allow a 2-bin threshold: [0, 0.016] for values up to 3.1
    x = _relu(1000, seed=3)
    for sym in (True, False):
        qmin, qmax = qrange(2, sym)
        obs = make_observer("entropy", qmin, qmax, sym)
        obs.observe(x)
        assert float(obs.compute_range()[1]) > 0.25 * float(x.max())


@pytest.mark.parametrize("bits", [6, 4])
def test_entropy_on_unsigned_grid_is_near_mse_optimal(bits):
    # one-sided data on an asymmetric grid: every level lies on one side (2x a signed grid's); the KL
    # threshold's error stays within a small factor of the MSE-optimal range's (it was 38x at 6 bits)
    x = _relu(100_000, seed=3)
    qmin, qmax = qrange(bits, False)
    errs = {}
    for name in ("entropy", "mse"):
        obs = make_observer(name, qmin, qmax, False)
        obs.observe(x)
        lo, hi = obs.compute_range()
        errs[name] = quant_error(x, float(lo), float(hi), qmin, qmax, False)
    assert errs["entropy"] < 2 * errs["mse"]


# ---------------------------------------------------------------------------- math

def test_asymmetric_scale_does_not_overflow():
    # (hi - lo) overflows float32 for a range of +-3e38; the scale must stay finite (hand value: 6e38 / 255)
    scale, zp = compute_qparams(torch.tensor(-3e38), torch.tensor(3e38), 0, 255, False)
    assert torch.isfinite(scale) and float(scale) == pytest.approx(6e38 / 255, rel=1e-6)
    assert float(zp) == 128.0  # 0 - round(-127.5) = 128 (half to even)
    y = fake_quantize_ref(torch.tensor([1e38, -3e38, 0.0]), scale, zp, 0, 255)
    assert torch.isfinite(y).all() and float(y[2]) == 0.0


# ---------------------------------------------------------------------------- calibration dtypes

@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_calibration_batches_in_another_float_dtype(tiny_r18, images, dtype):
    ref = quantize(tiny_r18, QuantConfig(bits=6, calib_batch_size=4), images)
    q = quantize(tiny_r18, QuantConfig(bits=6, calib_batch_size=4, ptq=("bias_correction",)), images.to(dtype))
    out = q(images[:2])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if dtype == torch.float64:  # float64 -> float32 of float32 values is exact: the same calibration
        q64 = quantize(tiny_r18, QuantConfig(bits=6, calib_batch_size=4), images.to(dtype))
        assert torch.equal(q64(images[:2]), ref(images[:2]))


# ---------------------------------------------------------------------------- sensitivity

def test_sensitivity_measures_against_the_float_model(tiny_r18, images):
    # with bias correction, the quantizers-off model is not the float model: the "all" row must be the real
    # cosine of the quantized model to the float one
    cfg = QuantConfig(bits=4, calib_batch_size=4, ptq=("bias_correction",))
    res = sensitivity(tiny_r18, cfg, images, probe_images=8)  # one (N, 3, H, W) tensor, as quantize takes
    q = quantize(tiny_r18, cfg, images)
    with torch.no_grad():
        true = float(torch.nn.functional.cosine_similarity(tiny_r18(images), q(images)).mean())
    assert res["all"]["cosine"] == pytest.approx(true, abs=1e-5)
    assert res["probe_images"] == 8


def test_sensitivity_rejects_bad_granularity_before_calibrating(tiny_r18):
    class Boom:
        def __iter__(self):
            raise AssertionError("calibration started")

    with pytest.raises(ConfigError, match="granularity"):
        sensitivity(tiny_r18, QuantConfig(), Boom(), granularity="blocks")
    with pytest.raises(ConfigError, match="probe_images"):
        sensitivity(tiny_r18, QuantConfig(), Boom(), probe_images=0)


# ---------------------------------------------------------------------------- config ends

@pytest.mark.parametrize("kw,key", [({"percentile": 50.0}, "percentile"), ({"averaging_constant": 0.0},
                                                                            "averaging_constant")])
def test_config_refuses_unusable_range_ends(kw, key):
    with pytest.raises(ConfigError, match=key):
        QuantConfig(**kw)
    QuantConfig(percentile=100.0, averaging_constant=1.0)  # the other ends are fine


# ---------------------------------------------------------------------------- damaged quant.json

@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.pop("config"), "'config'"),
    (lambda d: d.__setitem__("quantizers", 5), "'quantizers'"),
    (lambda d: d["quantizers"][0].pop("dynamic"), "quantizers[0] lacks dynamic"),
    (lambda d: d.__setitem__("arch", "iresnet18"), "'arch'"),
    (lambda d: d.__setitem__("arch", {"name": "nosuch", "kwargs": {}}), "cannot build its architecture 'nosuch'"),
    (lambda d: d["arch"]["kwargs"].__setitem__("depth_typo", 3), "cannot build its architecture 'iresnet18'"),
    (lambda d: d.__setitem__("arch", None), "names no architecture"),
])
def test_damaged_quant_json_is_named(tiny_r18, images, tmp_path, edit, msg):
    q = quantize(tiny_r18, QuantConfig(bits=8, calib_batch_size=4), images[:4])
    save_quantized(q, tmp_path / "run", arch={"name": "iresnet18", "kwargs": {"width": 8}})
    p = tmp_path / "run" / "quant.json"
    doc = json.loads(p.read_text())
    edit(doc)
    p.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="quant.json") as exc:
        load_quantized(tmp_path / "run")
    assert msg in str(exc.value)


# ---------------------------------------------------------------------------- run folders (CLI)

def test_sensitivity_refuses_a_quantize_run_folder(ckpt, tmp_path, calib, capsys):  # noqa: F811
    run = tmp_path / "q8"
    assert main(["quantize", "--model", str(ckpt), *FAST, "--out", str(run)]) == 0
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["sensitivity", "--model", str(ckpt), *FAST, "--probe-images", "2", "--out", str(run)]) == 2
    assert "holds a quantized model" in " ".join(capsys.readouterr().err.split())
    assert (run / "config.yaml").read_text() == before and not (run / "sensitivity.json").exists()
    assert not calib[1:]  # refused before any calibration image was made


def test_sensitivity_reruns_in_its_own_folder_and_quantize_refuses_it(ckpt, tmp_path, calib, capsys):  # noqa: F811
    out = tmp_path / "sens"
    argv = ["sensitivity", "--model", str(ckpt), *FAST, "--probe-images", "2", "--out", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # a rerun replaces every file it wrote
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert main(["quantize", "--model", str(ckpt), *FAST, "--out", str(out), *extra]) == 2
        assert "qfair sensitivity" in " ".join(capsys.readouterr().err.split())
    assert yaml.safe_load((out / "config.yaml").read_text())["command"] == "qfair sensitivity"


def test_mixed_config_with_wrong_layer_names_fails_before_calibration(ckpt, tmp_path, calib, capsys):  # noqa: F811
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text("bits: 6\nlayer_wbits:\n  \"output_layer\": 8\n")  # MobileFaceNet names on an iresnet
    assert main(["quantize", "--config", str(cfg), "--model", str(ckpt), *FAST, "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(cfg) in err and "output_layer" in err and "layer1" in err
    assert calib == []  # no calibration images were made for a config that cannot run


def test_pattern_error_from_the_api_is_unchanged(tiny_r18, images):
    with pytest.raises(QuantError, match="layer_abits: pattern 'nope'"):
        quantize(tiny_r18, QuantConfig(layer_abits={"nope": 8}), images[:4])
