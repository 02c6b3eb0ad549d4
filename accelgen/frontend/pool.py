"""Pooling: MaxPool, AveragePool, their global forms, spatial ReduceMean, and zero Pad."""

from __future__ import annotations

import numpy as np

from accelgen.errors import ShapeError, UnsupportedError
from accelgen.frontend.context import Context, Node
from accelgen.frontend.linear import window_attrs
from accelgen.frontend.registry import register
from accelgen.frontend.values import (
    Value,
    View,
    float_dtype,
    is_integer_dtype,
    nchw_index,
    nhwc_index,
)
from accelgen.ir import (
    AvgPool2d,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    MaxPool2d,
    Pad2d,
    Shape,
    window_output_size,
)


def _kernel(node: Node) -> tuple[int, int]:
    k = tuple(node.attr("kernel_shape"))
    if len(k) != 2:
        raise UnsupportedError(
            f"{node.label}: a {len(k)}-D kernel {list(k)!r}; accelgen supports 2-D pooling"
        )
    if min(k) < 1:
        raise ShapeError(f"{node.label}: kernel_shape {list(k)!r} must be >= 1")
    return (int(k[0]), int(k[1]))


def _emit(
    ctx: Context, node: Node, x: View, cls: type[Layer], out_shape: Shape, **f: object
) -> View:
    tensor, shape = ctx.require_nchw(node, x)
    out = ctx.new_tensor(node.outputs[0], out_shape)
    layer = ctx.add_layer(
        cls(name=node.name, inputs=(tensor,), output=out, in_shapes=(shape,),
            out_shape=out_shape, **f)
    )
    assert layer.out_shape == out_shape
    dtype = x.dtype if is_integer_dtype(x.dtype) and cls is MaxPool2d else float_dtype(x)
    return View(out, nchw_index(out_shape), dtype)


def _windowed(
    ctx: Context, node: Node, cls: type[MaxPool2d] | type[AvgPool2d], **f: object
) -> View:
    x = ctx.view(node, 0)
    if x.index.ndim != 3:
        raise UnsupportedError(
            f"{node.label}: input of shape {x.onnx_shape!r}; accelgen supports 2-D pooling"
        )
    kernel = _kernel(node)
    _, h, w = x.index.shape
    allow_dilation = cls is MaxPool2d or node.opset >= 19
    stride, padding, dilation = window_attrs(node, kernel, (h, w), allow_dilation=allow_dilation)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    oh, ow = window_output_size((h, w), kernel, stride, padding, dilation, ceil_mode)
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"{node.label}: kernel {kernel} does not fit the {h}x{w} input with pads {padding}"
        )
    return _emit(
        ctx, node, x, cls, (oh, ow, x.index.shape[0]), kernel=kernel, stride=stride,
        padding=padding, dilation=dilation, ceil_mode=ceil_mode, **f,
    )


@register("MaxPool")
def maxpool(ctx: Context, node: Node) -> list[Value]:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedError(f"{node.label}: the Indices output of MaxPool is not supported")
    return [_windowed(ctx, node, MaxPool2d)]


@register("AveragePool")
def averagepool(ctx: Context, node: Node) -> list[Value]:
    include = bool(node.attr("count_include_pad", 0))
    return [_windowed(ctx, node, AvgPool2d, count_include_pad=include)]


def _global(ctx: Context, node: Node, cls: type[Layer]) -> View:
    x = ctx.view(node, 0)
    if x.index.ndim != 3:
        raise UnsupportedError(
            f"{node.label}: input of shape {x.onnx_shape!r}; accelgen supports 2-D pooling"
        )
    c = x.index.shape[0]
    view = _emit(ctx, node, x, cls, (1, 1, c))
    return View(view.tensor, np.arange(c, dtype=np.int64).reshape(c, 1, 1), view.dtype)


