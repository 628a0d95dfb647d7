"""quant.json's top-level summary (recipe, wbits, abits, observers, ptq, calibrated, float_kept, embedding_size)
repeats its ``config`` section and the quantizer records: a file where they disagree (edited, damaged) is refused
with the file, the key and both values named, instead of loading an 8-bit model labelled W6A8."""
import json
import shutil

import pytest
import torch

from qfair import QfairError
from qfair.cli import main
from qfair.quant import QuantConfig, load_quantized, quantize, save_quantized
from qfair.quant.serialize import read_quant_json
from qfair.utils.errors import CheckpointError

FIX = "re-run `qfair quantize`"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from qfair.models import create_model

    torch.manual_seed(0)
    model = create_model("iresnet18", width=8).eval()
    images = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    q = quantize(model, QuantConfig(bits=8, recipe="deploy", skip=("fc",), calib_batch_size=4), images)
    return save_quantized(q, tmp_path_factory.mktemp("qj") / "run")


def _edited(saved, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    p = run / "quant.json"
    doc = json.loads(p.read_text())
    edit(doc)
    p.write_text(json.dumps(doc))
    return run


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _uncalibrate_one(d):
    d["quantizers"][1]["calibrated"] = False


# (edit, key, the value written, what it disagrees with); read_quant_json sees the config-backed ones
IN_FILE = [
    (_set("wbits", 6), "wbits", "6", "config.wbits is 8"),
    (_set("abits", 4), "abits", "4", "config.abits is 8"),
    (_set("wbits", "8"), "wbits", "'8'", "config.wbits is 8"),
    (_set("wbits", None), "wbits", "None", "config.wbits is 8"),
    (_set("recipe", "quantface"), "recipe", "'quantface'", "config.recipe is 'deploy'"),
    (_set("recipe", "tensorrt"), "recipe", "'tensorrt'", "config.recipe is 'deploy'"),
    (_set("observer", "mse"), "observer", "'mse'", "config.observer is 'minmax'"),
    (_set("weight_observer", "percentile"), "weight_observer", "'percentile'", "config.weight_observer is 'minmax'"),
    (_set("ptq", ["adaround"]), "ptq", "['adaround']", "config.ptq is []"),
    (_set("calibrated", "yes"), "calibrated", "'yes'", "must be true or false"),
    (_uncalibrate_one, "calibrated", "True", "has calibrated False"),
]
# checked against the model the config rebuilds (load_quantized only)
REBUILT = [
    (_set("float_kept", []), "float_kept", "[]", "rebuilds has float_kept ['fc']"),
    (_set("embedding_size", 128), "embedding_size", "128", "rebuilds has embedding_size 512"),
]


def _check_message(msg, run, key, value, other):
    assert str(run / "quant.json") in msg, msg
    assert f"top-level '{key}' is {value} but" in msg and other in msg, msg
    assert FIX in msg and "edited or is damaged" in msg, msg


@pytest.mark.parametrize("edit,key,value,other", IN_FILE + REBUILT, ids=lambda v: v if isinstance(v, str) else None)
def test_summary_that_disagrees_is_refused_on_load(saved, tmp_path, edit, key, value, other):
    run = _edited(saved, tmp_path, edit)
    with pytest.raises(CheckpointError) as exc:
        load_quantized(run)
    assert isinstance(exc.value, QfairError)
    _check_message(str(exc.value), run, key, value, other)


@pytest.mark.parametrize("edit,key,value,other", IN_FILE, ids=lambda v: v if isinstance(v, str) else None)
def test_summary_that_disagrees_is_refused_by_read_quant_json(saved, tmp_path, edit, key, value, other):
    run = _edited(saved, tmp_path, edit)
    with pytest.raises(CheckpointError) as exc:
        read_quant_json(run)
    _check_message(str(exc.value), run, key, value, other)


def test_saved_and_consistent_files_still_load(saved, tmp_path):
    m = load_quantized(saved)
    assert (m.qfair_quant["wbits"], m.qfair_quant["abits"], m.qfair_quant["recipe"]) == (8, 8, "deploy")
    # the config may spell the recipe by an alias: the summary holds its canonical name
    run = _edited(saved, tmp_path, lambda d: d["config"].__setitem__("recipe", "tensorrt"))
    assert load_quantized(run).qfair_quant["recipe"] == "deploy"
    # a file without the optional summary keys (a prepare-only save has no ptq) is fine
    run2 = _edited(saved, tmp_path / "b", lambda d: [d.pop(k) for k in ("ptq", "calibrated", "float_kept")])
    load_quantized(run2)


def test_prepare_only_model_saves_and_loads(saved, tmp_path):
    from qfair.models import create_model
    from qfair.quant import prepare

    q = prepare(create_model("iresnet18", width=8).eval(), QuantConfig(wbits=6, abits=8))
    out = save_quantized(q, tmp_path / "p")
    assert load_quantized(out).qfair_quant["wbits"] == 6


def test_evaluate_refuses_the_edited_run_instead_of_labelling_it(saved, tmp_path, capsys):
    run = _edited(saved, tmp_path, _set("wbits", 6))
    code = main(["evaluate", str(run), "--bench", "builtin:tiny", "--n-bootstrap", "10", "--no-flip", "--no-cache",
                 "--no-figures", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "top-level 'wbits' is 6 but config.wbits is 8" in err, err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_rebuild_quantized_from_a_document_and_a_state_dict_needs_no_folder(saved, monkeypatch):
    """What load_quantized rebuilds from a run folder, rebuild_quantized rebuilds from the two objects (a .qpk
    holds both): the same outputs bit for bit, with no file written; its errors name the given sources."""
    import tempfile

    from qfair.quant.serialize import rebuild_quantized
    from qfair.utils.io import safe_torch_load

    doc, sd = read_quant_json(saved), safe_torch_load(saved / "model.pt")
    monkeypatch.setattr(tempfile, "TemporaryDirectory", None)  # any temporary folder would fail here
    monkeypatch.setattr(tempfile, "mkdtemp", None)
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rebuild_quantized(doc, sd)(x), load_quantized(saved)(x))
    with pytest.raises(CheckpointError, match=r"^DOC: unknown format 'x'"):
        rebuild_quantized({**doc, "format": "x"}, sd, source="DOC")
    with pytest.raises(CheckpointError, match=r"^DOC: top-level 'wbits' is 6 but config.wbits is 8"):
        rebuild_quantized({**doc, "wbits": 6}, sd, source="DOC")
    cut = {k: v for k, v in sd.items() if not k.endswith("conv1.weight")}
    with pytest.raises(CheckpointError, match=r"^SD does not match the quantized .* \(missing: .*conv1.weight"):
        rebuild_quantized(doc, cut, source="DOC", weights="SD")
