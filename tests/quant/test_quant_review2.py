"""Second quantization review: half-precision fake quantization, empty batches, entropy on negative-only data.

Each test failed before its fix; the references are independent of the code under test (the float32 formula of
``qfair.quant.math``, hand values, the mirror image of the data)."""
import pytest
import torch

from qfair.quant.fake_quant import fake_quant
from qfair.quant.math import fake_quantize_ref
from qfair.quant.observers import make_observer
from qfair.quant.quantizer import ActQuantizer, WeightQuantizer

HALF = [torch.float16, torch.bfloat16]


def _data(dtype):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, 20, 20, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("per_channel", [False, True])
def test_half_input_is_quantized_on_the_float32_grid(dtype, per_channel):
    # AMP (CUDA autocast, float16) hands the activation quantizers half tensors; the grid must be the float32 one
    # the model is evaluated and exported with. Before: the scale was rounded to float16 and x / s computed in
    # float16, so about a quarter of the values landed one step away.
    x = _data(dtype)
    if per_channel:
        s, z, axis = torch.tensor([0.0234, 0.0117, 0.0411]), torch.tensor([128.0, 100.0, 3.0]), 1
    else:
        s, z, axis = torch.tensor(0.0234), torch.tensor(128.0), -1
    want = fake_quantize_ref(x.float(), s, z, 0, 255, axis if axis >= 0 else None).to(dtype)
    got = fake_quant(x, s, z, 0, 255, axis)
    assert got.dtype == dtype
    assert torch.equal(got, want)


def test_half_input_with_a_tiny_scale_gives_no_nan():
    # a scale below float16's smallest subnormal became 0: 0 / 0 = NaN for every exact zero
    x = torch.tensor([0.0, 1e-7, -1e-7], dtype=torch.float16)
    y = fake_quant(x, torch.tensor(1e-8), torch.tensor(128.0), 0, 255, -1)
    assert torch.isfinite(y).all() and float(y[0]) == 0.0


@pytest.mark.parametrize("dtype", HALF)
def test_half_input_gradients_are_the_float32_ones(dtype):
    x = _data(dtype)
    s, z = torch.tensor(0.0234), torch.tensor(128.0)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = {}
    for name, xx in (("half", x.clone()), ("float", x.float())):
        xx.requires_grad_(True)
        ss, zz = s.clone().requires_grad_(True), z.clone().requires_grad_(True)
        fake_quant(xx, ss, zz, 0, 255, -1).backward(g.to(xx.dtype))
        grads[name] = (xx.grad, ss.grad, zz.grad)
    assert grads["half"][0].dtype == dtype
    assert torch.equal(grads["half"][0], grads["float"][0].to(dtype))  # the clip mask of the float32 codes
    torch.testing.assert_close(grads["half"][1], grads["float"][1])
    torch.testing.assert_close(grads["half"][2], grads["float"][2])
    # STE only (no LSQ): the fast mask path
    xx = x.clone().requires_grad_(True)
    fake_quant(xx, s, z, 0, 255, -1).backward(g)
    assert torch.equal(xx.grad, grads["float"][0].to(dtype))


# ---------------------------------------------------------------------------- empty batches

@pytest.mark.parametrize("name", ["minmax", "moving_average_minmax", "percentile", "mse", "entropy"])
def test_observers_skip_an_empty_batch(name):
    # an empty batch carries no range: it must change nothing (before: aminmax raised on the empty tensor)
    x = torch.tensor([-1.0, 0.5, 2.0, 3.0])
    a = make_observer(name, 0, 255, False)
    a.observe(x)
    b = make_observer(name, 0, 255, False)
    b.observe(torch.empty(0, 4))
    b.observe(x)
    b.observe(torch.empty(0))
    assert [float(t) for t in a.compute_range()] == [float(t) for t in b.compute_range()]


def test_quantizer_calibration_skips_an_empty_batch_and_names_the_layer_when_all_are_empty():
    q = ActQuantizer(8, layer="body.3", role="output")
    q.calibrate()
    assert q(torch.empty(0, 3, 2, 2)).shape == (0, 3, 2, 2)
    q(torch.tensor([[-1.0, 3.0]]))
    q(torch.empty(0, 2))
    q.freeze()
    assert float(q.scale) == pytest.approx(4.0 / 255)
    empty = ActQuantizer(8, layer="body.3", role="output")
    empty.calibrate()
    empty(torch.empty(0, 2))
    with pytest.raises(Exception, match="body.3.*seen no data"):
        empty.freeze()


