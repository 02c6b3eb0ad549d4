"""Convolution and dense stages (line buffer + MAC + requantize) bit-exact against the golden
model, over random configurations, with seeded random backpressure; and their cycle model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelgen import golden
from accelgen.cores.conv import LOADABLE_STYLE
from accelgen.cores.layers import ConvLayer
from accelgen.errors import ShapeError
from accelgen.ir import window_output_size
from accelgen.quantized import QConv, QDense, QTensor, accumulator_bounds, bits_for_range
from tests.hw import beats_to_images, pixel_beats, run


def random_layer(rng: np.random.Generator, kind: str, h: int, w: int, c_in: int, c_out: int,
                 k: tuple[int, int], stride: tuple[int, int], pad: tuple, bits_in: int,
                 signed_in: bool, w_bits: int, bits_out: int, signed_out: bool,
                 activation: str) -> tuple[QConv | QDense, QTensor, QTensor]:
    x = QTensor("x", (h, w, c_in), bits_in, signed_in, 0)
    wmax = (1 << (w_bits - 1)) - 1
    if kind == "dense":
        weight = rng.integers(-wmax - 1, wmax + 1, size=(c_out, h * w * c_in))
        out_shape = (1, 1, c_out)
    else:
        per_group = 1 if kind == "depthwise" else c_in
        weight = rng.integers(-wmax - 1, wmax + 1, size=(c_out, k[0], k[1], per_group))
        oh, ow = window_output_size((h, w), k, stride, pad, (1, 1))
        out_shape = (oh, ow, c_out)
    y = QTensor("y", out_shape, bits_out, signed_out, 0)
    bias = rng.integers(-(1 << (bits_in + w_bits)), 1 << (bits_in + w_bits), size=c_out)
    shift = tuple(int(s) for s in rng.integers(-1, bits_in + w_bits // 2 + 2, size=c_out))
    lo, hi = y.qmin, y.qmax
    if activation == "relu":
        lo = max(lo, 0)
    elif activation == "clip":
        lo, hi = max(lo, y.qmin // 2), min(hi, y.qmax // 2 + 1)
    lo_acc, hi_acc = accumulator_bounds(weight, bias, x)
    acc_bits = bits_for_range(int(lo_acc.min()), int(hi_acc.max()))
    common = dict(activation="none" if activation == "none" else "relu" if activation == "relu"
                  else "clip", lo=lo, hi=hi, weight=weight, bias=bias,
                  w_frac=(0,) * c_out, shift=shift, w_bits=w_bits, acc_bits=acc_bits)
    if kind == "dense":
        layer = QDense("fc", ("x",), "y", **common)
    else:
        layer = QConv("conv", ("x",), "y", stride=stride, padding=pad,
                      groups=c_in if kind == "depthwise" else 1, **common)
    return layer, x, y


def check_layer(layer, x: QTensor, y: QTensor, pe: int, simd: int, ol: int, images: int,
                seed: int, idle: float = 0.3, busy: float = 0.3,
                loadable: bool = False) -> tuple[ConvLayer, list]:
    rng = np.random.default_rng(seed)
    lo, hi = x.qmin, x.qmax
    images_in = rng.integers(lo, hi + 1, size=(images, *x.shape))
    want = golden.run_layer(layer, {"x": x, "y": y}, images_in)
    dut = ConvLayer(layer, x, y, pe=pe, simd=simd, ol=ol,
                    weight_style=LOADABLE_STYLE if loadable else "block")
    assert dut.mac.loadable == loadable
    beats = pixel_beats(images_in, dut.in_fmt.lanes)
    n_out = images * y.size // ol
    setup = None
    if loadable:  # the RAM starts empty: write every word, in a shuffled order, first
        per_word = (dut.mac.word_bits + 7) // 8
        image = dut.mac.weight_bytes()
        words = [int.from_bytes(image[a * per_word : (a + 1) * per_word], "little")
                 for a in range(len(dut.mac.rom))]
        order = rng.permutation(len(words))

        async def setup(ctx) -> None:
            for a in order:
                ctx.set(dut.load.addr, int(a))
                ctx.set(dut.load.data, words[a])
                ctx.set(dut.load.en, 1)
                await ctx.tick()
            ctx.set(dut.load.en, 0)

    got = run(dut, {"i": beats}, {"o": n_out}, seed=seed, idle=idle, busy=busy, setup=setup)
    hw = beats_to_images(got["o"], images, *y.shape)
    np.testing.assert_array_equal(hw, want)
    assert [b.last for b in got["o"]][-1] == 1
    return dut, got["_stamps"]["o"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["conv", "pointwise", "depthwise", "dense"]))
    c_in = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    mult = draw(st.integers(1, 2)) if kind == "depthwise" else 1
    c_out = c_in * mult if kind == "depthwise" else draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
    if kind == "pointwise" or kind == "dense":
        k, stride, pad = (1, 1), (1, 1), (0, 0, 0, 0)
    else:
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 3)))
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        pad = (draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[1] - 1)),
               draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[1] - 1)))
    h = draw(st.integers(max(1, k[0] - pad[0] - pad[2]), 5))
    w = draw(st.integers(max(1, k[1] - pad[1] - pad[3]), 5))
    pe = draw(st.sampled_from([d for d in _divisors(c_out) if d % mult == 0]))
    simd = draw(st.sampled_from(_divisors(c_in))) if kind != "depthwise" else pe // mult
    ol = draw(st.sampled_from(_divisors(pe)))
    return dict(kind=kind, c_in=c_in, c_out=c_out, k=k, stride=stride, pad=pad, h=h, w=w,
                pe=pe, simd=simd, ol=ol, bits_in=draw(st.integers(2, 16)),
                signed_in=draw(st.booleans()), w_bits=draw(st.integers(2, 16)),
                bits_out=draw(st.integers(2, 16)), signed_out=draw(st.booleans()),
                activation=draw(st.sampled_from(["none", "relu", "clip"])),
                loadable=draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(), seed=st.integers(0, 10_000))
def test_conv_layers_bit_exact(case: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer, x, y = random_layer(
        rng, case["kind"], case["h"], case["w"], case["c_in"], case["c_out"], case["k"],
        case["stride"], case["pad"], case["bits_in"], case["signed_in"], case["w_bits"],
        case["bits_out"], case["signed_out"], case["activation"])
    check_layer(layer, x, y, case["pe"], case["simd"], case["ol"], images=2, seed=seed,
                loadable=case["loadable"])


@pytest.mark.parametrize(("kind", "pe", "simd", "ol"), [
    ("conv", 4, 2, 2), ("pointwise", 4, 4, 4), ("depthwise", 4, 4, 1), ("dense", 2, 4, 1)])
def test_conv_cycle_model_within_5_percent(kind: str, pe: int, simd: int, ol: int) -> None:
    """No backpressure: the measured steady-state cycles per image match the model (5 %)."""
    rng = np.random.default_rng(7)
    c_in, c_out = 8, 8 if kind != "dense" else 4
    k = (3, 3) if kind in ("conv", "depthwise") else (1, 1)
    pad = (1, 1, 1, 1) if k == (3, 3) else (0, 0, 0, 0)
    layer, x, y = random_layer(rng, kind, 6, 6, c_in, c_out, k, (1, 1), pad, 8, False, 8, 8,
                               False, "relu")
    dut, stamps = check_layer(layer, x, y, pe, simd, ol, images=3, seed=1, idle=0.0, busy=0.0)
    per_image = y.size // ol
    steady = stamps[3 * per_image - 1] - stamps[2 * per_image - 1]
    model = dut.expected_cycles()
    assert abs(steady - model) <= 0.05 * model, (steady, model)


# a constructor that refuses its arguments leaves a half-built Elaboratable behind
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parallelism_rules_quote_the_bad_value() -> None:
    rng = np.random.default_rng(0)
    layer, x, y = random_layer(rng, "conv", 4, 4, 4, 6, (3, 3), (1, 1), (1, 1, 1, 1), 8, True,
                               8, 8, True, "none")
    with pytest.raises(ShapeError, match="pe=4"):
        ConvLayer(layer, x, y, pe=4, simd=2, ol=1)
    with pytest.raises(ShapeError, match="3 input lanes"):
        ConvLayer(layer, x, y, pe=2, simd=3, ol=1)
    with pytest.raises(ShapeError, match="4 output lanes"):
        ConvLayer(layer, x, y, pe=2, simd=2, ol=4)
