"""Whole layers as pipeline stages: a line buffer feeding a datapath.

`ConvLayer` builds a `QConv` (full, pointwise or depthwise) or a `QDense` (a convolution whose
kernel is the whole input) from a `SlidingWindow` and a `ConvStage`, with the parallelism the
scheduler chose: ``pe`` output channels and ``simd`` input channels per cycle (dense), or ``pe``
channels per cycle (depthwise), and ``ol`` output lanes.
"""

from __future__ import annotations

import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accelgen.cores.conv import ConvStage, Requant
from accelgen.cores.pool import WindowPoolStage
from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.memory.linebuffer import SlidingWindow, WindowGeometry
from accelgen.quantized import QAvgPool, QConv, QDense, QMaxPool, QTensor


def fmt_of(t: QTensor, lanes: int) -> Format:
    h, w, c = t.shape
    return Format(h, w, c, t.bits, t.signed, lanes)


def conv_geometry(layer: QConv | QDense, x: QTensor, lanes: int,
                  compact: bool = False, slack_rows: int = 0,
                  partial: bool = False) -> WindowGeometry:
    """The window a layer reads. A pointwise convolution (1x1, stride 1, no padding) reads the
    image as H*W rows of one pixel — the same raster order — so its line buffer holds two
    pixels instead of two rows."""
    fmt = fmt_of(x, lanes)
    if isinstance(layer, QDense):
        return WindowGeometry(fmt, (fmt.height, fmt.width), (1, 1), (0, 0, 0, 0), False, compact,
                              slack_rows, partial)
    if layer.dilation != (1, 1):
        raise ShapeError(f"{layer.name!r}: dilated convolutions are not supported by the pipeline")
    if layer.kernel == (1, 1) and layer.stride == (1, 1) and not any(layer.padding):
        flat = Format(fmt.height * fmt.width, 1, fmt.channels, fmt.bits, fmt.signed, lanes)
        return WindowGeometry(flat, (1, 1), (1, 1), (0, 0, 0, 0), False, compact, slack_rows,
                              partial)
    return WindowGeometry(fmt, layer.kernel, layer.stride, layer.padding, False, compact,
                          slack_rows, partial)


def conv_weight(layer: QConv | QDense, x: QTensor) -> np.ndarray:
    """(C_out, kh, kw, C_in/groups) integer weights; a dense layer's kernel is its input."""
    if isinstance(layer, QDense):
        h, w, c = x.shape
        return layer.weight.reshape(layer.weight.shape[0], h, w, c)
    return layer.weight


def conv_mode(layer: QConv | QDense, x: QTensor) -> str:
    if isinstance(layer, QConv) and layer.groups > 1:
        if layer.groups != x.shape[2] or layer.weight.shape[3] != 1:
            raise ShapeError(
                f"{layer.name!r}: grouped convolution with {layer.groups} groups is not "
                f"supported by the pipeline (only depthwise, groups = channels)"
            )
        return "depthwise"
    return "dense"


