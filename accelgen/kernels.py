"""Array helpers shared by the float reference and the golden model: sliding-window taps and
views, padding, depthwise convolution, and running batch slices on every core (numpy releases
the GIL in its loops).

Threads: the kernels split a batch over `WORKERS` threads themselves (`in_threads`), so BLAS must
not start threads of its own on top: on a loaded machine they fight, and a small matrix product
can take a hundred times longer. `serial_blas` keeps numpy's OpenBLAS single-threaded.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from accelgen.ir import Padding, Pair

WORKERS = max(1, min(8, os.cpu_count() or 1))

# Bytes of one working array of a kernel's inner loop: small enough that the few arrays a
# tap loop touches stay in the L2 cache.
CACHE_BYTES = 1 << 19

# Least output bytes per `in_threads` slice when the caller says how big its items are.
MIN_SLICE_BYTES = 1 << 21


# --------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------


class _ThreadRole(threading.local):
    """Per thread: is it one of the pool's workers (whose nested `in_threads` run inline)."""

    worker: bool = False


_ROLE = _ThreadRole()


def _mark_worker() -> None:
    _ROLE.worker = True


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The workers `in_threads` hands slices to, started on first use and kept."""
    return ThreadPoolExecutor(max(1, WORKERS - 1), thread_name_prefix="accelgen",
                              initializer=_mark_worker)


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def in_threads(fn: Callable[[int, int], None], n: int, item_bytes: int = 0) -> None:
    """Run ``fn(start, stop)`` over slices of a batch of `n` on every core; return when all are
    done (re-raising the first error).

    The slices are disjoint and cover ``range(n)``; `fn` may write only its own slice of any
    shared output. The calling thread and the pool's workers take slices as they come free
    (a few per core), so a core shared with another process does less of the work and a
    worker that is slow to wake does none. With `item_bytes` (the output bytes of one item),
    slices hold at least `MIN_SLICE_BYTES`: a small layer is not worth waking a thread for.
    Runs ``fn(0, n)`` inline when that leaves one slice, when there is one core, or when called
    from inside another `in_threads`.
    """
    pieces = min(n, 4 * WORKERS)
    if item_bytes:
        pieces = min(pieces, n * item_bytes // MIN_SLICE_BYTES)
    if pieces <= 1 or WORKERS <= 1 or _ROLE.worker:
        fn(0, n)
        return
    bounds = np.linspace(0, n, pieces + 1).astype(int)
    pending = iter([(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a])
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                piece = next(pending, None)
            if piece is None:
                return
            fn(*piece)

    futures = [_pool().submit(drain) for _ in range(min(WORKERS, pieces) - 1)]
    try:
        drain()
    finally:
        for f in futures:
            if not f.cancel():  # started: wait for its slices
                f.result()


# --------------------------------------------------------------------------------------------
# BLAS threads
# --------------------------------------------------------------------------------------------

_OPENBLAS_NAMES = [
    (f"{prefix}get_num_threads{suffix}", f"{prefix}set_num_threads{suffix}")
    for prefix in ("scipy_openblas_", "openblas_")
    for suffix in ("64_", "_64_", "")
]


@functools.cache
def _openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """``(get_num_threads, set_num_threads)`` of the OpenBLAS mapped into this process.

    Found through ``/proc/self/maps`` (numpy loads its BLAS privately, so the symbols are not
    global); None where that does not exist or numpy's BLAS is not OpenBLAS.
    """
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _OPENBLAS_NAMES:
            get = getattr(lib, get_name, None)
            set_ = getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.argtypes, get.restype = [], ctypes.c_int
                set_.argtypes, set_.restype = [ctypes.c_int], None
                return get, set_
    return None


class _SerialBlas:
    """Reference count of `serial_blas` holders and the thread count to restore."""

    lock = threading.Lock()
    holders = 0
    saved = 1


@contextmanager
def serial_blas() -> Iterator[None]:
    """Inside, numpy's OpenBLAS computes every product on the calling thread.

    OpenBLAS has one process-wide thread count: it is set to 1 by the first holder and restored
    by the last (nestable, thread-safe). A no-op when numpy's BLAS is not a locatable OpenBLAS;
    results are the same either way.
    """
    blas = _openblas()
    if blas is None:
        yield
        return
    get, set_ = blas
    with _SerialBlas.lock:
        if _SerialBlas.holders == 0:
            _SerialBlas.saved = get()
            set_(1)
        _SerialBlas.holders += 1
    try:
        yield
    finally:
        with _SerialBlas.lock:
            _SerialBlas.holders -= 1
            if _SerialBlas.holders == 0:
                set_(_SerialBlas.saved)


# --------------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------------


def chunk_items(per_item: int) -> int:
    """How many items of `per_item` bytes make a cache-sized chunk (at least one)."""
    return max(1, CACHE_BYTES // max(1, per_item))


def padded_buffer(k: int, hw: Pair, channels: int, padding: Padding, value: float | int,
                  dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A ``(k, H + top + bottom, W + left + right, C)`` array filled with `value`, and the view
    of its interior: copying images into the interior pads them, as the border is never
    written. Lets a kernel pad chunk by chunk in the cache instead of copying a whole batch.
    """
    (h, w), (top, left, bottom, right) = hw, padding
    buf = np.full((k, h + top + bottom, w + left + right, channels), value, dtype)
    return buf, buf[:, top : top + h, left : left + w]


