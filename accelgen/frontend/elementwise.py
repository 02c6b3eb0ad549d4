"""Element-wise ops, activations, Softmax and Concat.

Arithmetic with a constant (bias adds, scales, BatchNorm-like affines written as Mul/Add) must be
per channel; it becomes a depthwise 1x1 convolution that the normalizer later folds into the
layer before it. Arithmetic between two run-time tensors is only the residual Add.
"""

from __future__ import annotations

import math

import numpy as np

from accelgen.errors import ShapeError, UnsupportedError
from accelgen.frontend.context import Context, Node
from accelgen.frontend.registry import register
from accelgen.frontend.values import Constant, Value, View, float_dtype, is_integer_dtype
from accelgen.ir import Add, Clip, Concat, Layer, Relu, Softmax


def _elementwise_layer(
    ctx: Context, node: Node, x: View, cls: type[Layer], **fields: object
) -> View:
    shape = ctx.shape(x.tensor)
    out = ctx.new_tensor(node.outputs[0], shape, aligned_from=x.tensor)
    ctx.add_layer(
        cls(name=node.name, inputs=(x.tensor,), output=out, in_shapes=(shape,), out_shape=shape,
            **fields)
    )
    return View(out, x.index, float_dtype(x))


def _float_view(ctx: Context, node: Node, i: int) -> View:
    v = ctx.view(node, i)
    if is_integer_dtype(v.dtype) or v.dtype == np.bool_:
        raise UnsupportedError(
            f"{node.label}: integer arithmetic on run-time data ({v.dtype}) is not supported; "
            f"accelgen computes on real values (quantize with QDQ or QONNX instead)"
        )
    return v


@register("Relu")
def relu(ctx: Context, node: Node) -> list[Value]:
    return [_elementwise_layer(ctx, node, _float_view(ctx, node, 0), Relu)]


@register("Clip", params=(1, 2))
def clip(ctx: Context, node: Node) -> list[Value]:
    x = _float_view(ctx, node, 0)
    if node.opset < 11:
        low = float(node.attr("min", -math.inf))
        high = float(node.attr("max", math.inf))
    else:
        lo = ctx.optional_const(node, 1, "min")
        hi = ctx.optional_const(node, 2, "max")
        low = -math.inf if lo is None else float(np.asarray(lo).reshape(()))
        high = math.inf if hi is None else float(np.asarray(hi).reshape(()))
    # the float32 extremes some exporters write mean "no bound"
    low = -math.inf if low <= -3.4e38 else low
    high = math.inf if high >= 3.4e38 else high
    if low > high:
        raise UnsupportedError(f"{node.label}: min {low:g} > max {high:g}")
    if low == 0.0 and high == math.inf:
        return [_elementwise_layer(ctx, node, x, Relu)]
    return [_elementwise_layer(ctx, node, x, Clip, low=low, high=high)]


@register(
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Gelu", "Mish", "Softplus", "Swish", supported=False,
)
def nonlinear(ctx: Context, node: Node) -> list[Value]:
    raise UnsupportedError(
        f"{node.label}: {node.op_type} is not supported; the accelerator's requantizer "
        f"implements ReLU, ReLU6 and Clip only (retrain with ReLU)"
    )


def _view_and_const(ctx: Context, node: Node) -> tuple[View, Constant, int]:
    """(run-time operand, constant operand, index of the run-time operand)."""
    a, b = ctx.value(node, 0), ctx.value(node, 1)
    if isinstance(a, View) and isinstance(b, Constant):
        return _float_view(ctx, node, 0), _legacy_broadcast(node, a, b), 0
    if isinstance(b, View) and isinstance(a, Constant):
        return _float_view(ctx, node, 1), a, 1
    raise AssertionError("two run-time operands")


def _legacy_broadcast(node: Node, x: View, c: Constant) -> Constant:
    """Opset < 7 arithmetic: B broadcasts onto A from attribute `axis` (else suffix-aligned)."""
    if node.opset >= 7 or not int(node.attr("broadcast", 0)):
        return c
    axis = node.attr("axis", None)
    if axis is None:
        return c
    rank = len(x.onnx_shape)
    axis = int(axis) + rank if int(axis) < 0 else int(axis)
    shape = (1,) * axis + c.value.shape + (1,) * (rank - axis - c.value.ndim)
    return Constant(c.value.reshape(shape), c.quant, c.quant_axis, c.codes)


def _both_views(ctx: Context, node: Node) -> bool:
    return all(isinstance(ctx.value(node, i), View) for i in (0, 1))


@register("Add")
def add(ctx: Context, node: Node) -> list[Value]:
    if _both_views(ctx, node):
        a, b = _float_view(ctx, node, 0), _float_view(ctx, node, 1)
        sa, sb = ctx.shape(a.tensor), ctx.shape(b.tensor)
        if a.index.shape != b.index.shape:
            raise UnsupportedError(
                f"{node.label}: adds data of shapes {a.onnx_shape!r} and {b.onnx_shape!r}; "
                f"accelgen adds equal-shaped feature maps only (no broadcasting)"
            )
        if sa != sb or not np.array_equal(a.index, b.index):
            raise UnsupportedError(
                f"{node.label}: its operands are laid out differently (one is transposed or "
                f"reshaped relative to the other); accelgen adds aligned feature maps only"
            )
        out = ctx.new_tensor(node.outputs[0], sa)
        if ctx.aligned.get(a.tensor) is not None and ctx.aligned.get(a.tensor) == ctx.aligned.get(
            b.tensor
        ):
            ctx.aligned[out] = ctx.aligned[a.tensor]
        ctx.add_layer(
            Add(name=node.name, inputs=(a.tensor, b.tensor), output=out, in_shapes=(sa, sb),
                out_shape=sa)
        )
        return [View(out, a.index, float_dtype(a))]
    x, c, _ = _view_and_const(ctx, node)
    bias = ctx.channel_vector(node, x, c.value, "added constant")
    usable = c.quant is not None and (not c.quant.per_channel or c.value.ndim == 1)
    quant = c.quant if usable else None
    return [ctx.emit_affine(node, x, np.ones_like(bias), bias, bias_quant=quant)]


