"""Weighted ops: Conv, Gemm, MatMul, BatchNormalization; and the sliding-window attributes."""

from __future__ import annotations

import numpy as np

from accelgen.errors import ShapeError, UnsupportedError
from accelgen.frontend.context import Context, Node
from accelgen.frontend.registry import register
from accelgen.frontend.values import Constant, Value, View, float_dtype, nchw_index
from accelgen.ir import Conv2d, Dense, Padding, Pair, QuantParams, window_output_size


def window_attrs(
    node: Node, kernel: Pair, in_hw: Pair, *, allow_dilation: bool = True
) -> tuple[Pair, Padding, Pair]:
    """ONNX `strides`, `pads`/`auto_pad` and `dilations` as (stride, padding, dilation)."""
    strides = tuple(node.attr("strides", [1, 1]))
    dilations = tuple(node.attr("dilations", [1, 1])) if allow_dilation else (1, 1)
    if len(strides) != 2 or len(dilations) != 2:
        raise UnsupportedError(
            f"{node.label}: strides {strides!r} / dilations {dilations!r} are not 2-D"
        )
    if min(strides) < 1 or min(dilations) < 1:
        raise ShapeError(f"{node.label}: strides {strides!r} and dilations must be >= 1")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = tuple(node.attr("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise UnsupportedError(
                f"{node.label}: pads {pads!r} are not 2-D (top, left, bottom, right)"
            )
        if min(pads) < 0:
            raise UnsupportedError(f"{node.label}: negative pads {pads!r} are not supported")
        padding = (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3]))
    elif auto_pad == "VALID":
        padding = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        lo, hi = [], []
        for axis in range(2):
            out = -(-in_hw[axis] // strides[axis])
            span = dilations[axis] * (kernel[axis] - 1) + 1
            total = max(0, (out - 1) * strides[axis] + span - in_hw[axis])
            small, big = total // 2, total - total // 2
            lo.append(small if auto_pad == "SAME_UPPER" else big)
            hi.append(big if auto_pad == "SAME_UPPER" else small)
        padding = (lo[0], lo[1], hi[0], hi[1])
    else:
        raise ShapeError(f"{node.label}: auto_pad={auto_pad!r} is not a valid ONNX value")
    return (
        (int(strides[0]), int(strides[1])),
        padding,
        (int(dilations[0]), int(dilations[1])),
    )


def _weight_quant(
    node: Node, c: Constant, out_axis: int, what: str
) -> QuantParams | None:
    """A constant's quantization, if any, checked to be per-tensor or per output channel."""
    if c.quant is None:
        return None
    if c.quant.per_channel and c.quant_axis != out_axis:
        raise UnsupportedError(
            f"{node.label}: the {what} is quantized per channel along axis {c.quant_axis}; "
            f"accelgen supports per-tensor or per-output-channel quantization"
        )
    return c.quant


@register("Conv", params=(1, 2))
def conv(ctx: Context, node: Node) -> list[Value]:
    x = ctx.view(node, 0)
    wc = ctx.constant(node, 1, "weight")
    w = np.asarray(wc.value, dtype=np.float32)
    if w.ndim != 4:
        raise UnsupportedError(
            f"{node.label}: a {w.ndim - 2}-D convolution (weight {w.shape!r}); accelgen "
            f"supports 2-D convolutions"
        )
    tensor, shape = ctx.require_nchw(node, x)
    h, wd, c_in = shape
    groups = int(node.attr("group", 1))
    c_out, c_per_group, kh, kw = (int(d) for d in w.shape)
    if groups < 1 or c_per_group * groups != c_in:
        raise ShapeError(
            f"{node.label}: weight {w.shape!r} with group={groups} does not match "
            f"{c_in} input channels"
        )
    kshape = node.attr("kernel_shape", None)
    if kshape is not None and tuple(kshape) != (kh, kw):
        raise ShapeError(f"{node.label}: kernel_shape {list(kshape)!r} != weight {w.shape!r}")
    stride, padding, dilation = window_attrs(node, (kh, kw), (h, wd))
    bias = np.zeros(c_out, np.float32)
    bias_quant = None
    if node.has_input(2):
        bc = ctx.constant(node, 2, "bias")
        bias = np.asarray(bc.value, dtype=np.float32).reshape(-1)
        if bias.shape != (c_out,):
            raise ShapeError(f"{node.label}: bias shape {bc.value.shape!r} != ({c_out},)")
        bias_quant = _weight_quant(node, bc, 0, "bias")
    oh, ow = window_output_size((h, wd), (kh, kw), stride, padding, dilation)
    out = ctx.new_tensor(node.outputs[0], (max(oh, 1), max(ow, 1), c_out))
    layer = Conv2d(
        name=node.name,
        inputs=(tensor,),
        output=out,
        in_shapes=(shape,),
        out_shape=(oh, ow, c_out),
        weight=w.transpose(0, 2, 3, 1),
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        weight_quant=_weight_quant(node, wc, 0, "weight"),
        bias_quant=bias_quant,
    )
    ctx.add_layer(layer)
    return [View(out, nchw_index(ctx.shape(out)), float_dtype(x))]


def emit_dense(
    ctx: Context,
    node: Node,
    x: View,
    weight_km: np.ndarray,
    bias: np.ndarray,
    weight_quant: QuantParams | None,
    bias_quant: QuantParams | None,
) -> View:
    """A Dense layer for ``y = x @ weight_km + bias`` where `x` is a (N, K) view."""
    if x.index.ndim != 1:
        raise UnsupportedError(
            f"{node.label}: a matrix product on data of shape {x.onnx_shape!r}; accelgen "
            f"supports (N, K) x (K, M) dense layers (flatten first)"
        )
    k, m = weight_km.shape
    if x.index.size != k:
        raise ShapeError(
            f"{node.label}: data has {x.index.size} features but the weight {weight_km.shape!r} "
            f"expects {k}"
        )
    tensor = ctx.require_permutation(node, x)
    shape = ctx.shape(tensor)
    w_ir = np.empty((m, k), dtype=np.float32)
    w_ir[:, x.index] = weight_km.T
    out = ctx.new_tensor(node.outputs[0], (1, 1, m))
    ctx.add_layer(
        Dense(
            name=node.name,
            inputs=(tensor,),
            output=out,
            in_shapes=(shape,),
            out_shape=(1, 1, m),
            weight=w_ir,
            bias=np.asarray(bias, np.float32),
            weight_quant=weight_quant,
            bias_quant=bias_quant,
        )
    )
    return View(out, np.arange(m, dtype=np.int64), float_dtype(x))


@register("Gemm", params=(1, 2))
def gemm(ctx: Context, node: Node) -> list[Value]:
    if int(node.attr("transA", 0)):
        raise UnsupportedError(f"{node.label}: transA=1 (features along axis 0) is not supported")
    x = ctx.view(node, 0)
    bc = ctx.constant(node, 1, "weight")
    b = np.asarray(bc.value, dtype=np.float32)
    if b.ndim != 2:
        raise ShapeError(f"{node.label}: weight must be 2-D, not {b.shape!r}")
    trans_b = int(node.attr("transB", 0))
    w_km = b.T if trans_b else b
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    m = w_km.shape[1]
    bias = np.zeros(m, np.float32)
    bias_quant = None
    if node.has_input(2):
        cc = ctx.constant(node, 2, "bias")
        c = np.asarray(cc.value, dtype=np.float32)
        try:
            full = np.broadcast_to(c, (1, m))
        except ValueError:
            raise UnsupportedError(
                f"{node.label}: bias of shape {c.shape!r} is not one value per output "
                f"(batch-dependent biases are not supported)"
            ) from None
        bias = beta * full[0]
        bias_quant = _weight_quant(node, cc, c.ndim - 1, "bias") if beta == 1.0 else None
    wq = _weight_quant(node, bc, 0 if trans_b else 1, "weight") if alpha == 1.0 else None
    return [emit_dense(ctx, node, x, alpha * w_km, bias, wq, bias_quant)]


@register("MatMul", params=(1,))
def matmul(ctx: Context, node: Node) -> list[Value]:
    a = ctx.value(node, 0)
    if not isinstance(a, View):
        raise UnsupportedError(
            f"{node.label}: constant x data products are not supported (put the data first)"
        )
    x = ctx.view(node, 0)
    bc = ctx.constant(node, 1, "weight")
    b = np.asarray(bc.value, dtype=np.float32)
    if b.ndim != 2:
        raise UnsupportedError(f"{node.label}: weight of shape {b.shape!r} is not a matrix")
    wq = _weight_quant(node, bc, 1, "weight")
    return [emit_dense(ctx, node, x, b, np.zeros(b.shape[1], np.float32), wq, None)]


@register("BatchNormalization", params=(1, 2, 3, 4))
def batchnorm(ctx: Context, node: Node) -> list[Value]:
    if int(node.attr("training_mode", 0)) or any(node.outputs[1:]):
        raise UnsupportedError(f"{node.label}: training-mode batch normalization is not supported")
    if node.opset < 9 and not int(node.attr("spatial", 1)):
        raise UnsupportedError(f"{node.label}: spatial=0 batch normalization is not supported")
    x = ctx.view(node, 0)
    scale, b, mean, var = (
        np.asarray(ctx.const(node, i, what), np.float64).reshape(-1)
        for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))
    )
    eps = float(node.attr("epsilon", 1e-5))
    rank = len(x.onnx_shape)
    if rank < 2:
        raise ShapeError(f"{node.label}: input of rank {rank} has no channel axis")
    along = (1, -1) + (1,) * (rank - 2)
    s = scale / np.sqrt(var + eps)
    per_channel_scale = ctx.channel_vector(node, x, s.reshape(along), "scale")
    per_channel_bias = ctx.channel_vector(node, x, (b - mean * s).reshape(along), "bias")
    return [ctx.emit_affine(node, x, per_channel_scale, per_channel_bias)]
