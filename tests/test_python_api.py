"""The Python API as a researcher uses it: top-level names, configs checked when built, bad arguments
answered with a QfairError that names the argument (not an AttributeError from deep inside), inputs
left untouched, results that print in one line."""
import json

import pytest
import torch

import qfair
from qfair.utils.errors import CheckpointError, ConfigError, DataError, QfairError, QuantError


@pytest.fixture(scope="module")
def tiny():
    """iresnet18 at width 8 (random weights, eval mode): 112x112 in, 512-d out, fast on CPU."""
    torch.manual_seed(0)
    return qfair.create_model("iresnet18", width=8).eval()


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(4, 3, 112, 112, generator=g) * 2 - 1 for _ in range(2)]


@pytest.fixture(scope="module")
def q8(tiny, calib):
    return qfair.quantize(tiny, qfair.QuantConfig(bits=8), calib)


# ------------------------------------------------------------------ discoverability


def test_top_level_names_cover_a_whole_study():
    from qfair.data import calibration_batches, open_benchmark
    from qfair.eval import compare, evaluate
    from qfair.export import export_onnx
    from qfair.train import kd_finetune

    for name, obj in [("calibration_batches", calibration_batches), ("open_benchmark", open_benchmark),
                      ("evaluate", evaluate), ("compare", compare), ("export_onnx", export_onnx),
                      ("kd_finetune", kd_finetune)]:
        assert name in qfair.__all__ and name in dir(qfair)
        assert getattr(qfair, name) is obj


# ------------------------------------------------------------------ QuantConfig


@pytest.mark.parametrize("kwargs, match", [
    ({"recipe": "nope"}, "recipe: got 'nope', allowed: deploy"),
    ({"observer": "nope"}, "observer: got 'nope'"),
    ({"skip": "fc"}, "skip: got 'fc' \\(str\\), expected list of str"),
    ({"ptq": "bias_correction"}, "ptq: got 'bias_correction' \\(str\\)"),
    ({"percentile": 10.0}, "percentile: got 10.0, allowed range"),
    ({"calib_size": 0}, "calib_size: got 0"),
    ({"per_channel": "no"}, "per_channel: got 'no'"),
])
def test_quant_config_is_validated_when_built_in_python(kwargs, match):
    """As a YAML file is: before, recipe='nope' failed only in prepare(), and skip='fc' as patterns 'f', 'c'."""
    with pytest.raises(ConfigError, match=match):
        qfair.QuantConfig(**kwargs)


def test_quant_config_accepts_what_a_config_file_accepts():
    cfg = qfair.QuantConfig(bits=6.0, skip=["fc"], ptq=["bias_correction"], recipe="tensorrt")
    assert cfg.bits == 6 and isinstance(cfg.bits, int) and cfg.skip == ("fc",) and cfg.ptq == ("bias_correction",)
    assert cfg.recipe == "tensorrt"  # a registry alias, as observer aliases already were
    assert qfair.QuantConfig(observer="ema").observer == "ema"


# ------------------------------------------------------------------ quantize / prepare


def test_quantize_takes_a_mapping_config_and_one_image_tensor(tiny, calib, q8):
    x = torch.cat(calib)
    q = qfair.quantize(tiny, {"bits": 8, "calib_batch_size": 4}, x)  # one (N, 3, 112, 112) tensor, split in 4s
    assert q.qfair_quant["calib_images"] == 8 and q.qfair_quant["wbits"] == 8
    with torch.no_grad():
        assert torch.equal(q(x), q8(x))  # the same model as from the list of batches


def test_quantize_bad_arguments_name_the_argument(tiny, calib, q8):
    with pytest.raises(ConfigError, match="cfg must be a qfair.QuantConfig.*got int"):
        qfair.quantize(tiny, 8, calib)
    with pytest.raises(ConfigError, match="cfg: key 'bit' is not a QuantConfig setting. Did you mean 'bits'"):
        qfair.quantize(tiny, {"bit": 6}, calib)
    with pytest.raises(QuantError, match="float model as a torch nn.Module, got str.*qfair.load_model"):
        qfair.quantize("r18.pth", qfair.QuantConfig(), calib)
    with pytest.raises(QuantError, match="already quantized \\(W8A8, recipe quantface\\).*float model"):
        qfair.quantize(q8, qfair.QuantConfig(bits=6), calib)
    with pytest.raises(QuantError, match="prepare: .*already quantized"):
        qfair.prepare(q8, qfair.QuantConfig(bits=6))
    with pytest.raises(QuantError, match="uint8.*to_model_input"):
        qfair.quantize(tiny, None, [torch.zeros(2, 3, 112, 112, dtype=torch.uint8)])


def test_quantize_refuses_images_in_pixel_units(tiny, calib):
    """Float images in 0..255 calibrate every range ~128x too wide; before, that passed silently."""
    with pytest.raises(QuantError, match="reach \\|x\\| = 2[0-9.]+.*normalised to \\[-1, 1\\].*to_model_input"):
        qfair.quantize(tiny, None, [(c + 1) * 127.5 for c in calib])


def test_quantize_names_the_expected_shape_when_the_model_fails(tiny):
    with pytest.raises(QuantError, match="batch of shape \\(2, 3, 64, 64\\).*\\(B, 3, 112, 112\\)"):
        qfair.quantize(tiny, None, [torch.zeros(2, 3, 64, 64)])


# ------------------------------------------------------------------ save / load