@register("GlobalAveragePool")
def global_averagepool(ctx: Context, node: Node) -> list[Value]:
    return [_global(ctx, node, GlobalAvgPool)]


@register("GlobalMaxPool")
def global_maxpool(ctx: Context, node: Node) -> list[Value]:
    return [_global(ctx, node, GlobalMaxPool)]


@register("ReduceMean", params=(1,))
def reduce_mean(ctx: Context, node: Node) -> list[Value]:
    """ReduceMean over the two spatial axes (TensorFlow's global average pool)."""
    x = ctx.view(node, 0)
    rank = len(x.onnx_shape)
    if node.opset >= 18:
        axes_c = ctx.optional_const(node, 1, "axes")
        axes = None if axes_c is None else axes_c.tolist()
    else:
        axes = node.attr("axes", None)
    if axes is None:
        raise UnsupportedError(f"{node.label}: reducing over all axes (including the batch)")
    axes = sorted(a + rank if a < 0 else a for a in axes)
    keep = bool(node.attr("keepdims", 1))
    shape = ctx.shape(x.tensor)
    _h, _w, c = shape
    if rank == 4 and axes == [2, 3] and np.array_equal(x.index, nchw_index(shape)):
        out_index = np.arange(c, dtype=np.int64).reshape(c, 1, 1)
    elif rank == 4 and axes == [1, 2] and np.array_equal(x.index, nhwc_index(shape)):
        out_index = np.arange(c, dtype=np.int64).reshape(1, 1, c)
    else:
        raise UnsupportedError(
            f"{node.label}: ReduceMean over axes {axes!r} of {x.onnx_shape!r}; accelgen "
            f"supports the mean over the two spatial axes (a global average pool)"
        )
    out = ctx.new_tensor(node.outputs[0], (1, 1, c))
    ctx.add_layer(
        GlobalAvgPool(name=node.name, inputs=(x.tensor,), output=out, in_shapes=(shape,),
                      out_shape=(1, 1, c))
    )
    index = out_index if keep else out_index.reshape(c)
    return [View(out, index, float_dtype(x))]


@register("Pad", params=(1, 2, 3))
def pad(ctx: Context, node: Node) -> list[Value]:
    mode = node.attr("mode", "constant")
    if mode != "constant":
        raise UnsupportedError(
            f"{node.label}: {mode!r} padding; accelgen supports constant padding"
        )
    x = ctx.view(node, 0)
    rank = len(x.onnx_shape)
    if node.opset < 11:
        pads = list(node.attr("pads"))
        value = float(node.attr("value", 0.0))
    else:
        pads = ctx.const(node, 1, "pads").astype(np.int64).tolist()
        v = ctx.optional_const(node, 2, "constant value")
        value = 0.0 if v is None or np.asarray(v).size == 0 else float(np.asarray(v).reshape(-1)[0])
        if node.has_input(3):
            axes = [a + rank if a < 0 else a for a in ctx.const(node, 3, "axes").tolist()]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise ShapeError(f"{node.label}: pads {pads!r} do not match rank {rank}")
    if rank != 4 or pads[0] or pads[1] or pads[4] or pads[5]:
        raise UnsupportedError(
            f"{node.label}: pads {pads!r}; accelgen pads height and width of (N, C, H, W) only"
        )
    if min(pads) < 0:
        raise UnsupportedError(f"{node.label}: negative pads (cropping) {pads!r}")
    padding = (pads[2], pads[3], pads[6], pads[7])
    tensor, shape = ctx.require_nchw(node, x)
    h, w, c = shape
    out_shape = (h + padding[0] + padding[2], w + padding[1] + padding[3], c)
    out = ctx.new_tensor(node.outputs[0], out_shape)
    ctx.add_layer(
        Pad2d(name=node.name, inputs=(tensor,), output=out, in_shapes=(shape,),
              out_shape=out_shape, padding=padding, value=value)
    )
    return [View(out, nchw_index(out_shape), float_dtype(x))]