class ConvLayer(wiring.Component):
    """Line buffer + MAC/requantize for one convolution or dense layer."""

    def __init__(self, layer: QConv | QDense, x: QTensor, y: QTensor, *, pe: int, simd: int,
                 ol: int, ring_style: str = "block", weight_style: str = "block",
                 param_style: str = "logic",
                 dsp_products: int = 0, shared_product: bool = False,
                 family: str | None = None, compact: bool = False,
                 slack_rows: int = 0, partial: bool = False) -> None:
        self.layer = layer
        self.mode = conv_mode(layer, x)
        c_out = layer.weight.shape[0]
        if pe < 1 or c_out % pe:
            raise ShapeError(f"{layer.name!r}: pe={pe!r} must divide the {c_out} output channels")
        if ol < 1 or pe % ol:
            raise ShapeError(f"{layer.name!r}: {ol!r} output lanes must divide pe={pe}")
        if self.mode == "depthwise":
            multiplier = layer.weight.shape[0] // x.shape[2]
            if pe % multiplier:
                raise ShapeError(f"{layer.name!r}: depthwise pe={pe} must be a multiple of the "
                                 f"depth multiplier {multiplier}")
            lanes = pe // multiplier
        else:
            lanes = simd
        if x.shape[2] % lanes:
            raise ShapeError(f"{layer.name!r}: {lanes} input lanes do not divide {x.shape[2]} "
                             f"channels")
        self.geometry = conv_geometry(layer, x, lanes, compact, slack_rows, partial)
        self.in_fmt = fmt_of(x, lanes)
        self.out_fmt = fmt_of(y, ol)
        oh, ow = self.geometry.out_hw
        if oh * ow != y.shape[0] * y.shape[1]:
            raise ShapeError(f"{layer.name!r}: window gives {oh}x{ow}, tensor is {y.shape}")
        folds = c_out // pe if self.mode == "dense" else x.shape[2] // lanes
        self.window = SlidingWindow(
            self.geometry, order="dense" if self.mode == "dense" else "channel",
            repeats=folds if self.mode == "dense" else 1, ram_style=ring_style,
        )
        self.mac = ConvStage(
            mode=self.mode, in_fmt=self.in_fmt, out_fmt=self.out_fmt,
            weight=conv_weight(layer, x), w_bits=layer.w_bits, acc_bits=layer.acc_bits,
            requant=Requant(layer.bias, layer.shift, layer.lo, layer.hi), pe=pe,
            folds_per_pixel=folds, pixels=oh * ow, weight_style=weight_style,
            param_style=param_style,
            dsp_products=dsp_products, shared_product=shared_product, family=family,
        )
        members = {"i": In(self.in_fmt.signature), "o": Out(self.out_fmt.signature)}
        if self.mac.loadable:
            members["load"] = In(self.mac.load.signature.flip())
        if shared_product:
            members["mul"] = Out(self.mac.mul.signature)
        super().__init__(members)

    def expected_cycles(self) -> float:
        """Steady-state cycles per image: the window's row protocol, each output position
        taking as long as its MAC folds."""
        mac = self.mac
        return self.window.expected_cycles(mac.folds_per_pixel * mac.fold_cycles())

    @property
    def multipliers(self) -> int:
        return self.mac.multipliers

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.window = self.window
        m.submodules.mac = self.mac
        wiring.connect(m, wiring.flipped(self.i), self.window.i)
        wiring.connect(m, self.window.o, self.mac.i)
        wiring.connect(m, self.mac.o, wiring.flipped(self.o))
        if self.mac.loadable:
            wiring.connect(m, wiring.flipped(self.load), self.mac.load)
        if self.mac.shared_product:
            wiring.connect(m, wiring.flipped(self.mul), self.mac.mul)
        return m


class PoolLayer(wiring.Component):
    """Line buffer + max/average datapath for one windowed `QMaxPool` / `QAvgPool`."""

    def __init__(self, layer: QMaxPool | QAvgPool, x: QTensor, y: QTensor, *, lanes: int,
                 ring_style: str = "block", compact: bool = False,
                 slack_rows: int = 0, partial: bool = False) -> None:
        if layer.dilation != (1, 1):
            raise ShapeError(f"{layer.name!r}: dilated pooling is not supported by the pipeline")
        self.layer = layer
        self.in_fmt = fmt_of(x, lanes)
        self.geometry = WindowGeometry(self.in_fmt, layer.kernel, layer.stride, layer.padding,
                                       layer.ceil_mode, compact, slack_rows, partial)
        if self.geometry.out_hw != y.shape[:2]:
            raise ShapeError(f"{layer.name!r}: window gives {self.geometry.out_hw}, tensor is "
                             f"{y.shape}")
        self.window = SlidingWindow(self.geometry, order="channel", ram_style=ring_style)
        self.pool = WindowPoolStage(
            mode="max" if isinstance(layer, QMaxPool) else "avg", fmt=self.in_fmt,
            hw=x.shape[:2], out_hw=y.shape[:2], kernel=layer.kernel, stride=layer.stride,
            padding=layer.padding,
            count_include_pad=getattr(layer, "count_include_pad", False),
        )
        self.out_fmt = self.pool.out_fmt
        super().__init__({"i": In(self.in_fmt.signature), "o": Out(self.out_fmt.signature)})

    def expected_cycles(self) -> float:
        return self.window.expected_cycles()

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.window = self.window
        m.submodules.pool = self.pool
        wiring.connect(m, wiring.flipped(self.i), self.window.i)
        wiring.connect(m, self.window.o, self.pool.i)
        wiring.connect(m, self.pool.o, wiring.flipped(self.o))
        return m
