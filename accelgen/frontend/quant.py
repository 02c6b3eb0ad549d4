"""Quantization read from the model: ONNX QuantizeLinear/DequantizeLinear and QONNX Quant.

QDQ and QONNX graphs express quantization as nodes around float ops. The IR keeps the float ops
and records each quantization as an annotation: on the activation tensor (`Tensor.quant`) or on
the weight (`Conv2d.weight_quant`, ...). Weights are folded to their dequantized real values,
exactly the numbers a QDQ runtime multiplies with.
"""

from __future__ import annotations

import numpy as np

from accelgen.errors import ShapeError, UnsupportedError
from accelgen.frontend.context import Context, Node
from accelgen.frontend.registry import QONNX_DOMAINS, register
from accelgen.frontend.values import Constant, PendingQuant, Value, View, is_integer_dtype
from accelgen.ir import QuantParams

# numpy dtype name of the integer codes -> (bits, signed)
_CODE_TYPES = {
    "int8": (8, True), "uint8": (8, False), "int16": (16, True), "uint16": (16, False),
    "int32": (32, True), "uint32": (32, False), "int4": (4, True), "uint4": (4, False),
    "int2": (2, True), "uint2": (2, False),
}

# ONNX TensorProto element types for QuantizeLinear's output_dtype attribute
_ONNX_CODE_TYPES = {3: "int8", 2: "uint8", 5: "int16", 4: "uint16", 22: "int4", 21: "uint4",
                    26: "int2", 25: "uint2"}


def _code_type(node: Node, dtype: np.dtype) -> tuple[int, bool]:
    name = np.dtype(dtype).name
    if name not in _CODE_TYPES:
        raise UnsupportedError(
            f"{node.label}: quantized type {name!r} is not supported (integer types only, "
            f"not float8 or float4)"
        )
    return _CODE_TYPES[name]


def _linear_params(
    ctx: Context, node: Node, code_dtype: np.dtype, data_rank: int
) -> tuple[QuantParams, int | None, np.ndarray, np.ndarray]:
    """QuantParams of a Q/DQ node plus (axis or None, scale array, zero-point array)."""
    if int(node.attr("block_size", 0)):
        raise UnsupportedError(f"{node.label}: blocked quantization is not supported")
    scale = np.asarray(ctx.const(node, 1, "scale"), np.float32)
    zp_c = ctx.optional_const(node, 2, "zero point")
    zp = np.zeros_like(scale) if zp_c is None else np.asarray(zp_c)
    bits, signed = _code_type(node, code_dtype)
    zp64 = zp.astype(np.float64)
    if np.any(zp64 != np.round(zp64)):
        raise ShapeError(f"{node.label}: zero point must be integral")
    axis = None
    if scale.size > 1:
        axis = int(node.attr("axis", 1))
        axis = axis + data_rank if axis < 0 else axis
        if scale.ndim != 1:
            raise ShapeError(f"{node.label}: per-axis scale must be 1-D, not {scale.shape!r}")
    params = QuantParams(
        scale=tuple(float(s) for s in scale.reshape(-1)),
        zero_point=tuple(float(z) for z in zp.astype(np.float64).reshape(-1)),
        bits=bits,
        signed=signed,
        per_channel=scale.size > 1,
        rounding="half_even",
        source="qdq",
    )
    return params, axis, scale, zp.astype(np.float64)


def _per_channel_params(
    ctx: Context, node: Node, x: View, params: QuantParams, axis: int | None,
    scale: np.ndarray, zp: np.ndarray,
) -> QuantParams:
    """Map per-axis parameters of an activation onto the IR channel axis."""
    if axis is None:
        return params
    rank = len(x.onnx_shape)
    shape = [1] * rank
    shape[axis] = scale.size
    s = ctx.channel_vector(node, x, scale.reshape(shape), "per-axis scale")
    z = ctx.channel_vector(node, x, np.broadcast_to(zp.reshape(-1), scale.size).reshape(shape),
                           "per-axis zero point")
    return QuantParams(
        scale=tuple(float(v) for v in s), zero_point=tuple(float(v) for v in z),
        bits=params.bits, signed=params.signed, narrow=params.narrow, per_channel=True,
        rounding=params.rounding, source=params.source,
    )


def _check_single_use(ctx: Context, node: Node) -> None:
    name = node.inputs[0]
    if ctx.use_count.get(name, 0) > 1:
        raise UnsupportedError(
            f"{node.label}: value {name!r} is used both before and after quantization; "
            f"accelgen records quantization on the tensor itself"
        )


