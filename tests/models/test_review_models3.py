"""Review round 3 of model loading: malformed safetensors sizes, refused-file diagnosis (numpy values,
memoized pickle names, shell-safe conversion commands), dtype kinds, self-containing checkpoints,
registry alias collisions and the small `qfair info` / registry checks."""
from __future__ import annotations

import ast
import json
import os
import pickle
import shlex
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qfair.cli import main
from qfair.models import create_model, guess_arch, load_model, read_checkpoint
from qfair.models._formats import _UNRESOLVED, _pickle_globals, diagnose
from qfair.utils.errors import CheckpointError, ConfigError
from qfair.utils.registry import Registry


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(0)
    return create_model("mobilefacenet", embedding_size=8).state_dict()


def _safetensors(path: Path, shape: object, nbytes: int = 4) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * nbytes)
    return path


def _one_line(text: str) -> str:
    return " ".join(text.split())


# 1. safetensors sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [[-1, -1], [1.7], [True], ["1"], [2, -2], 3])
def test_safetensors_bad_sizes_are_refused_naming_tensor_and_file(tmp_path, shape):
    p = _safetensors(tmp_path / "bad.safetensors", shape)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(p)
    msg = str(exc.value)
    assert "bad.safetensors" in msg and "'w'" in msg and "non-negative integers" in msg


def test_safetensors_good_sizes_still_read(tmp_path):
    p = _safetensors(tmp_path / "ok.safetensors", [1, 1])
    assert read_checkpoint(p)["w"].shape == (1, 1)