def test_load_quantized_refuses_a_quant_json_that_disagrees_with_its_config(tmp_path, q8):
    run = qfair.save_quantized(q8, tmp_path / "run")
    doc = json.loads((run / "quant.json").read_text())
    doc["config"].update(bits=6, wbits=6, abits=6)  # an edited file: 8-bit scales on a 6-bit grid
    (run / "quant.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="quantizer 'conv1.weight_quantizer' disagrees.*bits 8 in quant.json "
                                              "vs 6"):
        qfair.load_quantized(run)


def test_load_quantized_bad_arguments(tmp_path, q8):
    run = qfair.save_quantized(q8, tmp_path / "run")
    with pytest.raises(CheckpointError, match="is a file; load_quantized takes the run folder.*qfair.load_model"):
        qfair.load_quantized(run / "model.pt")
    with pytest.raises(CheckpointError, match="model must be the float nn.Module.*got str"):
        qfair.load_quantized(run, model="iresnet18")
    with pytest.raises(CheckpointError, match="does not match the quantized MobileFaceNetQF.*missing: .*unexpected"):
        qfair.load_quantized(run, model=qfair.create_model("mobilefacenet"))
    with pytest.raises(CheckpointError, match="qfair.load_quantized"):  # the float loader points to the right one
        qfair.load_model(run)


def test_model_loading_bad_arguments(tiny):
    with pytest.raises(CheckpointError, match="needs a checkpoint path, got IResNet.*already a model"):
        qfair.load_model(tiny)
    with pytest.raises(ConfigError, match="model 'iresnet18': bad arguments"):
        qfair.create_model("iresnet18", width="a")


# ------------------------------------------------------------------ evaluate / compare


@pytest.fixture(scope="module")
def results(tiny, q8):
    from qfair.data import open_benchmark

    vset = open_benchmark("builtin:tiny")
    return (qfair.evaluate(tiny, vset, name="fp32", n_bootstrap=20),
            qfair.evaluate(q8, vset, name="w8a8", n_bootstrap=20))


def test_results_print_in_one_line(results):
    ref, other = results
    text = repr(ref)
    assert text.startswith("EvalResult('fp32' on 'builtin-tiny': GroupA ") and "AVG" in text and "SER" in text
    assert "\n" not in text and len(text) < 300  # the dataclass repr printed every per-group array (4 kB)
    (cmp,) = qfair.compare(ref, other)
    text = repr(cmp)
    assert text.startswith("PairedComparison('w8a8' vs 'fp32'") and "dSTD" in text and len(text) < 300
    assert cmp.to_dict()["per_group"].keys() == set(ref.groups)  # the full record is still there


def test_evaluate_and_compare_bad_arguments(tiny, results):
    with pytest.raises(DataError, match="vset must be a VerificationSet.*got int"):
        qfair.evaluate(tiny, 42)
    with pytest.raises(QfairError, match="backend 'onnxruntime' cannot run a IResNet.*an .onnx file"):
        qfair.evaluate(tiny, "builtin:tiny", backend="onnxruntime")
    with pytest.raises(DataError, match="compare takes EvalResult objects.*#1 \\(IResNet\\)"):
        qfair.compare(results[0], tiny)
    from qfair.eval import compare_pair

    with pytest.raises(DataError, match="compare_pair: other must be an EvalResult"):
        compare_pair(results[0], "w8a8")


def test_embedding_cache_follows_the_synthesis_cache_variable(tmp_path, monkeypatch):
    from qfair.eval.embed import default_cache_dir

    monkeypatch.delenv("QFAIR_CACHE", raising=False)
    monkeypatch.setenv("QFAIR_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    monkeypatch.setenv("QFAIR_CACHE", str(tmp_path / "own"))
    assert default_cache_dir() == tmp_path / "own" / "embeddings"


# ------------------------------------------------------------------ training entry points


def test_training_entry_points_bad_arguments(tmp_path, tiny, q8, calib):
    from qfair.train import distill, kd_finetune, qat

    with pytest.raises(ConfigError, match="kd_finetune: student must be a torch nn.Module, got str.*load_quantized"):
        kd_finetune(str(tmp_path), tiny, calib, steps=1)
    with pytest.raises(ConfigError, match="kd_finetune: teacher must be a torch nn.Module, got str"):
        kd_finetune(q8, "r18.pth", calib, steps=1)
    with pytest.raises(DataError, match="image tensor must be \\(N, 3, H, W\\)"):
        kd_finetune(q8, tiny, torch.zeros(3, 112, 112), steps=1)
    # a mapping is a config (validated like a file), anything else is named
    with pytest.raises(ConfigError, match="qat\\(\\) cfg: key 'stepz' is not a QatConfig setting"):
        qat({"stepz": 1}, tmp_path / "qat")
    with pytest.raises(ConfigError, match="distill: cfg must be a qfair.train.DistillConfig.*got str"):
        distill("configs/distill.yaml", tmp_path / "distill")
    assert not (tmp_path / "qat").exists() and not (tmp_path / "distill").exists()


def test_saving_again_describes_the_new_model_but_keeps_a_commands_config(tiny, calib, q8, tmp_path):
    import yaml

    q6 = qfair.quantize(tiny, qfair.QuantConfig(bits=6), calib)
    qfair.save_quantized(q8, tmp_path / "run")
    qfair.save_quantized(q6, tmp_path / "run")  # saved again into the same folder
    doc = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert doc["config"]["wbits"] == 6 and json.loads((tmp_path / "run" / "quant.json").read_text())["wbits"] == 6
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "config.yaml").write_text("command: qfair quantize --bits 6\nconfig: {bits: 6, calib: real}\n")
    qfair.save_quantized(q6, tmp_path / "cli")  # a command's full settings are kept
    assert yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["config"]["calib"] == "real"
