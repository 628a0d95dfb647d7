"""A quantized qfair model where a float checkpoint is expected: say so, never suggest the arch that failed."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from qfair.models import create_model, load_model
from qfair.models.checkpoint import QuantizedCheckpointError
from qfair.utils.errors import CheckpointError


@pytest.fixture(scope="module")
def mbf_sd():
    return create_model("mbf").state_dict()


def _quantized_run(folder, sd, with_quant_json: bool):
    """A run folder as qfair quantize leaves it: model.pt with quantizer state, config.yaml, quant.json."""
    folder.mkdir()
    qsd = {**sd, "conv_sep.layers.0.weight_quantizer.scale": torch.ones(1),
           "conv_sep.layers.0.weight_quantizer.zero_point": torch.zeros(1)}
    torch.save(qsd, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"config": {"model": "weights/mbf_float.pth"}}))
    if with_quant_json:
        (folder / "quant.json").write_text(json.dumps({"arch": {"name": "mbf", "kwargs": {}}}))
    return folder


@pytest.mark.parametrize("arch", [None, "mbf"])
def test_quantized_run_folder_is_named_as_such(tmp_path, mbf_sd, arch):
    run = _quantized_run(tmp_path / "q6", mbf_sd, with_quant_json=True)
    with pytest.raises(QuantizedCheckpointError) as exc:
        load_model(run, arch=arch)
    msg = str(exc.value)
    assert "already-quantized" in msg and "weight_quantizer.scale" in msg
    assert "pass the run folder" in msg and "weights/mbf_float.pth" in msg
    assert "--arch" not in msg and exc.value.float_source == "weights/mbf_float.pth"


def test_quantized_model_pt_without_quant_json(tmp_path, mbf_sd):
    run = _quantized_run(tmp_path / "r_nojson", mbf_sd, with_quant_json=False)
    with pytest.raises(QuantizedCheckpointError, match="has no quant.json") as exc:
        load_model(run / "model.pt")
    assert not exc.value.has_quant_json and "--arch" not in str(exc.value)


def test_hint_never_suggests_the_arch_that_failed(mbf_sd):
    from qfair.models.checkpoint import load_state_dict_strict

    sd = {**mbf_sd, "extra.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError) as exc:
        load_state_dict_strict(create_model("mbf"), sd, source="c.pt", arch="mbf")
    msg = str(exc.value)
    assert "unexpected keys: extra.weight" in msg and "--arch mbf" not in msg and "not mbf" not in msg
    qsd = {**mbf_sd, "conv_sep.layers.0.weight_quantizer.scale": torch.ones(1)}
    with pytest.raises(CheckpointError, match="already-quantized"):
        load_state_dict_strict(create_model("mbf"), qsd, source="c.pt", arch="mbf")
