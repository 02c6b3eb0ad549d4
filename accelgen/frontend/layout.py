"""Layout-only ops: they rearrange a view's index and never become layers.

Axis 0 of every run-time ONNX value is the batch axis. An op that would move, merge or split it
(Transpose with ``perm[0] != 0``, Flatten with ``axis != 1``, a Reshape whose first dimension is
not the batch) is rejected: the accelerator processes one image at a time.
"""

from __future__ import annotations

import numpy as np

from accelgen.errors import ShapeError, UnsupportedError
from accelgen.frontend.context import Context, Node
from accelgen.frontend.registry import register
from accelgen.frontend.values import Constant, Value, View
from accelgen.ir import QuantParams


def _norm_axes(node: Node, axes: list[int] | np.ndarray, rank: int) -> list[int]:
    out = []
    for a in np.asarray(axes, dtype=np.int64).reshape(-1).tolist():
        b = a + rank if a < 0 else a
        if not 0 <= b < rank:
            raise ShapeError(f"{node.label}: axis {a} is out of range for rank {rank}")
        out.append(b)
    return out


def _batch_axis_error(node: Node, what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{node.label}: {what} the batch axis (axis 0); accelgen runs one image at a time and "
        f"needs the batch axis left alone"
    )


@register("Identity")
def identity(ctx: Context, node: Node) -> list[Value]:
    return [ctx.value(node, 0)]


@register("Dropout")
def dropout(ctx: Context, node: Node) -> list[Value]:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedError(f"{node.label}: the dropout mask output is not supported")
    if node.has_input(2) and bool(ctx.const(node, 2, "training_mode")):
        raise UnsupportedError(f"{node.label}: training-mode dropout is not supported")
    return [ctx.value(node, 0)]


@register("Transpose")
def transpose(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    assert isinstance(v, View)
    rank = len(v.onnx_shape)
    perm = list(node.attr("perm", list(range(rank))[::-1]))
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"{node.label}: perm {perm!r} is not a permutation of {rank} axes")
    if perm[0] != 0:
        raise _batch_axis_error(node, f"perm {perm!r} moves")
    return [v.rearranged(v.index.transpose([p - 1 for p in perm[1:]]))]


def resolve_reshape(node: Node, in_shape: tuple[int, ...], target: np.ndarray) -> list[int]:
    """ONNX Reshape's target shape with 0 and -1 resolved (`in_shape` has a batch of 1)."""
    allowzero = bool(node.attr("allowzero", 0))
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    out: list[int] = []
    infer = None
    for i, d in enumerate(dims):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ShapeError(f"{node.label}: shape {dims!r} copies axis {i}, which is absent")
            out.append(in_shape[i])
        elif d == -1:
            if infer is not None:
                raise ShapeError(f"{node.label}: shape {dims!r} has more than one -1")
            infer = i
            out.append(1)
        elif d < 0:
            raise ShapeError(f"{node.label}: shape {dims!r} has a negative dimension")
        else:
            out.append(d)
    total = int(np.prod(in_shape))
    known = int(np.prod(out))
    if infer is not None:
        if known == 0 or total % known:
            raise ShapeError(f"{node.label}: cannot reshape {in_shape!r} to {dims!r}")
        out[infer] = total // known
    if int(np.prod(out)) != total:
        raise ShapeError(f"{node.label}: cannot reshape {in_shape!r} ({total} values) to {dims!r}")
    return out


@register("Reshape", params=(1,))
def reshape(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    assert isinstance(v, View)
    target = ctx.const(node, 1, "target shape")
    try:
        out = resolve_reshape(node, v.onnx_shape, target)
    except ShapeError:
        out = []
    if not out or out[0] != 1:
        dims = [int(d) for d in np.asarray(target).reshape(-1)]
        shown = ("N", *v.onnx_shape[1:])
        raise UnsupportedError(
            f"{node.label}: cannot reshape {shown!r} to {dims!r} without merging or splitting "
            f"the batch axis; accelgen runs one image at a time"
        )
    return [v.rearranged(v.index.reshape(out[1:]))]


@register("Flatten")
def flatten(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    assert isinstance(v, View)
    rank = len(v.onnx_shape)
    axis = int(node.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis != 1:
        raise _batch_axis_error(node, f"axis={axis} merges")
    return [v.rearranged(v.index.reshape(-1))]


def _axes_input(ctx: Context, node: Node) -> list[int] | None:
    if node.opset >= 13:
        return None if not node.has_input(1) else ctx.const(node, 1, "axes").tolist()
    axes = node.attr("axes", None)
    return None if axes is None else list(axes)


@register("Squeeze", params=(1,))
def squeeze(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    assert isinstance(v, View)
    shape = v.onnx_shape
    axes = _axes_input(ctx, node)
    if axes is None:
        # all size-1 axes except the batch axis, which is free at run time
        axes = [i for i, d in enumerate(shape) if d == 1 and i > 0]
    axes = _norm_axes(node, axes, len(shape))
    if 0 in axes:
        raise _batch_axis_error(node, "squeezing")
    for a in axes:
        if shape[a] != 1:
            raise ShapeError(f"{node.label}: cannot squeeze axis {a} of size {shape[a]}")
    return [v.rearranged(v.index.squeeze(axis=tuple(a - 1 for a in axes)))]


@register("Unsqueeze", params=(1,))
def unsqueeze(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    assert isinstance(v, View)
    axes = _axes_input(ctx, node)
    if axes is None:
        raise ShapeError(f"{node.label} needs axes")
    rank = len(v.onnx_shape) + len(axes)
    axes = sorted(_norm_axes(node, axes, rank))
    if 0 in axes:
        raise _batch_axis_error(node, "inserting an axis before")
    idx = v.index
    for a in axes:
        idx = np.expand_dims(idx, a - 1)
    return [v.rearranged(idx)]


@register("Shape")
def shape(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    dims = np.asarray(v.onnx_shape if isinstance(v, View) else v.value.shape, dtype=np.int64)
    start = int(node.attr("start", 0))
    end = node.attr("end", None)
    return [Constant(dims[start:end])]


_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}


@register("Cast")
def cast(ctx: Context, node: Node) -> list[Value]:
    v = ctx.value(node, 0)
    assert isinstance(v, View)
    to = int(node.attr("to"))
    if to not in _FLOAT_TYPES:
        raise UnsupportedError(
            f"{node.label}: casting run-time data to ONNX type {to} is not supported (float, "
            f"float16 and double only); accelgen computes on real values"
        )
    if isinstance(v.codes, QuantParams):
        raise UnsupportedError(
            f"{node.label}: casts integer codes to float without a DequantizeLinear; "
            f"accelgen reads quantization only from DequantizeLinear or QONNX Quant"
        )
    # the IR computes in float32 throughout; the type matters where the value leaves the model
    return [View(v.tensor, v.index, np.dtype(_FLOAT_TYPES[to]), None)]
