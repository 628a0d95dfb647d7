"""Evaluating a packed low-bit checkpoint (`qfair export --format packed` -> model.qpk): the model is rebuilt
from what the file records and computes bit for bit what the run's model.pt computes."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from qfair.cli import main
from qfair.utils.errors import CheckpointError

FAST = ["--bench", "builtin:tiny", "--n-bootstrap", "50", "--no-flip"]
SAME = ("per_group", "overall", "fairness", "fairness_ci", "threshold", "rate_fairness", "bootstrap")


def _plain(x):
    """``x`` with NaN and infinities as metrics.json writes them ("nan", "inf", "-inf"), so that undefined rates,
    infinite IR / SER bounds and a fold threshold that calls nothing "same" (-inf) compare equal."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"
    return x


def _same(a, b):
    return _plain(a) == _plain(b)


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=g) * 2 - 1


def _quantized_run(root, name, **cfg):
    from qfair.export.packed import export_packed
    from qfair.models import create_model
    from qfair.quant import QuantConfig, quantize, save_quantized

    torch.manual_seed(0)
    fp = create_model("iresnet18", width=4, num_features=16).eval()
    run = save_quantized(quantize(fp, QuantConfig(**cfg), [_images(4, 1)]), root / name)
    export_packed(run)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qpk")
    return {"w6": _quantized_run(root, "w6", bits=6),  # quantface: dynamic per-channel weight ranges
            "w8": _quantized_run(root, "w8", bits=8, recipe="deploy")}


def _alone(run, tmp_path):
    """The run's model.qpk copied into a folder of its own (no model.pt, no quant.json beside it)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return shutil.copy(run / "model.qpk", tmp_path / "model.qpk")


@pytest.mark.parametrize("which", ["w6", "w8"])
def test_packed_model_embeds_bit_for_bit_like_model_pt(runs, which, tmp_path):
    from qfair.eval.backends import TorchBackend, make_backend
    from qfair.export.packed import load_packed_model
    from qfair.quant import load_quantized

    run = runs[which]
    x = _images(4, 7)
    with torch.no_grad():
        want = load_quantized(run)(x)
        got = load_packed_model(_alone(run, tmp_path))(x)
    assert torch.equal(got, want), float((got - want).abs().max())
    be = make_backend(run / "model.qpk")  # picked by the file name: the torch backend
    assert isinstance(be, TorchBackend) and be.meta()["quant"]["wbits"] == int(which[1])
    with be:
        assert np.array_equal(be.embed_batch(x), want.numpy())


@pytest.fixture(scope="module")
def run_result(runs):
    """metrics of the W6 run folder (model.pt + quant.json) on the tiny built-in benchmark, as metrics.json has them"""
    from qfair import evaluate

    return json.loads(json.dumps(evaluate(runs["w6"], "builtin:tiny", flip=False, n_bootstrap=50).to_dict()))


def test_api_evaluate_of_the_qpk_equals_the_run(runs, run_result, tmp_path):
    from qfair import evaluate

    got = evaluate(_alone(runs["w6"], tmp_path), "builtin:tiny", flip=False, n_bootstrap=50).to_dict()
    assert got["meta"]["bits"] == "W6A6" and got["meta"]["recipe"] == run_result["meta"]["recipe"] == "quantface"
    for key in SAME:
        assert _same(got[key], run_result[key]), key


def test_cli_evaluate_and_info_of_a_qpk(runs, run_result, tmp_path, capsys):
    qpk = _alone(runs["w6"], tmp_path / "alone")
    assert main(["evaluate", str(qpk), *FAST, "--out", str(tmp_path / "o"), "--no-cache", "--no-figures"]) == 0
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())["results"][0]
    assert got["meta"]["bits"] == "W6A6" and got["meta"]["backend"] == "torch"
    for key in SAME:
        assert _same(got[key], run_result[key]), key
    capsys.readouterr()
    assert main(["info", str(qpk)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "iresnet18" in shown and "quantface W6A6" in shown


def test_damaged_or_incomplete_qpk_is_refused_clearly(runs, tmp_path, capsys):
    from qfair.export.packed import load_packed, load_packed_model, save_packed

    data = (runs["w6"] / "model.qpk").read_bytes()
    cut = tmp_path / "cut.qpk"
    cut.write_bytes(data[: len(data) - 1000])
    assert main(["evaluate", str(cut), *FAST, "--out", str(tmp_path / "o"), "--no-cache"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(cut) in err and "truncated" in err

    state, meta = load_packed(runs["w6"] / "model.qpk")
    bare = save_packed(state, tmp_path / "bare.qpk", meta={"qfair_quant": meta["qfair_quant"]})  # no quant.json
    with pytest.raises(CheckpointError, match="does not record its architecture") as exc:
        load_packed_model(bare)
    assert str(bare) in str(exc.value) and "qfair export RUN_DIR --format packed" in str(exc.value)

    broken = dict(meta, quant_json={**meta["quant_json"], "quantizers": meta["quant_json"]["quantizers"][1:]})
    broken_file = save_packed(state, tmp_path / "broken.qpk", meta=broken)
    with pytest.raises(CheckpointError, match="cannot rebuild the quantized model") as exc:
        load_packed_model(broken_file)
    assert str(broken_file) in str(exc.value) and "qfair-qpk-" not in str(exc.value)  # no temporary path


def test_older_qpk_without_its_record_uses_the_run_folders_quant_json(runs, tmp_path):
    from qfair.export.packed import load_packed, load_packed_model, save_packed
    from qfair.quant import load_quantized

    run = shutil.copytree(runs["w6"], tmp_path / "run")
    state, meta = load_packed(run / "model.qpk")
    old = save_packed(state, run / "old.qpk", meta={"source": str(run), "qfair_quant": meta["qfair_quant"]})
    x = _images(2, 3)
    with torch.no_grad():
        assert torch.equal(load_packed_model(old)(x), load_quantized(run)(x))
    doc = json.loads((run / "quant.json").read_text())  # the run quantized again with other settings
    doc["config"]["seed"] = 1
    (run / "quant.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="describes another quantization"):
        load_packed_model(old)


def test_qpk_of_a_requantized_run_is_refused(runs, tmp_path):
    from qfair.models import load_model

    run = shutil.copytree(runs["w8"], tmp_path / "run")
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes() + b"\0")  # model.pt is not the exported one
    with pytest.raises(CheckpointError, match=r"exported from a different model.pt.*packed model.*--format packed"):
        load_model(run / "model.qpk")


def test_qpk_exported_from_a_model_object_loads_on_its_own(runs, tmp_path):
    from qfair.export.packed import export_packed
    from qfair.models import load_model
    from qfair.quant import load_quantized

    model = load_quantized(runs["w8"])  # an nn.Module, no run folder: the file records its quant.json itself
    path = export_packed(model, tmp_path / "m.qpk")
    x = _images(2, 4)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), model(x))


def test_a_qpk_is_not_accepted_as_a_float_teacher(runs):
    """load_model turns a .qpk into its quantized model; a teacher must be the float model."""
    from qfair.train.api import load_teacher

    with pytest.raises(CheckpointError, match="is a quantized model; the teacher must be the float model"):
        load_teacher(str(runs["w6"] / "model.qpk"), None)