def test_info_on_negative_dims_is_an_error_not_a_traceback(tmp_path, capsys):
    p = _safetensors(tmp_path / "neg.safetensors", [-1, -1])
    assert main(["info", str(p)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "neg.safetensors" in err and "tensor 'w'" in err and "Traceback" not in err


# 2. numpy values beside the weights -----------------------------------------------------------------

@pytest.mark.parametrize("extra", [np.float64(0.9), np.zeros(3)])
def test_numpy_values_get_the_keep_only_the_weights_advice(tmp_path, tiny_sd, extra):
    p = tmp_path / "a.pt"
    torch.save({"state_dict": tiny_sd, "acc": extra}, p)
    with pytest.raises(CheckpointError) as exc:
        load_model(p)
    msg = str(exc.value)
    assert "numpy." in msg and "Keep only the weights" in msg and "python -c" in msg
    assert "malicious" not in msg


@pytest.mark.parametrize("folder", ["it's here", 'say "hi" $HOME `x`'])
def test_conversion_command_survives_quotes_in_the_path(tmp_path, tiny_sd, folder):
    d = tmp_path / folder
    d.mkdir()
    p = d / "a.pt"
    torch.save({"state_dict": tiny_sd, "acc": np.float64(0.9)}, p)
    msg = diagnose(p)
    argv = shlex.split(msg[msg.index("python -c"):])
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    tree = ast.parse(argv[2])  # the Python is valid; it is never run here (it would unpickle)
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert str(p) in literals and str(d / "a.state_dict.pth") in literals


# 3. pickle globals resolved through the memo ---------------------------------------------------------

class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 1)
        self.code = nn.ConvTranspose2d(1, 1, 1)  # an ordinary submodule named like a dangerous module


def _data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickled_module_globals_are_the_real_class_paths(tmp_path, protocol):
    p = tmp_path / "m.pt"
    torch.save(_Net(), p, pickle_protocol=protocol)
    expected = {f"{_Net.__module__}._Net", "collections.OrderedDict", "torch.nn.modules.conv.Conv2d",
                "torch.nn.modules.conv.ConvTranspose2d", "torch._utils._rebuild_parameter",
                "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}
    if protocol < 4:  # no EMPTY_SET opcode before protocol 4: an empty set is __builtin__.set([])
        expected.add("__builtin__.set")
    assert set(_pickle_globals(_data_pkl(p))) == expected
    msg = diagnose(p)
    assert "whole pickled model" in msg and "malicious" not in msg and "python -c" in msg


def test_memoized_dangerous_names_are_still_found():
    data = pickle.dumps([os.system, os.getcwd], protocol=4)  # the second reuses 'posix' / 'nt' via the memo
    mod = os.system.__module__
    assert set(_pickle_globals(data)) == {f"{mod}.system", f"{mod}.getcwd"}


def test_legacy_format_globals(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save(_Net(), p, _use_new_zipfile_serialization=False, pickle_protocol=4)
    found = set(_pickle_globals(p.read_bytes()))
    assert {"torch.nn.modules.conv.ConvTranspose2d", f"{_Net.__module__}._Net"} <= found
    assert not any(g.startswith("code.") for g in found)


def test_stack_global_of_non_strings_counts_as_dangerous(tmp_path):
    data = b"\x80\x04K\x01K\x02\x93."  # PROTO 4, BININT1 1, BININT1 2, STACK_GLOBAL, STOP
    assert _pickle_globals(data) == [_UNRESOLVED]
    p = tmp_path / "odd.pt"
    p.write_bytes(data)
    assert "malicious" in diagnose(p)


# 4. dtype kinds ----------------------------------------------------------------------------------

def test_integer_weights_are_refused_naming_the_keys(tmp_path, tiny_sd):
    p = tmp_path / "i8.pt"
    torch.save({k: (v * 50).to(torch.int8) if v.is_floating_point() else v for k, v in tiny_sd.items()}, p)
    with pytest.raises(CheckpointError) as exc:
        load_model(p, arch="mobilefacenet")
    msg = str(exc.value)
    assert "dtype mismatches" in msg and "conv1.conv.weight: checkpoint torch.int8 vs model torch.float32" in msg
    assert "i8.pt" in msg


def test_one_bool_tensor_is_refused(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd["conv1.bn.running_var"] = torch.ones_like(sd["conv1.bn.running_var"], dtype=torch.bool)
    torch.save(sd, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"dtype mismatches: conv1\.bn\.running_var: checkpoint torch\.bool"):
        load_model(tmp_path / "b.pt")


def test_legitimate_dtypes_still_load(tmp_path, tiny_sd):
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v.to(torch.int32) for k, v in tiny_sd.items()}
    assert any(k.endswith("num_batches_tracked") for k in sd)
    torch.save(sd, tmp_path / "bf16.pt")
    m = load_model(tmp_path / "bf16.pt")
    assert m.conv1.conv.weight.dtype == torch.float32 and m.conv1.bn.num_batches_tracked.dtype == torch.int64


# 5. self-containing and deep checkpoints -------------------------------------------------------------

def test_self_containing_checkpoint_is_an_error(tmp_path):
    x: dict = {"epoch": 1}
    x["model"] = x
    torch.save(x, tmp_path / "cyc.pt")
    with pytest.raises(CheckpointError, match=r"cyc\.pt: the checkpoint dict contains itself"):
        load_model(tmp_path / "cyc.pt")


def test_very_deep_nesting_is_an_error(tmp_path, tiny_sd):
    obj: dict = {"state_dict": tiny_sd}
    for _ in range(30):
        obj = {"model": obj}
    torch.save(obj, tmp_path / "deep.pt")
    with pytest.raises(CheckpointError, match=r"deep\.pt: the weights are nested more than"):
        load_model(tmp_path / "deep.pt")


def test_ordinary_nesting_still_loads(tmp_path, tiny_sd):
    torch.save({"model": {"state_dict": tiny_sd}, "config": {"model": {"name": "x"}}}, tmp_path / "n.pt")
    assert load_model(tmp_path / "n.pt").qfair_arch["name"] == "mobilefacenet"


# 6. registry collisions ----------------------------------------------------------------------------

def test_alias_cannot_take_over_a_name():
    r: Registry[int] = Registry("thing")
    r.add("a", 1)
    with pytest.raises(ValueError, match="alias 'a' is already taken by thing 'a'"):
        r.add("b", 2, aliases=("A",))
    assert r.get("a") == 1 and "b" not in r  # nothing of the refused entry was added


def test_same_alias_for_two_entries_is_refused():
    r: Registry[int] = Registry("thing")
    r.add("x", 1, aliases=("y",))
    with pytest.raises(ValueError, match="alias 'y' is already taken by thing 'x'"):
        r.add("z", 2, aliases=("y",))
    with pytest.raises(ValueError, match="already an alias of thing 'x'"):
        r.add("Y", 3)
    with pytest.raises(ValueError, match="given twice"):
        r.add("w", 4, aliases=("v", "v"))
    with pytest.raises(ValueError, match="given twice, or equals the name"):
        r.add("u", 5, aliases=("u",))
    assert r.get("y") == 1 and r.names() == ["x"]


# minor ------------------------------------------------------------------------------------------

def test_info_refuses_arch_for_a_quantized_run_folder(tmp_path, capsys):
    (tmp_path / "quant.json").write_text("{}")
    assert main(["info", str(tmp_path), "--arch", "r50"]) == 2
    assert "drop --arch" in _one_line(capsys.readouterr().err)


def test_info_refuses_an_empty_path(capsys):
    assert main(["info", ""]) == 2
    assert "empty model name or path" in _one_line(capsys.readouterr().err)


def test_mobilefacenet_size_given_twice():
    with pytest.raises(ConfigError, match="give one of them"):
        create_model("mobilefacenet", embedding_size=8, num_features=16)
    assert create_model("mobilefacenet", embedding_size=8, num_features=8).embedding_size == 8
    assert create_model("mobilefacenet", num_features=16).embedding_size == 16
    assert create_model("mobilefacenet").embedding_size == 512


def test_guess_arch_on_a_scalar_names_the_key(tiny_sd, tmp_path):
    sd = dict(tiny_sd)
    sd["output_layer.linear.weight"] = torch.tensor(1.0)
    with pytest.raises(CheckpointError, match="'output_layer.linear.weight' is a scalar"):
        guess_arch(sd)
    torch.save(sd, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"s\.pt: 'output_layer\.linear\.weight' is a scalar"):
        load_model(tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"output_layer\.linear\.weight: checkpoint \(\) vs model"):
        load_model(tmp_path / "s.pt", arch="mobilefacenet")