@register("QuantizeLinear", params=(1, 2), fold_constants=False)
def quantize_linear(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    if node.has_input(2):
        code_dtype = ctx.const(node, 2, "zero point").dtype
    else:
        code_dtype = np.dtype(_ONNX_CODE_TYPES.get(int(node.attr("output_dtype", 2)), "uint8"))
    if isinstance(v, Constant):
        rank = v.value.ndim
        params, axis, _, _ = _linear_params(ctx, node, code_dtype, rank)
        codes = params.quantize(v.value, axis if axis is not None else -1)
        return [Constant(codes.astype(np.int64), quant=params, quant_axis=axis, codes=True)]
    x = ctx.view(node, 0)
    params, axis, scale, zp = _linear_params(ctx, node, code_dtype, len(x.onnx_shape))
    params = _per_channel_params(ctx, node, x, params, axis, scale, zp)
    _check_single_use(ctx, node)
    ctx.annotate(node, x.tensor, params)
    return [View(x.tensor, x.index, np.dtype(code_dtype), params)]


@register("DequantizeLinear", params=(1, 2), fold_constants=False)
def dequantize_linear(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    if isinstance(v, Constant):
        code_dtype = v.value.dtype if not v.codes else np.dtype(
            ctx.const(node, 2, "zero point").dtype if node.has_input(2) else "uint8"
        )
        params, axis, _, _ = _linear_params(ctx, node, code_dtype, v.value.ndim)
        real = params.dequantize(v.value.astype(np.float32), axis if axis is not None else -1)
        return [Constant(real, quant=params, quant_axis=axis)]
    if isinstance(v.codes, QuantParams):
        params, axis, scale, zp = _linear_params(ctx, node, v.dtype, len(v.onnx_shape))
        params = _per_channel_params(ctx, node, v, params, axis, scale, zp)
        if params != v.codes:
            raise UnsupportedError(
                f"{node.label}: dequantizes {node.inputs[0]!r} with {params.describe()} but it "
                f"was quantized with {v.codes.describe()} (requantization is not supported)"
            )
        return [View(v.tensor, v.index, np.dtype(np.float32))]
    if isinstance(v.codes, PendingQuant) or is_integer_dtype(v.dtype):
        # integer codes straight from a graph input: their parameters are set here
        params, axis, scale, zp = _linear_params(ctx, node, v.dtype, len(v.onnx_shape))
        params = _per_channel_params(ctx, node, v, params, axis, scale, zp)
        ctx.annotate(node, v.tensor, params)
        ctx.input_quant_of_tensor(node, v.tensor, params)
        return [View(v.tensor, v.index, np.dtype(np.float32))]
    raise UnsupportedError(f"{node.label}: dequantizes float data {node.inputs[0]!r}")


_QONNX_ROUNDING = {"ROUND": "half_even", "CEIL": "ceil", "FLOOR": "floor",
                   "ROUND_TO_ZERO": "toward_zero", "DOWN": "toward_zero"}


@register("Quant", domains=QONNX_DOMAINS, params=(1, 2, 3), fold_constants=False)
def qonnx_quant(ctx: Context, node: Node) -> list[Value]:
    """QONNX Quant: ``y = (clip(round(x / scale + zeropt), lo, hi) - zeropt) * scale``."""
    scale = np.asarray(ctx.const(node, 1, "scale"), np.float32)
    zp = np.asarray(ctx.const(node, 2, "zero point"), np.float64)
    bits_f = float(np.asarray(ctx.const(node, 3, "bit width")).reshape(-1)[0])
    if bits_f != round(bits_f) or not 2 <= bits_f <= 32:
        raise UnsupportedError(f"{node.label}: bit width {bits_f:g} (integer 2..32 supported)")
    mode = node.attr("rounding_mode", "ROUND").upper()
    if mode not in _QONNX_ROUNDING:
        raise UnsupportedError(
            f"{node.label}: rounding_mode {mode!r} (supported: {sorted(_QONNX_ROUNDING)})"
        )
    v = ctx.value(node, 0)
    data_rank = v.value.ndim if isinstance(v, Constant) else len(v.onnx_shape)
    if scale.ndim > data_rank:
        raise ShapeError(f"{node.label}: scale {scale.shape!r} has more axes than the data")
    big = [i for i, d in enumerate(scale.shape) if d > 1]
    if len(big) > 1:
        raise UnsupportedError(f"{node.label}: scale {scale.shape!r} varies along several axes")
    axis = None if not big else big[0] + data_rank - scale.ndim
    zp_flat = np.broadcast_to(zp, scale.shape).reshape(-1)
    params = QuantParams(
        scale=tuple(float(s) for s in scale.reshape(-1)),
        zero_point=tuple(float(z) for z in zp_flat),
        bits=int(bits_f),
        signed=bool(node.attr("signed", 1)),
        narrow=bool(node.attr("narrow", 0)),
        per_channel=scale.size > 1,
        rounding=_QONNX_ROUNDING[mode],  # type: ignore[arg-type]
        source="qonnx",
    )
    if isinstance(v, Constant):
        along = axis if axis is not None else -1
        real = params.fake_quantize(np.asarray(v.value, np.float32), along)
        return [Constant(real, quant=params, quant_axis=axis)]
    x = ctx.view(node, 0)
    if axis is not None:
        full_scale = scale.reshape((1,) * (data_rank - scale.ndim) + scale.shape)
        s = ctx.channel_vector(node, x, full_scale, "per-channel scale")
        z = ctx.channel_vector(node, x, np.broadcast_to(zp, scale.shape).reshape(full_scale.shape),
                               "per-channel zero point")
        params = QuantParams(
            scale=tuple(float(a) for a in s), zero_point=tuple(float(a) for a in z),
            bits=params.bits, signed=params.signed, narrow=params.narrow, per_channel=True,
            rounding=params.rounding, source="qonnx",
        )
    _check_single_use(ctx, node)
    ctx.annotate(node, x.tensor, params)
    return [View(x.tensor, x.index, np.dtype(np.float32))]

