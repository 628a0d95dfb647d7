"""Every registered backbone builds, runs 112x112 and matches the reference keys and function."""
from __future__ import annotations

import pytest
import torch

import qfair
from qfair.models import MODELS, create_model, guess_arch, load_model
from qfair.models.iresnet import DEPTHS

from .reference_impl import iresnet_forward, mbf_forward, quantface_mbf_forward


class RecordingDict(dict):
    """A dict that records which keys were read."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_and_embeds(name):
    model = create_model(name).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, model.embedding_size)
    assert torch.isfinite(y).all()
    assert model.qfair_arch["name"] == name


@pytest.mark.parametrize("name", MODELS.names())
def test_state_dict_round_trip(name, tmp_path):
    model = create_model(name).eval()
    _randomize_bn(model)
    path = tmp_path / "ckpt.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=name)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    guessed = guess_arch(model.state_dict())
    assert guessed is not None and guessed[0] == name


@pytest.mark.parametrize("depth", [18, 50])
def test_iresnet_matches_functional_reference(depth):
    model = create_model(f"iresnet{depth}").eval()
    _randomize_bn(model, depth)
    sd = RecordingDict(model.state_dict())
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        ref = iresnet_forward(sd, x, DEPTHS[depth])
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    unread = {k for k in sd if k not in sd.read and not k.endswith("num_batches_tracked")}
    assert not unread, f"keys the reference does not have: {sorted(unread)[:5]}"


@pytest.mark.parametrize("depth", [34, 100, 200])
def test_iresnet_key_layout(depth):
    keys = set(create_model(f"iresnet{depth}").state_dict())
    layers = DEPTHS[depth]
    for s, n in enumerate(layers, start=1):
        assert f"layer{s}.{n - 1}.conv2.weight" in keys and f"layer{s}.{n}.conv2.weight" not in keys
        assert f"layer{s}.0.downsample.0.weight" in keys and f"layer{s}.0.downsample.1.running_var" in keys
    for k in ("conv1.weight", "bn1.weight", "prelu.weight", "bn2.weight", "fc.weight", "features.running_mean"):
        assert k in keys


def test_mbf_matches_functional_reference():
    model = create_model("mbf").eval()
    _randomize_bn(model, 1)
    sd = RecordingDict(model.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), mbf_forward(sd, x), rtol=1e-4, atol=1e-4)
    unread = {k for k in sd if k not in sd.read and not k.endswith("num_batches_tracked")}
    assert not unread, sorted(unread)[:5]


def test_quantface_mobilefacenet_matches_functional_reference():
    model = create_model("mobilefacenet", embedding_size=128).eval()
    _randomize_bn(model, 2)
    sd = RecordingDict(model.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, quantface_mbf_forward(sd, x), rtol=1e-4, atol=1e-4)
    assert out.shape == (2, 128)
    unread = {k for k in sd if k not in sd.read and not k.endswith("num_batches_tracked")}
    assert not unread, sorted(unread)[:5]
    assert "conv_3.model.3.conv_dw.conv.weight" in sd and "output_layer.conv_6_dw.bn.running_var" in sd


def test_iresnet50_parameter_count_matches_published():
    n = sum(p.numel() for p in create_model("r50").parameters())
    assert abs(n / 1e6 - 43.6) < 0.05


def test_small_variants_for_tests_and_demo():
    m = create_model("iresnet18", width=16, num_features=128).eval()
    assert m(torch.randn(1, 3, 112, 112)).shape == (1, 128)
    m = create_model("mbf", scale=1, num_features=128).eval()
    assert m(torch.randn(1, 3, 112, 112)).shape == (1, 128)


def test_public_api_is_lazy_and_exposed():
    assert qfair.create_model is create_model
    assert callable(qfair.load_model)
    with pytest.raises(AttributeError):
        qfair.does_not_exist  # noqa: B018
