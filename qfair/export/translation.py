"""ONNX translation of ``qfair::fake_quant`` for ``torch.onnx.export(..., dynamo=True)`` (README references [8]).

``fake_quant(x, s, z, qmin, qmax, axis)`` becomes ``QuantizeLinear -> DequantizeLinear`` in int8
(signed ranges) or uint8 (unsigned), with the same scale and zero point, ``axis`` when per channel.
ONNX has no 6-bit type and QuantizeLinear saturates to the full 8-bit range, so a narrower range is
made exact by clipping to ``[(qmin - z) * s, (qmax - z) * s]`` first: values inside land on the same
codes, values outside saturate exactly where the narrow range would.

A float16 / bfloat16 ``x`` is quantized in float32 and cast back, as the torch op does (``fake_quant._UPCAST``):
QuantizeLinear takes float32 ``x`` with a float32 scale (opset < 19 has no float16 ``x``; 19+ wants the
scale in ``x``'s type, and a float16 scale is a different grid).
"""
from __future__ import annotations

from typing import Any

FULL_RANGES = ((-128, 127), (0, 255))


def _translate(x: Any, scale: Any, zero_point: Any, qmin: int, qmax: int, axis: int) -> Any:
    from onnx import TensorProto
    from onnxscript import opset18 as op

    code = _dtype(x)
    rank = len(x.shape) if axis >= 0 else 0
    scale, zero_point = _as_float(scale), _as_float(zero_point)  # a float16 scale: the op casts it up too
    if code == TensorProto.FLOAT:
        return _qdq(x, scale, zero_point, qmin, qmax, axis, rank)
    # float16 / bfloat16 (or float64) activations: the op computes in float32 and casts back (its _UPCAST)
    return op.Cast(_qdq(op.Cast(x, to=TensorProto.FLOAT), scale, zero_point, qmin, qmax, axis, rank), to=code)


def _dtype(v: Any) -> int:
    """The onnx.TensorProto element type of a traced value (float32 when the tracer does not know it)."""
    from onnx import TensorProto

    dtype = getattr(v, "dtype", None)
    return TensorProto.FLOAT if dtype is None else int(dtype)


def _as_float(v: Any) -> Any:
    """``v`` in float32 (a Cast only where it is another type)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    return v if _dtype(v) == TensorProto.FLOAT else op.Cast(v, to=TensorProto.FLOAT)


def _qdq(x: Any, scale: Any, zero_point: Any, qmin: int, qmax: int, axis: int, rank: int) -> Any:
    """Q -> DQ of a float32 ``x`` of rank ``rank`` with a float32 ``scale`` (and the narrow range's clip first)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    zp = op.Cast(zero_point, to=TensorProto.INT8 if qmin < 0 else TensorProto.UINT8)
    if (qmin, qmax) not in FULL_RANGES:
        lo = op.Mul(op.Sub(op.Constant(value_float=float(qmin)), zero_point), scale)
        hi = op.Mul(op.Sub(op.Constant(value_float=float(qmax)), zero_point), scale)
        if axis >= 0:  # (C,) bounds broadcast along the channel axis: reshape to (C, 1, ..., 1)
            trailing = rank - axis - 1
            shape = op.Constant(value_ints=[-1] + [1] * trailing)
            x = op.Min(op.Max(x, op.Reshape(lo, shape)), op.Reshape(hi, shape))
        else:  # a Clip directly: the exporter's Min/Max -> Clip rewrite can drop a bound when two
            x = op.Clip(x, lo, hi)  # quantizers read the same tensor (seen with torch 2.13)
    if axis >= 0:
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp, axis=axis), scale, zp, axis=axis)
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp), scale, zp)


def translation_table() -> dict[Any, Any]:
    """``custom_translation_table`` mapping the qfair fake-quant op to Q/DQ."""
    import torch

    from ..quant import fake_quant  # noqa: F401  (registers torch.ops.qfair.fake_quant)

    return {torch.ops.qfair.fake_quant.default: _translate}
