"""Checkpoints as real projects save them, and the errors for the ones qfair must refuse (model audit)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from qfair.models import create_model, guess_arch, load_model
from qfair.models.summary import summarize
from qfair.utils.errors import CheckpointError, ConfigError

TINY_R18 = dict(width=4, num_features=32)


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return create_model("iresnet18", **TINY_R18).eval()


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_arcface_torch_training_checkpoint(tmp_path, r18):
    """arcface_torch's checkpoint_gpu_N.pt keeps the backbone under 'state_dict_backbone'."""
    torch.save({"epoch": 3, "global_step": 10, "state_dict_backbone": r18.state_dict(),
                "state_dict_softmax_fc": {"weight": torch.randn(50, 32)}, "state_optimizer": {},
                "state_lr_scheduler": {}}, tmp_path / "checkpoint_gpu_0.pt")
    m = load_model(tmp_path / "checkpoint_gpu_0.pt")
    assert m.qfair_arch == {"name": "iresnet18", "kwargs": TINY_R18}
    _same(m, r18)


def test_nested_candidate_that_is_not_weights_is_skipped(tmp_path, r18):
    torch.save({"model": {"name": "r18", "lr": 0.1}, "weights": r18.state_dict()}, tmp_path / "c.pt")
    _same(load_model(tmp_path / "c.pt"), r18)


@pytest.mark.parametrize("layout", ["backbone+head", "module.backbone+head", "plain+partial_fc_weight"])
def test_training_head_saved_beside_backbone_is_left_out_with_a_warning(tmp_path, r18, layout):
    sd = r18.state_dict()
    obj = {"backbone+head": {**{f"backbone.{k}": v for k, v in sd.items()}, "head.weight": torch.randn(9, 32)},
           "module.backbone+head": {**{f"module.backbone.{k}": v for k, v in sd.items()},
                                    "module.head.kernel": torch.randn(32, 9)},
           "plain+partial_fc_weight": {**sd, "weight": torch.randn(9, 32)}}[layout]
    torch.save(obj, tmp_path / "c.pt")
    for arch in (None, "r18"):
        with pytest.warns(UserWarning, match="training head"):
            m = load_model(tmp_path / "c.pt", arch=arch)
        _same(m, r18)