@register("Sub", params=(1,))
def sub(ctx: Context, node: Node) -> list[Value]:
    if _both_views(ctx, node):
        raise UnsupportedError(
            f"{node.label}: subtracting two run-time tensors is not supported (only residual Add)"
        )
    x, c, pos = _view_and_const(ctx, node)
    k = ctx.channel_vector(node, x, c.value, "subtracted constant")
    if pos == 0:  # x - c
        return [ctx.emit_affine(node, x, np.ones_like(k), -k)]
    return [ctx.emit_affine(node, x, -np.ones_like(k), k)]  # c - x


@register("Mul", params=(1,))
def mul(ctx: Context, node: Node) -> list[Value]:
    if _both_views(ctx, node):
        raise UnsupportedError(
            f"{node.label}: multiplying two run-time tensors (attention, squeeze-excite) is not "
            f"supported"
        )
    x, c, _ = _view_and_const(ctx, node)
    s = ctx.channel_vector(node, x, c.value, "scale")
    return [ctx.emit_affine(node, x, s, np.zeros_like(s))]


@register("Div", params=(1,))
def div(ctx: Context, node: Node) -> list[Value]:
    if _both_views(ctx, node) or isinstance(ctx.value(node, 1), View):
        raise UnsupportedError(f"{node.label}: dividing by run-time data is not supported")
    x, c, _ = _view_and_const(ctx, node)
    d = ctx.channel_vector(node, x, c.value, "divisor")
    if np.any(d == 0):
        raise UnsupportedError(f"{node.label}: divides by zero")
    return [ctx.emit_affine(node, x, 1.0 / d, np.zeros_like(d))]


@register("Softmax")
def softmax(ctx: Context, node: Node) -> list[Value]:
    x = _float_view(ctx, node, 0)
    rank = len(x.onnx_shape)
    axis = int(node.attr("axis", 1 if node.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise ShapeError(f"{node.label}: axis {axis} is out of range for rank {rank}")
    if axis == 0:
        raise UnsupportedError(f"{node.label}: softmax across the batch axis is not supported")
    idx = x.index
    if node.opset < 13:  # coerced to 2-D: everything from `axis` on is one group
        groups = idx.reshape(int(np.prod(idx.shape[: axis - 1], dtype=np.int64)), -1)
    else:
        groups = np.moveaxis(idx, axis - 1, -1).reshape(-1, idx.shape[axis - 1])
    h, w, c = ctx.shape(x.tensor)
    if groups.shape == (1, h * w * c) and h * w > 1:
        return [_elementwise_layer(ctx, node, x, Softmax, over_all=True)]
    pixel = groups // c
    if groups.shape[1] == c and np.all(pixel == pixel[:, :1]):
        return [_elementwise_layer(ctx, node, x, Softmax)]
    raise UnsupportedError(
        f"{node.label}: softmax along axis {axis} of {x.onnx_shape!r} is not over the channels"
    )


@register("Concat")
def concat(ctx: Context, node: Node) -> list[Value]:
    if any(isinstance(ctx.value(node, i), Constant) for i in range(len(node.inputs))):
        raise UnsupportedError(f"{node.label}: concatenating constants with run-time data")
    views = [_float_view(ctx, node, i) for i in range(len(node.inputs))]
    if len(views) == 1:
        return [views[0]]
    rank = len(views[0].onnx_shape)
    axis = int(node.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise UnsupportedError(f"{node.label}: concatenation along the batch axis")
    shapes = [ctx.shape(v.tensor) for v in views]
    if len({s[:2] for s in shapes}) != 1:
        raise UnsupportedError(
            f"{node.label}: inputs differ in height/width {[s[:2] for s in shapes]!r}; "
            f"accelgen concatenates channels of equal-sized feature maps"
        )
    total = sum(s[2] for s in shapes)
    mapped, offset = [], 0
    for v, s in zip(views, shapes, strict=True):
        p = v.index
        mapped.append((p // s[2]) * total + offset + p % s[2])
        offset += s[2]
    try:
        index = np.concatenate(mapped, axis=axis - 1)
    except ValueError:
        raise ShapeError(
            f"{node.label}: input shapes {[v.onnx_shape for v in views]!r} do not concatenate "
            f"along axis {axis}"
        ) from None
    h, w, _ = shapes[0]
    out = ctx.new_tensor(node.outputs[0], (h, w, total))
    ctx.add_layer(
        Concat(name=node.name, inputs=tuple(v.tensor for v in views), output=out,
               in_shapes=tuple(shapes), out_shape=(h, w, total))
    )
    return [View(out, index, float_dtype(views[0]))]