def depthwise(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, kernel: Pair, stride: Pair,
    dilation: Pair, out_hw: Pair, padding: Padding = (0, 0, 0, 0), pad_value: float | int = 0,
    epilogue: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """Depthwise convolution of an (N, H, W, C) batch, padded by `padding` with `pad_value`.

    `weight` is (C_out, kh, kw, 1) with C_out = C * multiplier (output channel o reads input
    channel o // multiplier). Returns a contiguous (N, OH, OW, C_out) array of dtype
    ``result_type(x, weight)``: ``bias + sum over taps of x * w``, exact for integer dtypes;
    `epilogue`, if given, is then applied in place to each chunk of it (an activation).

    Works on output rows flattened to ``OW * C_out`` values (channels fastest): each kernel
    column j sees the input as rows of that length — for a unit column stride a contiguous run
    of the padded row, otherwise its strided columns gathered once — and one `einsum`
    multiply-accumulates all taps over those long contiguous rows, whatever the channel count or
    width. Padding, gathering and the products run chunk by chunk in the cache; batch slices
    on all cores.
    """
    n, h, w, c = x.shape
    c_out = weight.shape[0]
    m = c_out // c
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, left, bottom, right = padding
    hp, wp = h + top + bottom, w + left + right
    oh, ow = out_hw
    dtype = np.result_type(x, weight)
    row = ow * c_out
    # w_rows[i, j]: the tap's weights repeated for every output column
    w_rows = np.tile(weight[:, :, :, 0].transpose(1, 2, 0), (1, 1, ow)).astype(dtype)
    b_row = np.tile(np.asarray(bias, dtype=dtype), ow)
    out = np.empty((n, oh, row), dtype)
    step = chunk_items(oh * row * out.itemsize)
    direct = m == 1 and not any(padding)  # the input is already the padded batch
    if direct:
        x = np.ascontiguousarray(x, dtype=dtype)

    def columns(src: np.ndarray) -> np.ndarray:
        """(k, hp, wp, C_out) -> (k, hp, kw, OW*C_out): kernel column j's view of each row."""
        flat = src.reshape(src.shape[0], hp, wp * c_out)
        offset = dw * c_out  # between kernel columns
        return sliding_window_view(flat, row, axis=2)[:, :, : (kw - 1) * offset + 1 : offset]

    def gathered(src: np.ndarray) -> np.ndarray:
        """(k, hp, wp, C_out) -> (k, hp, kw, OW, C_out): the input columns j*dw + t*sw."""
        win = sliding_window_view(src, (kw - 1) * dw + 1, axis=2)
        return win[:, :, : (ow - 1) * sw + 1 : sw, :, ::dw].transpose(0, 1, 4, 2, 3)

    def tap_rows(cols: np.ndarray) -> np.ndarray:
        """(k, hp, kw, row) -> (k, OH, kh, kw, row): what output row y reads at tap (i, j)."""
        win = sliding_window_view(cols, (kh - 1) * dh + 1, axis=1)
        return win[:, : (oh - 1) * sh + 1 : sh, :, :, ::dh].transpose(0, 1, 4, 2, 3)

    def work(start: int, stop: int) -> None:
        k = min(step, stop - start)
        if direct:
            src = x  # chunk [a, b) is src[a:b]
        else:  # chunk [a, b) is padded into src[:b - a]
            src, inner = padded_buffer(k, (h, w), c_out, padding, pad_value, dtype)
        if sw == 1:
            taps = tap_rows(columns(src))
        else:
            gather = np.empty((k, hp, kw, ow, c_out), dtype)
            strided = gathered(src)
            taps = tap_rows(gather.reshape(k, hp, kw, row))
        for a in range(start, stop, step):
            b = min(a + step, stop)
            at = a if direct else 0
            if not direct:
                inner[: b - a] = x[a:b] if m == 1 else np.repeat(x[a:b], m, axis=3)
            if sw == 1:
                t = taps[at : at + b - a]
            else:
                np.copyto(gather[: b - a], strided[at : at + b - a])
                t = taps[: b - a]
            o = out[a:b]
            np.einsum("nyijr,ijr->nyr", t, w_rows, out=o, optimize=False)
            o += b_row
            if epilogue is not None:
                epilogue(o)

    in_threads(work, n, oh * row * out.itemsize)
    return out.reshape(n, oh, ow, c_out)


def conv_windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair,
                 out_hw: Pair) -> np.ndarray:
    """The read-only (N, OH, OW, kh, kw, C) view of every output position's input window.

    ``view[n, y, x, i, j, c] == xp[n, y*sh + i*dh, x*sw + j*dw, c]`` for a padded (N, H, W, C)
    batch; reshaping a slice to ``(-1, kh*kw*C)`` gives im2col columns in weight order.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = out_hw
    win = sliding_window_view(
        xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    win = win[:, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, :, ::dh, ::dw]
    return win.transpose(0, 1, 2, 4, 5, 3)


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