def test_unknown_extra_keys_are_still_an_error(tmp_path, r18):
    torch.save({**r18.state_dict(), "extra.weight": torch.zeros(2)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="unexpected keys: extra.weight"):
        load_model(tmp_path / "c.pt")


def test_whole_pickled_module_is_refused_with_the_conversion(tmp_path, r18):
    torch.save(r18, tmp_path / "whole.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "whole.pth")
    msg = str(exc.value)
    assert "whole pickled model" in msg and "IResNet" in msg and ".state_dict()" in msg
    assert "whole.state_dict.pth" in msg


def test_malicious_pickle_gets_no_advice_to_load_it_unsafely(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    p = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, p)
    with pytest.raises(CheckpointError) as exc:
        load_model(p)
    assert "may be malicious" in str(exc.value) and "weights_only=False;" in str(exc.value)
    assert "torch.load(" not in str(exc.value)


def test_torchscript_is_refused_without_loading_it(tmp_path, r18):
    torch.jit.script(r18).save(str(tmp_path / "ts.pt"))
    with pytest.raises(CheckpointError, match="TorchScript archive.*torch.jit.load"):
        load_model(tmp_path / "ts.pt")


def _save_safetensors(sd: dict[str, torch.Tensor], path) -> None:
    """A safetensors file written by hand (the format: u64 header length, JSON header, raw bytes)."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.bfloat16: "BF16"}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in sd.items():
        b = v.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()  # num_batches_tracked is 0-d
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_fp32_and_fp16(tmp_path, r18):
    sd = r18.state_dict()
    _save_safetensors(sd, tmp_path / "model.safetensors")
    _same(load_model(tmp_path / "model.safetensors"), r18)
    _same(load_model(tmp_path), r18)  # a folder holding model.safetensors
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    _save_safetensors(half, tmp_path / "h.safetensors")
    m = load_model(tmp_path / "h.safetensors")
    assert torch.equal(m.state_dict()["fc.weight"], half["fc.weight"].float())
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*truncated"):
        load_model(tmp_path / "cut.safetensors")


def test_fp16_torch_checkpoint_loads_as_float32(tmp_path, r18):
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in r18.state_dict().items()}, tmp_path / "h.pt")
    m = load_model(tmp_path / "h.pt")
    assert m.fc.weight.dtype == torch.float32
    assert torch.allclose(m.fc.weight, r18.fc.weight, atol=1e-3, rtol=1e-3)


def test_missing_batchnorm_statistics_get_their_own_hint(tmp_path, r18):
    torch.save(dict(r18.named_parameters()), tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="no BatchNorm running statistics.*state_dict"):
        load_model(tmp_path / "p.pt")


def test_non_finite_weights_are_refused_by_name(tmp_path, r18):
    sd = {k: v.clone() for k, v in r18.state_dict().items()}
    sd["layer2.0.bn2.running_var"][1] = float("inf")
    sd["fc.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"NaN or Inf.*layer2.0.bn2.running_var \(1 of 8\).*fc.weight"):
        load_model(tmp_path / "nan.pt")


def test_folder_without_known_name_lists_its_checkpoints(tmp_path, r18):
    torch.save(r18.state_dict(), tmp_path / "295672backbone.pth")
    with pytest.raises(CheckpointError, match="it holds 295672backbone.pth: pass one of them"):
        load_model(tmp_path)
    (tmp_path / "295672backbone.pth").unlink()
    with pytest.raises(CheckpointError, match="no .pt/.pth/.safetensors file"):
        load_model(tmp_path)


def test_zip_of_something_else_is_named(tmp_path):
    with zipfile.ZipFile(tmp_path / "model.pth", "w") as z:
        z.writestr("photos/a.jpg", b"\xff\xd8")
    with pytest.raises(CheckpointError, match="zip archive but not a PyTorch checkpoint.*photos/a.jpg"):
        load_model(tmp_path / "model.pth")


@pytest.mark.parametrize("kw", [dict(scale=4), dict(blocks=(2, 8, 12, 4)), dict(scale=1, num_features=64),
                                dict(blocks=(2, 8, 12, 4), scale=4, num_features=128)])
def test_mbf_variants_are_guessed_exactly(tmp_path, kw):
    name = "mbf_large" if kw.get("scale") == 4 and "blocks" in kw else "mbf"
    ref = create_model("mbf", **kw)
    torch.save(ref.state_dict(), tmp_path / "m.pt")
    m = load_model(tmp_path / "m.pt")
    assert m.qfair_arch["name"] == name
    _same(m, ref)
    _same(load_model(tmp_path / "m.pt", arch=name), ref)


def test_torchvision_resnet_is_not_called_iresnet():
    tv = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64), "fc.weight": torch.zeros(1000, 512)}
    tv.update({f"layer{s}.{i}.conv1.weight": torch.zeros(1) for s in range(1, 5) for i in range(2)})
    assert guess_arch(tv) is None


def test_unregistered_iresnet_depth_is_named(tmp_path):
    sd = create_model("iresnet18", **TINY_R18).state_dict()
    sd = {k.replace("layer3.1.", "layer3.2."): v for k, v in sd.items()}  # (2, 2, 3, 2): not registered
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"iresnet with blocks per stage \(2, 2, 3, 2\)"):
        load_model(tmp_path / "c.pt")


def test_arcface_torch_model_arguments():
    m = create_model("iresnet18", fp16=True, dropout=0.2, **TINY_R18)  # get_model(name, fp16=..., dropout=...)
    assert m.dropout.p == 0.2 and next(m.parameters()).dtype == torch.float32
    create_model("mbf", fp16=True, num_features=64)
    for name, kw in [("iresnet18", dict(width=0)), ("iresnet18", dict(width=-1)),
                     ("iresnet18", dict(num_features=0)), ("mbf", dict(blocks=(1, 4, 6))), ("mbf", dict(scale=0)),
                     ("mobilefacenet", dict(embedding_size=0))]:
        with pytest.raises(ConfigError, match="must|blocks"):
            create_model(name, **kw)


def test_summary_counts_match_hand_and_independent_counts():
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                         nn.Linear(4 * 56 * 56, 8))
    s = summarize(tiny)
    # params: conv 4*3*9 + 4, BN 2*4, linear 12544*8 + 8; MACs: conv 4*56*56*27, linear 12544*8
    assert s.params == 112 + 8 + 100360 and s.macs == 338688 + 100352
    from torch.utils.flop_counter import FlopCounterMode

    m = create_model("iresnet18").eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(torch.zeros(1, 3, 112, 112))
    s = summarize(m)
    assert s.macs == fc.get_total_flops() // 2 == 2_609_954_816
    assert s.params == 24_025_600  # arcface_torch r18: 24.0 M


def _qfair(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "qfair", *args], capture_output=True, text=True, env=env)


def test_info_cli_names_options_and_refuses_typos(tmp_path, r18):
    torch.save(r18.state_dict(), tmp_path / "backbone.pth")
    out = _qfair("info", str(tmp_path / "backbone.pth"))
    assert out.returncode == 0, out.stderr
    assert "iresnet18 (num_features=32, width=4)" in out.stdout and f"({summarize(r18).params:,})" in out.stdout
    bad = _qfair("info", "r5O")
    assert bad.returncode != 0 and "Did you mean 'r50'" in bad.stderr + bad.stdout
    models = _qfair("models")
    assert models.returncode == 0 and models.stdout.index("iresnet18") < models.stdout.index("iresnet100")
    assert "fp16" in models.stdout


def test_shipped_demo_checkpoints_load_bit_identically():
    from pathlib import Path

    import qfair

    for name in ("demo_mobilefacenet.pt", "demo_iresnet18w16.pt"):
        path = Path(qfair.__file__).parent / "assets" / name
        m = load_model(path)
        raw = torch.load(path, weights_only=True)
        raw = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
        sd = m.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in raw.items() if k in sd)

