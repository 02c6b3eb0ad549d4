"""Pooling, residual add, standalone activation and arg-max stages, bit-exact against the golden
model over random configurations, with seeded random backpressure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelgen import golden
from accelgen.cores.layers import PoolLayer, fmt_of
from accelgen.cores.pool import AddStage, ArgMax, ClampStage, GlobalPoolStage
from accelgen.cores.streams import Format
from accelgen.ir import window_output_size
from accelgen.quantized import (
    QAdd,
    QAvgPool,
    QClamp,
    QGlobalAvgPool,
    QGlobalMaxPool,
    QMaxPool,
    QTensor,
)
from tests.hw import beats_to_images, pixel_beats, run

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _codes(rng: np.random.Generator, t: QTensor, n: int) -> np.ndarray:
    return rng.integers(t.qmin, t.qmax + 1, size=(n, *t.shape))


def _lanes(draw: st.DrawFn, channels: int) -> int:
    return draw(st.sampled_from([d for d in range(1, channels + 1) if channels % d == 0]))


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_window_pools_bit_exact(data: st.DataObject, seed: int) -> None:
    draw = data.draw
    mode = draw(st.sampled_from(["max", "avg"]))
    c = draw(st.sampled_from([1, 2, 3, 4, 6]))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, k[i % 2] - 1)) for i in range(4))
    ceil = draw(st.booleans())
    h = draw(st.integers(max(1, k[0] - pad[0] - pad[2]), 6))
    w = draw(st.integers(max(1, k[1] - pad[1] - pad[3]), 6))
    oh, ow = window_output_size((h, w), k, s, pad, (1, 1), ceil)
    if oh < 1 or ow < 1:
        return
    x = QTensor("x", (h, w, c), draw(st.integers(2, 12)), draw(st.booleans()), 0)
    y = QTensor("y", (oh, ow, c), x.bits, x.signed, 0)
    common = dict(kernel=k, stride=s, padding=pad, ceil_mode=ceil)
    if mode == "max":
        layer = QMaxPool("p", ("x",), "y", **common)
    else:
        layer = QAvgPool("p", ("x",), "y", count_include_pad=draw(st.booleans()), **common)
    rng = np.random.default_rng(seed)
    images = _codes(rng, x, 2)
    want = golden.run_layer(layer, {"x": x, "y": y}, images)
    dut = PoolLayer(layer, x, y, lanes=_lanes(draw, c))
    got = run(dut, {"i": pixel_beats(images, dut.in_fmt.lanes)},
              {"o": 2 * y.size // dut.in_fmt.lanes}, seed=seed)
    np.testing.assert_array_equal(beats_to_images(got["o"], 2, *y.shape), want)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_global_pools_bit_exact(data: st.DataObject, seed: int) -> None:
    draw = data.draw
    mode = draw(st.sampled_from(["max", "avg"]))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    c = draw(st.sampled_from([1, 2, 3, 4, 8]))
    x = QTensor("x", (h, w, c), draw(st.integers(2, 16)), draw(st.booleans()), 0)
    y = QTensor("y", (1, 1, c), x.bits, x.signed, 0)
    layer = (QGlobalMaxPool if mode == "max" else QGlobalAvgPool)("g", ("x",), "y")
    rng = np.random.default_rng(seed)
    images = _codes(rng, x, 3)
    want = golden.run_layer(layer, {"x": x, "y": y}, images)
    lanes = _lanes(draw, c)
    dut = GlobalPoolStage(mode=mode, fmt=fmt_of(x, lanes))
    got = run(dut, {"i": pixel_beats(images, lanes)}, {"o": 3 * c // lanes}, seed=seed)
    np.testing.assert_array_equal(beats_to_images(got["o"], 3, 1, 1, c), want)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_residual_add_bit_exact(data: st.DataObject, seed: int) -> None:
    draw = data.draw
    h, w, c = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 4]))
    a = QTensor("a", (h, w, c), draw(st.integers(2, 12)), draw(st.booleans()),
                draw(st.integers(-2, 6)))
    b = QTensor("b", (h, w, c), draw(st.integers(2, 12)), draw(st.booleans()),
                draw(st.integers(-2, 6)))
    y = QTensor("y", (h, w, c), draw(st.integers(2, 12)), draw(st.booleans()),
                draw(st.integers(-3, 8)))
    fmax = max(a.frac, b.frac)
    lo = max(y.qmin, 0) if draw(st.booleans()) else y.qmin
    layer = QAdd("add", ("a", "b"), "y", activation="relu" if lo == 0 else "none", lo=lo,
                 hi=y.qmax, align=(fmax - a.frac, fmax - b.frac), shift=fmax - y.frac)
    rng = np.random.default_rng(seed)
    xa, xb = _codes(rng, a, 2), _codes(rng, b, 2)
    want = golden.run_layer(layer, {"a": a, "b": b, "y": y}, xa, xb)
    lanes = _lanes(draw, c)
    dut = AddStage(a=fmt_of(a, lanes), b=fmt_of(b, lanes), out=fmt_of(y, lanes),
                   align=layer.align, shift=layer.shift, lo=layer.lo, hi=layer.hi)
    got = run(dut, {"a": pixel_beats(xa, lanes), "b": pixel_beats(xb, lanes)},
              {"o": 2 * y.size // lanes}, seed=seed)
    np.testing.assert_array_equal(beats_to_images(got["o"], 2, *y.shape), want)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_clamp_bit_exact(data: st.DataObject, seed: int) -> None:
    draw = data.draw
    c = draw(st.sampled_from([1, 2, 4]))
    x = QTensor("x", (2, 3, c), draw(st.integers(2, 12)), True, 0)
    y = QTensor("y", (2, 3, c), x.bits, False, 0)
    hi = draw(st.integers(0, y.qmax))
    layer = QClamp("act", ("x",), "y", activation="relu", lo=0, hi=hi, shift=0)
    rng = np.random.default_rng(seed)
    images = _codes(rng, x, 2)
    want = golden.run_layer(layer, {"x": x, "y": y}, images)
    lanes = _lanes(draw, c)
    dut = ClampStage(fmt=fmt_of(x, lanes), out=fmt_of(y, lanes), shift=0, lo=0, hi=hi)
    got = run(dut, {"i": pixel_beats(images, lanes)}, {"o": 2 * y.size // lanes}, seed=seed)
    np.testing.assert_array_equal(beats_to_images(got["o"], 2, *y.shape), want)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_argmax_first_largest(data: st.DataObject, seed: int) -> None:
    draw = data.draw
    classes = draw(st.sampled_from([2, 3, 4, 6, 10, 12]))
    t = QTensor("logits", (1, 1, classes), draw(st.integers(2, 10)), draw(st.booleans()), 0)
    rng = np.random.default_rng(seed)
    logits = _codes(rng, t, 4)
    logits[0, 0, 0, :] = t.qmin  # ties: the first one wins
    lanes = _lanes(draw, classes)
    dut = ArgMax(fmt_of(t, lanes))
    got = run(dut, {"i": pixel_beats(logits, lanes)},
              {"o": 4 * classes // lanes, "cls": 4}, seed=seed)
    assert [int(v) for v in got["cls"]] == list(logits.reshape(4, -1).argmax(axis=1))
    np.testing.assert_array_equal(beats_to_images(got["o"], 4, 1, 1, classes), logits)


@pytest.mark.parametrize(("mode", "h", "w", "c", "lanes", "bits", "signed"), [
    ("avg", 7, 7, 6, 1, 8, False), ("avg", 3, 4, 4, 2, 5, True), ("max", 5, 5, 4, 1, 8, True),
    ("avg", 2, 2, 1, 1, 8, False)])
def test_global_pool_cycle_model(mode: str, h: int, w: int, c: int, lanes: int, bits: int,
                                 signed: bool) -> None:
    """Without backpressure, the steady-state cycles per image are the model's exactly: the
    last pixel's beats one at a time through the division, the next image streaming in."""
    fmt = Format(h, w, c, bits, signed, lanes)
    dut = GlobalPoolStage(mode=mode, fmt=fmt)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 1 << (bits - 1), size=(4, h, w, c))
    got = run(dut, {"i": pixel_beats(images, lanes)}, {"o": 4 * c // lanes}, idle=0.0,
              busy=0.0)
    stamps, per_image = got["_stamps"]["o"], c // lanes
    assert stamps[4 * per_image - 1] - stamps[3 * per_image - 1] == dut.expected_cycles()
