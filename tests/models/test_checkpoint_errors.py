"""Checkpoint loading: accepted layouts and the errors a new user meets."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from qfair.models import create_model, load_model
from qfair.utils.errors import CheckpointError, QfairError
from qfair.utils.registry import UnknownNameError


@pytest.fixture(scope="module")
def mbf_sd():
    return create_model("mbf").state_dict()


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "model_ddp"])
def test_accepted_layouts(tmp_path, mbf_sd, wrap):
    sd = {"plain": mbf_sd,
          "module": {f"module.{k}": v for k, v in mbf_sd.items()},
          "state_dict": {"state_dict": mbf_sd, "epoch": 3},
          "model_ddp": {"model": {f"module.{k}": v for k, v in mbf_sd.items()}}}[wrap]
    torch.save(sd, tmp_path / "c.pt")
    m = load_model(tmp_path / "c.pt", arch="mbf")
    assert torch.equal(m.state_dict()["conv_sep.layers.0.weight"], mbf_sd["conv_sep.layers.0.weight"])
    # without --arch the architecture is guessed from the keys
    assert load_model(tmp_path / "c.pt").qfair_arch["name"] == "mbf"


def test_other_architecture_names_keys_and_hints(tmp_path):
    torch.save(create_model("iresnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "r18.pth", arch="iresnet50")
    msg = str(exc.value)
    assert "missing keys" in msg and "layer1.2.bn1.weight" in msg and "in all" in msg
    assert "looks like iresnet18" in msg and "--arch iresnet18" in msg


def test_shape_mismatch_is_named(tmp_path, mbf_sd):
    sd = dict(mbf_sd)
    sd["conv_sep.layers.0.weight"] = torch.zeros(512, 64, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"conv_sep.layers.0.weight: checkpoint \(512, 64, 1, 1\)"):
        load_model(tmp_path / "bad.pth", arch="mbf")


def test_truncated_file(tmp_path, mbf_sd):
    p = tmp_path / "t.pth"
    torch.save(mbf_sd, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint|refused"):
        load_model(p, arch="mbf")


def test_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError):
        load_model(p, arch="mbf")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"conv1.weight": _Evil(marker)}, f)
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        load_model(p, arch="iresnet18")
    assert not marker.exists()
    # the same payload inside a torch zip checkpoint
    p2 = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": _Evil(marker)}, p2)
    with pytest.raises(CheckpointError):
        load_model(p2, arch="iresnet18")
    assert not marker.exists()


def test_missing_file_and_unknown_arch(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth", arch="mbf")
    with pytest.raises(UnknownNameError, match="Did you mean 'iresnet50'"):
        create_model("iresnet5O")
    assert isinstance(UnknownNameError("x"), QfairError)


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "l.pth")
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_model(tmp_path / "l.pth", arch="mbf")


def test_onnx_file_is_named_not_called_malicious(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "model.onnx"))
    with pytest.raises(CheckpointError, match="is an ONNX graph.*--backend onnxruntime") as exc:
        load_model(tmp_path / "model.onnx", arch="mbf")
    assert "run code" not in str(exc.value)


def test_text_file_named_pt_says_what_it_is(tmp_path):
    p = tmp_path / "text.pt"
    p.write_text("hello\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint.*neither a zip archive nor a pickle"):
        load_model(p, arch="mbf")