def test_per_channel_and_dynamic_quantizers_take_an_empty_tensor():
    w = WeightQuantizer(6, axis=0, channels=3, dynamic=True, layer="fc")
    assert w(torch.empty(3, 0)).shape == (3, 0)
    pc = ActQuantizer(8, axis=0, channels=3, layer="x")
    pc.calibrate()
    pc(torch.empty(3, 0))
    pc(torch.arange(6.0).reshape(3, 2))
    pc.freeze()
    assert pc.scale.tolist() == pytest.approx([1 / 255, 3 / 255, 5 / 255])


# ---------------------------------------------------------------------------- entropy, negative-only data

@pytest.mark.parametrize("bits", [4, 6, 8])
def test_entropy_range_of_negative_only_data_mirrors_the_positive_one(bits):
    # on an unsigned (asymmetric) grid, data on one side of zero uses every level whichever side it is on, so the
    # chosen range of -x must be the mirror of that of x (up to one histogram bin). Before: negative-only data
    # was calibrated for half the levels (8 bits, exponential data: -11.7 vs 9.0).
    x = torch.empty(50000).exponential_(generator=torch.Generator().manual_seed(bits))
    pos = make_observer("entropy", 0, 2**bits - 1, False)
    pos.observe(x)
    neg = make_observer("entropy", 0, 2**bits - 1, False)
    neg.observe(-x)
    (_, hi), (lo, _) = pos.compute_range(), neg.compute_range()
    bin_width = 2 * pos.R / pos.bins
    assert float(lo) == pytest.approx(-float(hi), abs=bin_width)


# ---------------------------------------------------------------------------- per-channel shape

@pytest.mark.parametrize("mode", ["calibrate", "quantize", "dynamic"])
def test_per_channel_quantizer_names_the_layer_on_a_channel_count_mismatch(mode):
    # before: a reshape / broadcast RuntimeError ("shape '[3]' is invalid for input of size 4") naming nothing
    q = ActQuantizer(8, axis=0, channels=3, layer="features.fc", role="weight", dynamic=mode == "dynamic")
    if mode == "calibrate":
        q.calibrate()
    with pytest.raises(Exception, match=r"features\.fc.*3 channels.*\(4, 5\)"):
        q(torch.randn(4, 5))
    q1 = ActQuantizer(8, axis=1, channels=3, layer="features.fc", role="weight", dynamic=True)
    with pytest.raises(Exception, match=r"features\.fc.*axis 1"):
        q1(torch.randn(3))  # no axis 1 at all
    assert q(torch.randn(3, 2)).shape == (3, 2)


# ---------------------------------------------------------------------------- devices

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["percentile", "mse"])
def test_per_channel_histogram_observer_on_a_cuda_weight(name):
    # the per-channel range came back on the CPU and met the CUDA min / max in torch.maximum: prepare with
    # weight_observer mse / percentile failed on a CUDA model
    w = torch.randn(8, 27)
    q = WeightQuantizer(6, axis=0, channels=8, observer=name, dynamic=False, layer="conv1")
    q.init_from(w)
    qc = WeightQuantizer(6, axis=0, channels=8, observer=name, dynamic=False, layer="conv1").cuda()
    qc.init_from(w.cuda())
    assert qc.scale.is_cuda
    torch.testing.assert_close(qc.scale.cpu(), q.scale)
    torch.testing.assert_close(qc.zero_point.cpu(), q.zero_point)



# ---------------------------------------------------------------------------- non-finite weights

@pytest.mark.parametrize("observer", ["mse", "percentile", "moving_average_minmax"])
def test_static_weight_range_refuses_a_nan_weight_by_layer(observer):
    # before: that channel got scale 1 and zero point NaN (every output NaN; save_quantized then failed on int(nan))
    from qfair.utils.errors import NonFiniteError

    w = torch.randn(4, 9)
    w[2, 3] = float("nan")
    q = WeightQuantizer(6, axis=0, channels=4, observer=observer, dynamic=False, layer="layer2.0.conv1")
    with pytest.raises(NonFiniteError, match=r"layer2\.0\.conv1.*1 NaN"):
        q.init_from(w)
