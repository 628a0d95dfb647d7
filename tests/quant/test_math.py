"""Quantization math against hand-computed values and ONNX Runtime's QuantizeLinear."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfair.quant.math import (check_bits, compute_qparams, dequantize, fake_quantize_ref, qrange, quantize,
                              reduce_minmax)
from qfair.utils.errors import QuantError


@pytest.mark.parametrize("bits", range(2, 9))
def test_qrange(bits):
    assert qrange(bits, symmetric=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert qrange(bits, symmetric=True, narrow=True) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    assert qrange(bits, symmetric=False) == (0, 2**bits - 1)


@pytest.mark.parametrize("bad", [1, 9, 0, -8, 6.0, True, "8"])
def test_bad_bits(bad):
    with pytest.raises(QuantError, match="2..8"):
        check_bits(bad)


def test_qparams_hand_computed():
    s, z = compute_qparams(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
    assert float(s) == pytest.approx(4 / 255)
    assert float(z) == 64  # 0 - round(-1 / (4/255)) = round(63.75)
    s, z = compute_qparams(torch.tensor(-2.0), torch.tensor(1.0), -128, 127, symmetric=True)
    assert float(s) == pytest.approx(2 / 127) and float(z) == 0
    # the range always contains 0
    s, z = compute_qparams(torch.tensor(1.0), torch.tensor(2.0), 0, 63, symmetric=False)
    assert float(s) == pytest.approx(2 / 63) and float(z) == 0
    s, z = compute_qparams(torch.tensor(-3.0), torch.tensor(-1.0), 0, 255, symmetric=False)
    assert float(z) == 255


def test_round_half_to_even_and_saturation():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1000.0, -1000.0])
    q = quantize(x, torch.tensor(1.0), torch.tensor(0.0), -128, 127)
    assert q.tolist() == [0, 2, 2, 0, -2, -2, 127, -128]
    q = quantize(x, torch.tensor(1.0), torch.tensor(10.0), 0, 63)
    assert q.tolist() == [10, 12, 12, 10, 8, 8, 63, 0]


def test_zero_range_channels_exact():
    w = torch.randn(4, 3, 3, 3)
    w[1] = 0.37
    w[2] = 0.0
    w[3] = -1.25
    for sym, (qmin, qmax) in ((False, (0, 63)), (True, (-32, 31))):
        lo, hi = reduce_minmax(w, 0)
        s, z = compute_qparams(lo, hi, qmin, qmax, sym)
        assert torch.isfinite(s).all() and (s > 0).all()
        y = fake_quantize_ref(w, s, z, qmin, qmax, axis=0)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y[1:], w[1:], atol=1e-6, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.booleans(), st.floats(-10, -1e-3), st.floats(1e-3, 10))
def test_error_bounded_by_half_step(bits, sym, lo, hi):
    qmin, qmax = qrange(bits, sym)
    s, z = compute_qparams(torch.tensor(lo), torch.tensor(hi), qmin, qmax, sym)
    x = torch.linspace(lo, hi, 101)
    if sym:  # symmetric grid reaches -amax only up to qmin * s
        x = x.clamp(qmin * s, qmax * s)
    err = (fake_quantize_ref(x, s, z, qmin, qmax) - x).abs().max()
    assert float(err) <= float(s) / 2 + 1e-6


def _ort_quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    zp_t = numpy_helper.from_array(zp, "zp")
    out_type = TensorProto.UINT8 if zp.dtype == np.uint8 else TensorProto.INT8
    attrs = {"axis": axis} if axis is not None else {}
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], **attrs)
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", out_type, list(x.shape))],
                              initializer=[numpy_helper.from_array(scale, "s"), zp_t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("sym,axis", [(False, None), (True, None), (True, 0), (False, 1)])
def test_matches_onnxruntime_quantizelinear(sym, axis):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 4, generator=g) * 3
    qmin, qmax = (-128, 127) if sym else (0, 255)
    lo, hi = reduce_minmax(x * 0.7, axis)  # clipped range: saturation happens
    s, z = compute_qparams(lo, hi, qmin, qmax, sym)
    # exact halves too
    x[0, 0, :] = torch.tensor([0.5, 1.5, 2.5, -2.5]) * (s.reshape(-1)[0])
    ours = quantize(x, s, z, qmin, qmax, axis).numpy()
    zdt = np.int8 if sym else np.uint8
    ref = _ort_quantize(x.numpy(), s.numpy().astype(np.float32), z.numpy().astype(zdt), axis)
    assert np.abs(ours.astype(np.int64) - ref.astype(np.int64)).max() <= 1  # x/s vs x*(1/s) (README references [8])
    assert (ours == ref).mean() > 0.99
    deq = dequantize(torch.from_numpy(ref.astype(np.int32)), s, z, axis)
    assert deq.shape == x.shape
