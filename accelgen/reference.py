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
* Loops run over kernel taps, layers and cache-sized chunks (several images, or output rows of
  one large image) only, never over pixels, channels or single images.
"""

from __future__ import annotations

import itertools
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
    CACHE_BYTES,
    ceil_extra,
    conv_windows,
    counted_taps,
    depthwise,
    in_threads,
    pad_hw,
    padded_buffer,
    serial_blas,
    window_taps,
)

Array = np.ndarray


def conv2d(layer: Conv2d, x: Array, epilogue: Callable[[Array], None] | None = None) -> Array:
    """A convolution of an (N, H, W, C_in) batch -> contiguous float32 (N, OH, OW, C_out).

    `epilogue`, if given, is applied in place to each chunk of the output while it is in the
    cache (a fused activation). Depthwise layers go to `depthwise`; the rest are matrix products
    of im2col columns with the weights. Per cache-sized chunk of images (or of output rows of one
    large image) the chunk is padded into a reused buffer, its columns copied out of a strided
    window view in one go (not at all for an unpadded 1x1 stride-1 kernel), and the product
    written straight into the output, bias and epilogue added in the cache. Batch slices on all
    cores.
    """
    n, h, w, c_in = x.shape
    oh, ow, c_out = layer.out_shape
    x = x.astype(np.float32, copy=False)
    if layer.groups == c_in > 1:  # depthwise: per-tap products
        return depthwise(x, layer.weight, layer.bias, layer.kernel, layer.stride, layer.dilation,
                         (oh, ow), layer.padding, 0.0, epilogue)
    g = layer.groups
    taps = layer.kernel[0] * layer.kernel[1]
    cg = c_in // g
    og = c_out // g
    depth = taps * c_in  # one im2col row: (tap, channel)
    # weight -> (g, taps*cg, og), matching the column order (tap, channel-in-group)
    wg = layer.weight.reshape(g, og, taps, cg).transpose(0, 2, 3, 1).reshape(g, taps * cg, og)
    wg = np.ascontiguousarray(wg, dtype=np.float32)
    bias = layer.bias.astype(np.float32)
    padded = any(layer.padding)
    pointwise = taps == 1 and layer.stride == (1, 1) and not padded
    row_bytes = 4 * ow * max(depth, c_out)  # columns (or output) of one output row
    images = CACHE_BYTES // (oh * row_bytes)  # per chunk; 0: one image is cut into rows
    rows = max(1, CACHE_BYTES // row_bytes)
    step = max(1, images)
    out = np.empty((n, oh, ow, c_out), np.float32)

    def product(cols: Array, o: Array) -> None:
        if g == 1:
            np.matmul(cols, wg[0], out=o)
        else:
            colsg = cols.reshape(-1, taps, g, cg).transpose(2, 0, 1, 3).reshape(g, -1, taps * cg)
            o.reshape(-1, g, og)[...] = np.matmul(colsg, wg).transpose(1, 0, 2)
        o += bias
        if epilogue is not None:
            epilogue(o)

    def work(start: int, stop: int) -> None:
        if pointwise:  # no copy: the pixels are the columns
            for a in range(start, stop, step):
                b = min(a + step, stop)
                product(x[a:b].reshape(-1, depth), out[a:b].reshape(-1, c_out))
            return
        if padded:  # chunk [a, b) is padded into src[:b - a]
            src, inner = padded_buffer(min(step, stop - start), (h, w), c_in, layer.padding,
                                       0.0, np.float32)
        else:  # chunk [a, b) is src[a:b]
            src = x
        win = conv_windows(src, layer.kernel, layer.stride, layer.dilation, (oh, ow))
        for a in range(start, stop, step):
            b = min(a + step, stop)
            if padded:
                inner[: b - a] = x[a:b]
                chunk = win[: b - a]
            else:
                chunk = win[a:b]
            if images:
                product(chunk.reshape(-1, depth), out[a:b].reshape(-1, c_out))
            else:  # b == a + 1
                for r in range(0, oh, rows):
                    product(chunk[0, r : r + rows].reshape(-1, depth),
                            out[a, r : r + rows].reshape(-1, c_out))

    in_threads(work, n, out[0].nbytes)
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

    in_threads(work, x.shape[0], out[0].nbytes)
    return out


def avgpool(layer: AvgPool2d, x: Array) -> Array:
    xp, taps = _pool_setup(layer, x, 0.0)
    count = counted_taps((x.shape[1], x.shape[2]), layer.out_shape[:2], layer.kernel,
                         layer.stride, layer.padding, layer.dilation, layer.count_include_pad)
    total = np.zeros((x.shape[0], *layer.out_shape), np.float32)

    def work(a: int, b: int) -> None:
        for rows, cols in taps:
            total[a:b] += xp[a:b, rows, cols, :]

    in_threads(work, x.shape[0], total[0].nbytes)
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


def activation_in_place(layer: Relu | Clip) -> Callable[[Array], None]:
    """`layer` as an in-place update of a float32 array (the same values as `run_layer`)."""
    if isinstance(layer, Relu):

        def relu(y: Array) -> None:
            np.maximum(y, np.float32(0.0), out=y)

        return relu
    low, high = np.float32(layer.low), np.float32(layer.high)

    def clip(y: Array) -> None:
        np.clip(y, low, high, out=y)

    return clip


def _fusions(graph: Graph, uses: Mapping[str, int],
             fake_quant: bool) -> dict[int, tuple[Conv2d, Relu | Clip]]:
    """Convolutions (by layer index) to run with the Relu/Clip right after them fused in.

    The activation then updates each output chunk of the convolution in the cache, and the
    convolution's own output is never formed — so only where nothing else sees it: the
    activation is its only use, it is not a graph output and it is not fake-quantized.
    """
    wanted = set(graph.output_tensors)
    return {
        k: (conv, act)
        for k, (conv, act) in enumerate(itertools.pairwise(graph.layers))
        if isinstance(conv, Conv2d)
        and isinstance(act, Relu | Clip)
        and act.inputs == (conv.output,)
        and uses[conv.output] == 1
        and conv.output not in wanted
        and not (fake_quant and graph.tensors[conv.output].quant is not None)
    }


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
    collect statistics without keeping every tensor alive). Unless every tensor is kept or
    observed, a convolution followed by its only consumer, a Relu/Clip, runs as one layer.
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
    fused = _fusions(graph, remaining, fake_quant) if keep != "all" and observe is None else {}
    with serial_blas():
        for k, layer in enumerate(graph.layers):
            if k - 1 in fused:  # this activation ran inside the convolution before it
                continue
            args = [values[name] for name in layer.inputs]
            if k in fused:
                conv, act = fused[k]
                y, output = conv2d(conv, *args, epilogue=activation_in_place(act)), act.output
            else:
                y, output = run_layer(layer, *args), layer.output
            values[output] = _maybe_quant(graph, output, y, fake_quant)
            if observe is not None:
                observe(output, values[output])
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
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and x.size:  # narrower floats all fit
        big = np.abs(x[np.isfinite(x)]).max(initial=0.0)
        if big > np.finfo(np.float32).max:
            raise UsageError(
                f"input {gi.onnx_name!r} holds values up to {big:.3g}, beyond the float32 range "
                f"accelgen computes in"
            )
    layout = gi.layout.reshape(-1)
    if gi.quant is None and np.array_equal(layout, np.arange(layout.size)):
        # the model's layout is the IR's: a plain float32 copy, no gather
        return np.array(x, dtype=np.float32).reshape(x.shape[0], *gi.layout.shape)
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

