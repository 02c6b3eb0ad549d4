"""The float reference: executes a `Graph` in numpy, batched and vectorised.

Contract
--------
* `run` takes inputs in the model's own layout (a batch axis first, or a single example without
  it) and returns the outputs in the model's own layout and element type, keyed by the model's
  output names — a drop-in for an ONNX runtime session.
* `run_ir` works on IR tensors: ``(N, H, W, C)`` float32 arrays keyed by tensor name.
* With `fake_quant` (the default) every tensor carrying a `QuantParams` annotation is quantized
  and dequantized right after it is computed, as the QDQ/QONNX nodes of the model would do;
  weights already hold their dequantized values.
* Loops run over kernel taps and layers only, never over pixels, channels or images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from accelgen.errors import UsageError
from accelgen.ir import (
    Add,
    AvgPool2d,
    Clip,
    Concat,
    Conv2d,
    Dense,
    GlobalAvgPool,
    GlobalMaxPool,
    Graph,
    GraphInput,
    Layer,
    MaxPool2d,
    Pad2d,
    Relu,
    Softmax,
)
from accelgen.kernels import (
    ceil_extra,
    counted_taps,
    depthwise,
    in_threads,
    pad_hw,
    window_taps,
)

Array = np.ndarray

# Upper bound on the im2col matrix of one chunk (elements), to bound memory on big batches.
_COLS_BUDGET = 1 << 25


def conv2d(layer: Conv2d, x: Array) -> Array:
    n = x.shape[0]
    oh, ow, c_out = layer.out_shape
    xp = pad_hw(x, layer.padding, 0.0)
    if layer.groups == layer.in_channels:  # depthwise (or a single channel): per-tap products
        return np.ascontiguousarray(depthwise(xp, layer.weight, layer.bias, layer.kernel,
                                              layer.stride, layer.dilation, (oh, ow)))
    g = layer.groups
    taps = layer.kernel[0] * layer.kernel[1]
    cg = layer.in_channels // g
    og = c_out // g
    # weight -> (g, taps*cg, og), matching the column order (tap, channel-in-group)
    wg = layer.weight.reshape(g, og, taps, cg).transpose(0, 2, 3, 1).reshape(g, taps * cg, og)
    if taps == 1 and layer.stride == (1, 1) and g == 1:  # pointwise: one matrix product
        y = xp.reshape(n * oh * ow, layer.in_channels) @ wg[0]
        return y.reshape(n, oh, ow, c_out) + layer.bias
    chunk = max(1, _COLS_BUDGET // max(1, oh * ow * taps * layer.in_channels))
    out = np.empty((n, oh, ow, c_out), np.float32)
    for start in range(0, n, chunk):
        xs = xp[start : start + chunk]
        k = xs.shape[0]
        taps_ = window_taps(layer.kernel, layer.stride, layer.dilation, oh, ow)
        cols = np.stack([xs[:, r, c, :] for r, c in taps_], axis=3)
        cols = cols.reshape(k * oh * ow, taps, layer.in_channels)
        if g == 1:
            y = cols.reshape(k * oh * ow, taps * cg) @ wg[0]
        else:
            colsg = cols.reshape(k * oh * ow, taps, g, cg).transpose(2, 0, 1, 3)
            y = np.matmul(colsg.reshape(g, k * oh * ow, taps * cg), wg)  # (g, P, og)
            y = y.transpose(1, 0, 2).reshape(k * oh * ow, c_out)
        out[start : start + k] = y.reshape(k, oh, ow, c_out)
    out += layer.bias
    return out


def dense(layer: Dense, x: Array) -> Array:
    y = x.reshape(x.shape[0], -1) @ layer.weight.T + layer.bias
    return y.reshape(x.shape[0], 1, 1, -1)


def _pool_setup(layer: MaxPool2d | AvgPool2d, x: Array, value: float) -> tuple[Array, list]:
    oh, ow, _ = layer.out_shape
    hw = (x.shape[1], x.shape[2])
    extra = ceil_extra((oh, ow), hw, layer.kernel, layer.stride, layer.padding, layer.dilation)
    xp = pad_hw(x, layer.padding, value, extra)
    return xp, list(window_taps(layer.kernel, layer.stride, layer.dilation, oh, ow))


def maxpool(layer: MaxPool2d, x: Array) -> Array:
    xp, taps = _pool_setup(layer, x, -np.inf)
    out = np.empty((x.shape[0], *layer.out_shape), np.float32)

    def work(a: int, b: int) -> None:
        rows, cols = taps[0]
        out[a:b] = xp[a:b, rows, cols, :]
        for rows, cols in taps[1:]:
            np.maximum(out[a:b], xp[a:b, rows, cols, :], out=out[a:b])

    in_threads(work, x.shape[0])
    return out


def avgpool(layer: AvgPool2d, x: Array) -> Array:
    xp, taps = _pool_setup(layer, x, 0.0)
    count = counted_taps((x.shape[1], x.shape[2]), layer.out_shape[:2], layer.kernel,
                         layer.stride, layer.padding, layer.dilation, layer.count_include_pad)
    total = np.zeros((x.shape[0], *layer.out_shape), np.float32)

    def work(a: int, b: int) -> None:
        for rows, cols in taps:
            total[a:b] += xp[a:b, rows, cols, :]

    in_threads(work, x.shape[0])
    return total / count[None, :, :, None].astype(np.float32)


def softmax(layer: Softmax, x: Array) -> Array:
    axes = (1, 2, 3) if layer.over_all else (3,)
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    return e / e.sum(axis=axes, keepdims=True)


_EXECUTORS: dict[type[Layer], Callable[..., Array]] = {
    Conv2d: lambda layer, x: conv2d(layer, x),
    Dense: lambda layer, x: dense(layer, x),
    MaxPool2d: lambda layer, x: maxpool(layer, x),
    AvgPool2d: lambda layer, x: avgpool(layer, x),
    GlobalAvgPool: lambda layer, x: x.mean(axis=(1, 2), keepdims=True),
    GlobalMaxPool: lambda layer, x: x.max(axis=(1, 2), keepdims=True),
    Pad2d: lambda layer, x: pad_hw(x, layer.padding, layer.value),
    Add: lambda layer, a, b: a + b,
    Concat: lambda layer, *xs: np.concatenate(xs, axis=3),
    Relu: lambda layer, x: np.maximum(x, np.float32(0.0)),
    Clip: lambda layer, x: np.clip(x, np.float32(layer.low), np.float32(layer.high)),
    Softmax: lambda layer, x: softmax(layer, x),
}


def run_layer(layer: Layer, *inputs: Array) -> Array:
    """One layer on IR batches ``(N, H, W, C)``."""
    fn = _EXECUTORS[type(layer)]
    return np.asarray(fn(layer, *inputs), dtype=np.float32)


def run_ir(
    graph: Graph,
    inputs: Mapping[str, Array],
    *,
    fake_quant: bool = True,
    keep: str = "outputs",
    observe: Callable[[str, Array], None] | None = None,
) -> dict[str, Array]:
    """Execute on IR batches; return the output tensors (`keep="outputs"`) or all (`"all"`).

    `observe(name, value)` is called for every tensor as it is computed (calibration uses it to
    collect statistics without keeping every tensor alive).
    """
    values: dict[str, Array] = {}
    for gi in graph.inputs:
        if gi.tensor not in inputs:
            raise UsageError(f"no value for graph input {gi.onnx_name!r}")
        values[gi.tensor] = _maybe_quant(graph, gi.tensor, inputs[gi.tensor], fake_quant)
        if observe is not None:
            observe(gi.tensor, values[gi.tensor])
    remaining = {}
    if keep != "all":
        for layer in graph.layers:
            for name in layer.inputs:
                remaining[name] = remaining.get(name, 0) + 1
    wanted = set(graph.output_tensors)
    for layer in graph.layers:
        y = run_layer(layer, *(values[name] for name in layer.inputs))
        values[layer.output] = _maybe_quant(graph, layer.output, y, fake_quant)
        if observe is not None:
            observe(layer.output, values[layer.output])
        if keep != "all":
            for name in layer.inputs:
                remaining[name] -= 1
                if remaining[name] == 0 and name not in wanted:
                    del values[name]
    if keep == "all":
        return values
    return {name: values[name] for name in wanted}


def _maybe_quant(graph: Graph, tensor: str, x: Array, fake_quant: bool) -> Array:
    q = graph.tensors[tensor].quant
    if fake_quant and q is not None:
        return q.fake_quantize(x, axis=-1)
    return x


def prepare_input(gi: GraphInput, x: Array) -> Array:
    """A model-layout input (with or without the batch axis) as an IR batch; checks the shape."""
    x = np.asarray(x)
    if x.shape == gi.onnx_shape:
        x = x[None]
    if x.shape[1:] != gi.onnx_shape:
        raise UsageError(
            f"input {gi.onnx_name!r} has shape {x.shape!r}; the model expects "
            f"{gi.onnx_shape!r} or (N, *{gi.onnx_shape!r})"
        )
    if x.dtype.kind not in "fiub" and x.dtype.name not in ("int4", "uint4", "int2", "uint2"):
        raise UsageError(f"input {gi.onnx_name!r} has non-numeric type {x.dtype}")
    if x.dtype.kind == "f" and x.size:
        big = np.abs(x[np.isfinite(x)]).max(initial=0.0)
        if big > np.finfo(np.float32).max:
            raise UsageError(
                f"input {gi.onnx_name!r} holds values up to {big:.3g}, beyond the float32 range "
                f"accelgen computes in"
            )
    # contiguous: the layout transpose leaves a strided view that slows the first layer
    return np.ascontiguousarray(gi.to_ir(x))


def run(
    graph: Graph,
    feeds: Mapping[str, Array] | Array,
    *,
    fake_quant: bool = True,
) -> dict[str, Array]:
    """Model-layout inputs -> model-layout outputs, keyed by the model's output names."""
    if not isinstance(feeds, Mapping):
        if len(graph.inputs) != 1:
            raise UsageError(
                f"the model has {len(graph.inputs)} inputs "
                f"({[gi.onnx_name for gi in graph.inputs]}); pass them by name"
            )
        feeds = {graph.inputs[0].onnx_name: feeds}
    unknown = set(feeds) - {gi.onnx_name for gi in graph.inputs}
    if unknown:
        raise UsageError(
            f"unknown input(s) {sorted(unknown)!r}; the model's inputs are "
            f"{[gi.onnx_name for gi in graph.inputs]!r}"
        )
    ir_inputs = {}
    for gi in graph.inputs:
        if gi.onnx_name not in feeds:
            raise UsageError(f"no value for input {gi.onnx_name!r}")
        ir_inputs[gi.tensor] = prepare_input(gi, feeds[gi.onnx_name])
    sizes = {v.shape[0] for v in ir_inputs.values()}
    if len(sizes) > 1:
        raise UsageError(f"inputs have different batch sizes {sorted(sizes)!r}")
    values = run_ir(graph, ir_inputs, fake_quant=fake_quant)
    return {go.onnx_name: go.from_ir(values[go.tensor]) for go in graph.outputs}

