"""Array helpers shared by the float reference and the golden model: sliding-window taps,
padding, and running batch slices on every core (numpy releases the GIL in its loops)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import numpy as np

from accelgen.ir import Padding, Pair

WORKERS = max(1, min(8, os.cpu_count() or 1))


def in_threads(fn: Callable[[int, int], None], n: int) -> None:
    """Run ``fn(start, stop)`` over slices of a batch of `n`, one slice per core."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(WORKERS, n)
    if workers <= 1:
        fn(0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
        for f in futures:
            f.result()


def depthwise(
    xp: np.ndarray, weight: np.ndarray, bias: np.ndarray, kernel: Pair, stride: Pair,
    dilation: Pair, out_hw: Pair,
) -> np.ndarray:
    """Depthwise convolution of a padded (N, H, W, C) batch by per-tap multiply-accumulate.

    `weight` is (C_out, kh, kw, 1) with C_out = C * multiplier (output channel o reads input
    channel o // multiplier). Works channel-major — every channel's planes contiguous — with
    channel blocks on all cores; exact for integer dtypes. Returns an (N, OH, OW, C_out) view.
    """
    c_out = weight.shape[0]
    m = c_out // xp.shape[3]
    xt = np.ascontiguousarray(xp.transpose(3, 0, 1, 2))
    if m > 1:
        xt = np.repeat(xt, m, axis=0)
    taps = list(window_taps(kernel, stride, dilation, *out_hw))
    out = np.empty((c_out, xp.shape[0], *out_hw), dtype=np.result_type(xp, weight))
    kw = kernel[1]

    def work(c0: int, c1: int) -> None:
        o = out[c0:c1]
        o[...] = bias[c0:c1, None, None, None]
        buf = np.empty_like(o)
        for t, (rows, cols) in enumerate(taps):
            w_t = weight[c0:c1, t // kw, t % kw, 0, None, None, None]
            np.multiply(xt[c0:c1, :, rows, cols], w_t, out=buf)
            o += buf

    in_threads(work, c_out)
    return out.transpose(1, 2, 3, 0)


def window_taps(
    kernel: Pair, stride: Pair, dilation: Pair, oh: int, ow: int
) -> Iterator[tuple[slice, slice]]:
    """For each kernel tap (row-major), the (row, column) slices of the padded input it reads."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    for i in range(kh):
        for j in range(kw):
            yield (
                slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
                slice(j * dw, j * dw + (ow - 1) * sw + 1, sw),
            )


def pad_hw(x: np.ndarray, padding: Padding, value: float | int,
           extra: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Pad axes 1 and 2 of an (N, H, W, C) batch; `extra` adds rows/columns at the far end."""
    top, left, bottom, right = padding
    if not (top or left or bottom or right or extra[0] or extra[1]):
        return x
    return np.pad(
        x,
        ((0, 0), (top, bottom + extra[0]), (left, right + extra[1]), (0, 0)),
        constant_values=value,
    )


def ceil_extra(out_hw: Pair, hw: Pair, kernel: Pair, stride: Pair, padding: Padding,
               dilation: Pair) -> tuple[int, int]:
    """Rows/columns a ceil-mode window reads past the padded input."""
    top, left, bottom, right = padding
    need_h = (out_hw[0] - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (out_hw[1] - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    return max(0, need_h - (hw[0] + top + bottom)), max(0, need_w - (hw[1] + left + right))


def counted_taps(hw: Pair, out_hw: Pair, kernel: Pair, stride: Pair, padding: Padding,
                 dilation: Pair, count_include_pad: bool) -> np.ndarray:
    """Taps of each average-pool window that count towards its divisor, shape (OH, OW).

    Padding counts when `count_include_pad`; the part of a ceil-mode window past the padded
    input never counts (ONNX semantics).
    """
    h, w = hw
    extra = ceil_extra(out_hw, hw, kernel, stride, padding, dilation)
    top, left, bottom, right = padding
    counted = np.zeros((h + top + bottom + extra[0], w + left + right + extra[1]), np.int64)
    if count_include_pad:
        counted[: h + top + bottom, : w + left + right] = 1
    else:
        counted[top : top + h, left : left + w] = 1
    count = np.zeros(out_hw, np.int64)
    for rows, cols in window_taps(kernel, stride, dilation, *out_hw):
        count += counted[rows, cols]
    return count
