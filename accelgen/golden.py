"""The golden model: the integer-exact executor of a `QuantizedGraph`.

It *is* the definition of correct hardware output; every hardware test compares to it with ==.

The arithmetic, precisely
-------------------------
* **Conv / Dense**: ``acc = sum(x * w) + bias`` over the integer input codes, exactly (int64;
  the sum is formed in float64 only when the layer's proved accumulator width is <= 53 bits,
  where float64 addition of these integers is exact).
* **Requantize** (`requantize`): for shift ``s > 0``: ``(acc + 2**(s-1)) >> s`` (round half
  up, arithmetic shift); ``s == 0``: ``acc``; ``s < 0``: ``acc << -s``. Then clamp to
  ``[lo, hi]`` (the output range, narrowed by a fused ReLU/ReLU6/Clip).
* **Residual add**: ``(a << align[0]) + (b << align[1])``, then requantize by `shift`.
* **Max pool**: integer max over the window; padding never wins.
* **Average pools** (the division rule): with ``sum`` the integer sum over the window's counted
  taps and ``n`` their number, ``y = floor((2*sum + n) / (2*n))`` — ``sum / n`` rounded half
  up, exactly, for every ``n`` (a power of two or not). The hardware computes it as
  ``((sum + bias_n) * m_n) >> k_n`` with constants from `reciprocal`, which are proved equal to
  the formula over the whole input range by `check_reciprocal` (and tested exhaustively).
* **Concat**: each input requantized by its shift, then clamped.
* **Input**: the host quantizes real inputs as ``clamp(floor(x * 2**frac + 1/2))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from accelgen.errors import AccelgenError, UsageError
from accelgen.ir import window_output_size
from accelgen.kernels import ceil_extra, counted_taps, depthwise, pad_hw, window_taps
from accelgen.quantized import (
    QAdd,
    QAvgPool,
    QClamp,
    QConcat,
    QConv,
    QDense,
    QGlobalAvgPool,
    QGlobalMaxPool,
    QLayer,
    QMaxPool,
    QPad,
    QTensor,
    QuantizedGraph,
)

Array = np.ndarray
_COLS_BUDGET = 1 << 25


def requantize(acc: Array, shift: int | Iterable[int], lo: int, hi: int) -> Array:
    """Shift with round half up (per channel on the last axis if `shift` is a sequence), clamp."""
    acc = np.asarray(acc, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    right = np.maximum(s, 0)
    left = np.maximum(-s, 0)
    rounding = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    y = np.left_shift(np.right_shift(acc + rounding, right), left)
    return np.clip(y, lo, hi)


def divide_round_half_up(total: Array, n: Array | int) -> Array:
    """``floor((2*total + n) / (2*n))``: total / n rounded half up (the average-pool rule)."""
    total = np.asarray(total, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    return np.floor_divide(2 * total + n, 2 * n)


def reciprocal(n: int, sum_bits: int) -> tuple[int, int, int, int]:
    """Hardware constants ``(c, m, k, big_k)`` for an average over `n` taps.

    For every sum ``s`` in the signed `sum_bits`-bit range,
    ``(((2*s + c) * m) >> k) - big_k == divide_round_half_up(s, n)``.

    Why: with ``d = 2n`` the rule is ``floor((2s + n) / d)``. Adding ``d * big_k`` makes the
    dividend ``t = 2s + c`` (``c = n + d * big_k``) non-negative, and for ``0 <= t < 2**T``,
    ``floor(t / d) == (t * m) >> k`` when ``m = ceil(2**k / d)`` and ``k >= T + ceil(log2 d)``
    (Granlund & Montgomery, "Division by invariant integers using multiplication", thm. 4.2).
    `check_reciprocal` verifies the identity numerically.
    """
    if n < 1:
        raise AccelgenError(f"average over {n!r} taps")
    d = 2 * n
    big_k = -(-(1 << sum_bits) // d)  # 2*s >= -2**sum_bits, so t >= 0
    c = n + d * big_k
    t_max = (1 << sum_bits) + c  # 2*s <= 2**sum_bits - 2
    t_bits = int(t_max).bit_length()
    k = t_bits + (d - 1).bit_length()
    m = -(-(1 << k) // d)
    return c, m, k, big_k


def apply_reciprocal(total: Array, n: int, sum_bits: int) -> Array:
    """What the hardware computes for an average over `n` taps (python ints: no overflow)."""
    c, m, k, big_k = reciprocal(n, sum_bits)
    t = 2 * np.asarray(total, dtype=object) + c
    return np.asarray((t * m) >> k, dtype=object) - big_k


def check_reciprocal(n: int, sum_bits: int, samples: int | None = None) -> bool:
    """Prove `reciprocal` for (n, sum_bits) by checking every sum (or `samples` of them)."""
    lo, hi = -(1 << (sum_bits - 1)), (1 << (sum_bits - 1)) - 1
    if samples is None:
        s = np.arange(lo, hi + 1, dtype=np.int64)
    else:
        rng = np.random.default_rng(n * 7919 + sum_bits)
        s = np.concatenate([np.arange(lo, lo + 64), np.arange(hi - 63, hi + 1),
                            rng.integers(lo, hi + 1, samples)])
    want = divide_round_half_up(s, n)
    got = apply_reciprocal(s, n, sum_bits).astype(np.int64)
    return bool(np.array_equal(want, got))


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------


def conv_accumulate(layer: QConv, x: Array) -> Array:
    """The exact accumulators ``sum(x * w) + bias`` of a convolution, int64 (N, OH, OW, C_out)."""
    n, h, w, c_in = x.shape
    kh, kw = layer.kernel
    oh, ow = window_output_size((h, w), layer.kernel, layer.stride, layer.padding, layer.dilation)
    c_out = layer.out_channels
    xp = pad_hw(x, layer.padding, 0)
    taps = list(window_taps(layer.kernel, layer.stride, layer.dilation, oh, ow))
    wt = layer.weight
    if layer.groups == c_in:  # depthwise: per-tap products, exact in int64
        return np.ascontiguousarray(
            depthwise(xp, wt, layer.bias, layer.kernel, layer.stride, layer.dilation, (oh, ow))
        )
    exact_float = layer.acc_bits <= 53
    dtype = np.float64 if exact_float else np.int64
    g = layer.groups
    cg, og = c_in // g, c_out // g
    ntaps = kh * kw
    wg = wt.reshape(g, og, ntaps, cg).transpose(0, 2, 3, 1).reshape(g, ntaps * cg, og).astype(dtype)
    out = np.empty((n, oh, ow, c_out), np.int64)
    chunk = max(1, _COLS_BUDGET // max(1, oh * ow * ntaps * c_in))
    for start in range(0, n, chunk):
        xs = xp[start : start + chunk].astype(dtype)
        k = xs.shape[0]
        if ntaps == 1 and layer.stride == (1, 1):
            cols = xs.reshape(k * oh * ow, 1, c_in)
        else:
            cols = np.stack([xs[:, r, c, :] for r, c in taps], axis=3).reshape(k * oh * ow,
                                                                                 ntaps, c_in)
        if g == 1:
            y = cols.reshape(k * oh * ow, ntaps * cg) @ wg[0]
        else:
            colsg = cols.reshape(k * oh * ow, ntaps, g, cg).transpose(2, 0, 1, 3)
            y = np.matmul(colsg.reshape(g, k * oh * ow, ntaps * cg), wg)
            y = y.transpose(1, 0, 2).reshape(k * oh * ow, c_out)
        out[start : start + k] = y.reshape(k, oh, ow, c_out).astype(np.int64)
    out += layer.bias
    return out


def dense_accumulate(layer: QDense, x: Array) -> Array:
    flat = x.reshape(x.shape[0], -1)
    if layer.acc_bits <= 53:
        acc = (flat.astype(np.float64) @ layer.weight.T.astype(np.float64)).astype(np.int64)
    else:
        acc = flat.astype(np.int64) @ layer.weight.T
    return (acc + layer.bias).reshape(x.shape[0], 1, 1, -1)


def _pool_setup(layer: QMaxPool | QAvgPool, x: Array, value: int) -> tuple[Array, list, tuple]:
    h, w = x.shape[1], x.shape[2]
    out_hw = window_output_size((h, w), layer.kernel, layer.stride, layer.padding,
                                layer.dilation, layer.ceil_mode)
    extra = ceil_extra(out_hw, (h, w), layer.kernel, layer.stride, layer.padding, layer.dilation)
    xp = pad_hw(x, layer.padding, value, extra)
    return xp, list(window_taps(layer.kernel, layer.stride, layer.dilation, *out_hw)), out_hw


def maxpool(layer: QMaxPool, x: Array) -> Array:
    xp, taps, _ = _pool_setup(layer, x, np.iinfo(np.int64).min)
    rows, cols = taps[0]
    out = xp[:, rows, cols, :].copy()
    for rows, cols in taps[1:]:
        np.maximum(out, xp[:, rows, cols, :], out=out)
    return out


def avgpool_counts(layer: QAvgPool, h: int, w: int) -> Array:
    """Counted taps per output position (the `n` of the division rule), shape (OH, OW)."""
    out_hw = window_output_size((h, w), layer.kernel, layer.stride, layer.padding,
                                layer.dilation, layer.ceil_mode)
    return counted_taps((h, w), out_hw, layer.kernel, layer.stride, layer.padding,
                        layer.dilation, layer.count_include_pad)


def avgpool(layer: QAvgPool, x: Array) -> Array:
    xp, taps, out_hw = _pool_setup(layer, x, 0)
    total = np.zeros((x.shape[0], *out_hw, x.shape[3]), np.int64)
    for rows, cols in taps:
        total += xp[:, rows, cols, :]
    count = avgpool_counts(layer, x.shape[1], x.shape[2])
    return divide_round_half_up(total, count[None, :, :, None])


def run_layer(layer: QLayer, tensors: Mapping[str, QTensor], *inputs: Array) -> Array:
    """One integer layer on int64 batches (N, H, W, C)."""
    if isinstance(layer, QConv):
        return requantize(conv_accumulate(layer, inputs[0]), layer.shift, layer.lo, layer.hi)
    if isinstance(layer, QDense):
        return requantize(dense_accumulate(layer, inputs[0]), layer.shift, layer.lo, layer.hi)
    if isinstance(layer, QMaxPool):
        return maxpool(layer, inputs[0])
    if isinstance(layer, QAvgPool):
        return avgpool(layer, inputs[0])
    if isinstance(layer, QGlobalAvgPool):
        x = inputs[0]
        total = x.sum(axis=(1, 2), keepdims=True, dtype=np.int64)
        return divide_round_half_up(total, x.shape[1] * x.shape[2])
    if isinstance(layer, QGlobalMaxPool):
        return inputs[0].max(axis=(1, 2), keepdims=True)
    if isinstance(layer, QAdd):
        a, b = inputs
        total = np.left_shift(a, layer.align[0]) + np.left_shift(b, layer.align[1])
        return requantize(total, layer.shift, layer.lo, layer.hi)
    if isinstance(layer, QConcat):
        parts = [requantize(x, s, layer.lo, layer.hi) for x, s in zip(inputs, layer.shifts,
                                                                       strict=True)]
        return np.concatenate(parts, axis=3)
    if isinstance(layer, QClamp):
        return requantize(inputs[0], layer.shift, layer.lo, layer.hi)
    if isinstance(layer, QPad):
        return pad_hw(inputs[0], layer.padding, layer.value)
    raise AccelgenError(f"the golden model has no rule for {layer.op}")


# --------------------------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------------------------


def quantize_inputs(qg: QuantizedGraph, feeds: Mapping[str, Array] | Array) -> dict[str, Array]:
    """Model-layout real inputs (or a QDQ model's integer codes) -> integer IR batches."""
    if not isinstance(feeds, Mapping):
        if len(qg.inputs) != 1:
            raise UsageError(f"the model has {len(qg.inputs)} inputs; pass them by name")
        feeds = {qg.inputs[0].onnx_name: feeds}
    out = {}
    for qi in qg.inputs:
        if qi.onnx_name not in feeds:
            raise UsageError(f"no value for input {qi.onnx_name!r}")
        try:
            real = qi.to_real_ir(feeds[qi.onnx_name])
        except AccelgenError as err:
            raise UsageError(str(err)) from None
        out[qi.tensor] = qg.tensors[qi.tensor].quantize(real)
    return out


def run_ir(
    qg: QuantizedGraph, inputs: Mapping[str, Array], *, keep: str = "outputs"
) -> dict[str, Array]:
    """Integer IR inputs -> integer tensors (the outputs, or every tensor with keep="all")."""
    values: dict[str, Array] = {}
    for qi in qg.inputs:
        x = np.asarray(inputs[qi.tensor], dtype=np.int64)
        t = qg.tensors[qi.tensor]
        if x.size and (x.min() < t.qmin or x.max() > t.qmax):
            raise UsageError(f"input codes for {qi.tensor!r} exceed {t.describe()}")
        values[qi.tensor] = x
    wanted = {qo.tensor for qo in qg.outputs}
    uses: dict[str, int] = {}
    for layer in qg.layers:
        for name in layer.inputs:
            uses[name] = uses.get(name, 0) + 1
    for layer in qg.layers:
        values[layer.output] = run_layer(layer, qg.tensors, *(values[t] for t in layer.inputs))
        if keep != "all":
            for name in layer.inputs:
                uses[name] -= 1
                if uses[name] == 0 and name not in wanted:
                    del values[name]
    return values if keep == "all" else {t: values[t] for t in wanted}


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def real_output(qg: QuantizedGraph, qo, codes: Array) -> Array:
    """Integer codes of output `qo` in model order, (N, K) -> its real values in the model's
    shape (dequantized; the host's softmax applied where the model has one)."""
    real = qg.tensors[qo.tensor].dequantize(np.asarray(codes)).reshape((-1, *qo.onnx_shape))
    return _softmax(real) if qo.host_softmax else real


def run(qg: QuantizedGraph, feeds: Mapping[str, Array] | Array) -> dict[str, Array]:
    """Model-layout inputs -> model-layout real outputs (dequantized; host softmax applied)."""
    values = run_ir(qg, quantize_inputs(qg, feeds))
    out = {}
    for qo in qg.outputs:
        q = values[qo.tensor]
        out[qo.onnx_name] = real_output(qg, qo, q.reshape(q.shape[0], -1)[:, qo.layout.reshape(-1)])
    return out


def logits(qg: QuantizedGraph, feeds: Mapping[str, Array] | Array) -> Array:
    """The integer codes of the first output, (N, K) in the model's order (argmax-ready)."""
    values = run_ir(qg, quantize_inputs(qg, feeds))
    qo = qg.outputs[0]
    q = values[qo.tensor]
    return q.reshape(q.shape[0], -1)[:, qo.layout.reshape(-1)]
