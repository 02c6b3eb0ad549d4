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

import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

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

Array = np.ndarray

# Upper bound on the im2col matrix of one chunk (elements), to bound memory on big batches.
_COLS_BUDGET = 1 << 25
_WORKERS = max(1, min(8, os.cpu_count() or 1))


def _pad(
    x: Array, padding: tuple[int, int, int, int], value: float, extra: tuple[int, int] = (0, 0)
) -> Array:
    top, left, bottom, right = padding
    if not (top or left or bottom or right or extra[0] or extra[1]):
        return x
    return np.pad(
        x,
        ((0, 0), (top, bottom + extra[0]), (left, right + extra[1]), (0, 0)),
        constant_values=value,
    )


def _taps(layer: Conv2d | MaxPool2d | AvgPool2d, oh: int, ow: int) -> Iterable[tuple[slice, slice]]:
    """The (row, column) slices of the padded input that each kernel tap reads."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.stride, layer.dilation
    for i in range(kh):
        for j in range(kw):
            yield (
                slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
                slice(j * dw, j * dw + (ow - 1) * sw + 1, sw),
            )


def _ceil_extra(layer: MaxPool2d | AvgPool2d, h: int, w: int) -> tuple[int, int]:
    """Rows/columns a ceil-mode window reads past the padded input."""
    oh, ow = layer.out_shape[:2]
    top, left, bottom, right = layer.padding
    need_h = (oh - 1) * layer.stride[0] + layer.dilation[0] * (layer.kernel[0] - 1) + 1
    need_w = (ow - 1) * layer.stride[1] + layer.dilation[1] * (layer.kernel[1] - 1) + 1
    return max(0, need_h - (h + top + bottom)), max(0, need_w - (w + left + right))


def _in_threads(fn: Callable[[int, int], None], n: int, min_chunk: int = 1) -> None:
    """Run ``fn(start, stop)`` over batch slices on all cores (numpy releases the GIL)."""
    workers = min(_WORKERS, max(1, n // min_chunk))
    if workers <= 1:
        fn(0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(fn, int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]:
            f.result()


def _depthwise(layer: Conv2d, xp: Array, out: Array) -> None:
    """Per-tap multiply-accumulate, in place, batch slices in parallel threads."""
    oh, ow = layer.out_shape[:2]
    m = layer.out_channels // layer.groups
    taps = list(_taps(layer, oh, ow))
    w = layer.weight

    def work(a: int, b: int) -> None:
        o = out[a:b]
        o[...] = layer.bias
        buf = np.empty_like(o)
        for t, (rows, cols) in enumerate(taps):
            tap = xp[a:b, rows, cols, :]
            if m > 1:
                tap = np.repeat(tap, m, axis=-1)
            np.multiply(tap, w[:, t // layer.kernel[1], t % layer.kernel[1], 0], out=buf)
            o += buf

    _in_threads(work, xp.shape[0])


def conv2d(layer: Conv2d, x: Array) -> Array:
    n = x.shape[0]
    oh, ow, c_out = layer.out_shape
    xp = _pad(x, layer.padding, 0.0)
    if layer.groups == layer.in_channels:  # depthwise (or a single channel): per-tap products
        out = np.empty((n, oh, ow, c_out), np.float32)
        _depthwise(layer, xp, out)
        return out
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
        cols = np.stack([xs[:, r, c, :] for r, c in _taps(layer, oh, ow)], axis=3)
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


def maxpool(layer: MaxPool2d, x: Array) -> Array:
    oh, ow, _ = layer.out_shape
    xp = _pad(x, layer.padding, -np.inf, _ceil_extra(layer, x.shape[1], x.shape[2]))
    taps = list(_taps(layer, oh, ow))
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), np.float32)

    def work(a: int, b: int) -> None:
        rows, cols = taps[0]
        out[a:b] = xp[a:b, rows, cols, :]
        for rows, cols in taps[1:]:
            np.maximum(out[a:b], xp[a:b, rows, cols, :], out=out[a:b])

    _in_threads(work, x.shape[0])
    return out


def avgpool(layer: AvgPool2d, x: Array) -> Array:
    oh, ow, _ = layer.out_shape
    h, w = x.shape[1:3]
    extra = _ceil_extra(layer, h, w)
    xp = _pad(x, layer.padding, 0.0, extra)
    # which padded positions count towards the divisor
    top, left, bottom, right = layer.padding
    counted = np.zeros((h + top + bottom + extra[0], w + left + right + extra[1]), np.float32)
    if layer.count_include_pad:
        counted[: h + top + bottom, : w + left + right] = 1.0
    else:
        counted[top : top + h, left : left + w] = 1.0
    taps = list(_taps(layer, oh, ow))
    count = np.zeros((oh, ow), np.float32)
    for rows, cols in taps:
        count += counted[rows, cols]
    total = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.float32)

    def work(a: int, b_: int) -> None:
        for rows, cols in taps:
            total[a:b_] += xp[a:b_, rows, cols, :]

    _in_threads(work, x.shape[0])
    return total / count[None, :, :, None]


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
    Pad2d: lambda layer, x: _pad(x, layer.padding, layer.value),
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
) -> dict[str, Array]:
    """Execute on IR batches; return the output tensors (`keep="outputs"`) or all (`"all"`)."""
    values: dict[str, Array] = {}
    for gi in graph.inputs:
        if gi.tensor not in inputs:
            raise UsageError(f"no value for graph input {gi.onnx_name!r}")
        values[gi.tensor] = _maybe_quant(graph, gi.tensor, inputs[gi.tensor], fake_quant)
    remaining = {}
    if keep != "all":
        for layer in graph.layers:
            for name in layer.inputs:
                remaining[name] = remaining.get(name, 0) + 1
    wanted = set(graph.output_tensors)
    for layer in graph.layers:
        y = run_layer(layer, *(values[name] for name in layer.inputs))
        values[layer.output] = _maybe_quant(graph, layer.output, y, fake_quant)
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
    return gi.to_ir(x)


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

