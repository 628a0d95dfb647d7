"""`qfair evaluate` / `qfair compare` end to end on tiny models and the tiny built-in benchmark."""
import json

import pytest
import torch

from qfair.cli import main
from qfair.config import load_config
from qfair.eval.config import EvalConfig

from .conftest import TinyNet
from .test_embed import _onnx_of

FAST = ["--bench", "builtin:tiny", "--n-bootstrap", "50", "--no-flip"]  # flip TTA is tested in test_embed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from qfair.models import create_model
    from qfair.quant import QuantConfig, quantize, save_quantized

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    fp = create_model("iresnet18", width=4, num_features=16).eval()
    torch.save(fp.state_dict(), root / "fp32.pt")
    gen = torch.Generator().manual_seed(1)
    calib = [torch.rand(4, 3, 112, 112, generator=gen) * 2 - 1]
    save_quantized(quantize(fp, QuantConfig(bits=6), calib), root / "w6")
    (root / "cache").mkdir()
    return root


def test_config_file_loads():
    cfg = load_config(EvalConfig, "configs/evaluate.yaml")
    assert cfg == EvalConfig()


def test_evaluate_float_checkpoint(models, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(models / "fp32.pt"), "--arch", "iresnet18", *FAST, "--out", str(out),
                 "--cache-dir", str(models / "cache")]) == 0
    for name in ("report.md", "metrics.json", "results.csv", "tables.tex", "config.yaml",
                 "figures/accuracy_builtin-tiny.png", "figures/det_builtin-tiny.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "metrics.json").read_text())
    r = doc["results"][0]
    assert r["meta"]["bits"] == "FP32" and len(r["groups"]) == 4 and r["bootstrap"]["method"] == "identity"
    assert "builtin-tiny: accuracy" in capsys.readouterr().out


def test_compare_quantized_against_float(models, tmp_path):
    out = tmp_path / "cmp"
    rc = main(["compare", str(models / "w6"), str(models / "fp32.pt"), "--arch", "iresnet18", *FAST,
               "--out", str(out), "--no-figures", "--cache-dir", str(models / "cache")])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    (c,) = doc["comparisons"]
    assert (c["reference"], c["other"]) == ("fp32", "w6")
    assert set(c["per_group"]) == set(doc["results"][0]["groups"])
    csv = (out / "results.csv").read_text().splitlines()
    assert any(",w6,0,W6A6,synthetic" in line or ",w6,0,W6A6," in line for line in csv)
    assert "McNemar" in (out / "report.md").read_text()


def test_out_in_the_run_folder_keeps_its_config(models, tmp_path):
    import shutil

    run = tmp_path / "w6"
    shutil.copytree(models / "w6", run)
    (run / "report.md").write_text("# qfair quantize: the run's own report")
    before = (run / "config.yaml").read_text()
    assert main(["evaluate", str(run), *FAST, "--out", str(run), "--no-figures", "--cache-dir",
                 str(models / "cache")]) == 0
    assert (run / "config.yaml").read_text() == before and (run / "eval_config.yaml").is_file()
    assert (run / "report.md").read_text() == "# qfair quantize: the run's own report"
    assert "McNemar" not in (run / "eval_report.md").read_text() and "W6A6" in (run / "eval_report.md").read_text()
    r = json.loads((run / "metrics.json").read_text())["results"][0]
    assert r["meta"]["bits"] == "W6A6" and r["meta"]["quantized"]

    # the results describe this model.pt: quantizing into the folder again refuses, --overwrite deletes them
    (run / "bench.json").write_text("{}")
    again = ["quantize", "--model", str(models / "fp32.pt"), "--arch", "iresnet18", "--bits", "8", "--calib",
             "synthetic", "--calib-size", "2", "--calib-batch-size", "2", "--out", str(run)]
    assert main(again) == 2
    measured = ("eval_report.md", "eval_config.yaml", "metrics.json", "results.csv", "tables.tex", "bench.json")
    assert all((run / n).is_file() for n in measured)
    assert main([*again, "--overwrite"]) == 0
    assert not any((run / n).exists() for n in measured)
    assert json.loads((run / "quant.json").read_text())["wbits"] == 8


def test_evaluating_into_an_evaluate_folder_again_replaces_its_report(models, tmp_path):
    out = tmp_path / "e"
    args = ["evaluate", str(models / "w6"), *FAST, "--out", str(out), "--no-figures", "--cache-dir",
            str(models / "cache")]
    assert main(args) == 0 and main(args) == 0
    assert (out / "report.md").is_file() and not (out / "eval_report.md").exists()


def test_evaluate_onnx_file_and_errors(tmp_path, capsys):
    path = _onnx_of(TinyNet.make(), tmp_path / "tiny.onnx")
    assert main(["evaluate", str(path), *FAST, "--out", str(tmp_path / "o"), "--no-figures", "--no-cache",
                 "--mode", "grid"]) == 0
    r = json.loads((tmp_path / "o" / "metrics.json").read_text())["results"][0]
    assert r["meta"]["backend"] == "onnxruntime" and r["settings"]["mode"] == "grid"
    assert main(["evaluate", str(tmp_path / "missing.pt"), *FAST, "--no-cache", "--out", str(tmp_path / "x")]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["evaluate", str(path), *FAST, "--no-cache", "--out", str(tmp_path / "y"), "--groups", "Martian"]) == 2
    assert "Martian" in capsys.readouterr().err


def test_compare_refuses_the_same_model_twice(models, tmp_path, capsys):
    w6 = str(models / "w6")
    for twice in ([w6, w6], [w6, w6 + "/", str(models / "fp32.pt")]):
        assert main(["compare", *twice, *FAST, "--out", str(tmp_path / "c"), "--no-cache"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "same model twice" in err and "w6" in err
    assert not (tmp_path / "c").exists()


def _run_with_onnx(folder, recorded_sha):
    """A run folder holding model.pt, a model.onnx and its model.export.json (``recorded_sha``: what the
    report says model.pt hashed to at export time; None: a report from before the hash was recorded)."""
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"the quantized weights of today")
    _onnx_of(TinyNet.make(), folder / "model.onnx")
    doc = {"target": "onnxruntime", "bits": 6}
    if recorded_sha is not None:
        doc["source_model"] = {"file": "model.pt", "sha256": recorded_sha}
    (folder / "model.export.json").write_text(json.dumps(doc))
    return folder


def test_stale_onnx_in_a_requantized_run_is_refused(tmp_path, capsys):
    import hashlib

    from qfair.eval.targets import load_target

    stale = _run_with_onnx(tmp_path / "stale", hashlib.sha256(b"last week's weights").hexdigest())
    assert main(["evaluate", str(stale), "--backend", "onnxruntime", *FAST, "--no-cache",
                 "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "model.onnx was exported from a different model.pt" in err and "qfair export" in err
    with pytest.raises(Exception, match="different model.pt"):  # the .onnx file itself, too
        load_target(stale / "model.onnx")
    fresh = _run_with_onnx(tmp_path / "fresh", hashlib.sha256(b"the quantized weights of today").hexdigest())
    assert load_target(fresh, backend="onnxruntime")[0].name == "onnxruntime"
    older = _run_with_onnx(tmp_path / "older", None)  # exported by an older qfair: accepted unchecked
    assert load_target(older, backend="onnxruntime")[0].name == "onnxruntime"


def test_display_names_of_folders_sharing_a_basename():
    from qfair.cli.compare import display_names

    assert display_names(["/runs/a/q6", "/runs/b/q6"]) == ["a/q6", "b/q6"]
    assert display_names(["/x/q6", "/q6"]) == ["x/q6", "/q6"]  # was "//q6"
