"""The multiply-accumulate stage: window beats in, requantized pixel beats out.

Two modes, matching the window orders of `SlidingWindow`:

* ``"dense"`` (full, pointwise convolutions; dense layers as a convolution over the whole
  input): a window beat carries ``simd`` input channels of one tap; each cycle ``pe x simd``
  products are added into ``pe`` accumulators (``pe`` output channels). A window of
  ``kh * kw * C_in / simd`` beats is one *fold*; a pixel takes ``C_out / pe`` folds.
* ``"depthwise"``: a window beat carries ``lanes`` channels of one tap; output channel ``o``
  reads input channel ``o // multiplier``, so ``pe = lanes * multiplier``; a fold is the
  ``kh * kw`` taps of one channel group; a pixel takes ``C / lanes`` folds.

Pipeline: the accepted beat and its weight-ROM word (read in step) meet one cycle later; the
products are registered; the next cycle adds them into the accumulators. At a fold's end the
accumulators are copied to a *shadow* register that the requantizer drains, ``ol`` channels
per cycle (bias, shift with round half up, clamp), as output beats of ``ol`` lanes. The stage
accepts a fold-ending beat only when the shadow is free and no other fold end is in flight,
so nothing is ever dropped.

Cycle model: a fold costs ``max(beats, pe / ol + FOLD_DRAIN)`` cycles when the neighbours keep
up (`expected_cycles`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accelgen.cores.mul import ProductArray
from accelgen.cores.requant import rounded_bias, select_width, shift_clamp, signed_bits
from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.memory.linebuffer import window_layout
from accelgen.memory.spram import SinglePortRam

FOLD_DRAIN = 3  # cycles between a fold's last beat entering and its shadow being loaded
LOADABLE_STYLE = "huge"  # the ram_style of weights in SPRAM: filled at run time


def weight_write_signature(depth: int, word_bits: int) -> wiring.Signature:
    """One word written per cycle with ``en`` (the loader's side drives every member)."""
    return wiring.Signature({
        "addr": Out(range(max(depth, 2))),
        "data": Out(word_bits),
        "en": Out(1),
    })


@dataclass(frozen=True)
class Requant:
    """Per-output-channel requantization: bias (accumulator scale), shift, clamp."""

    bias: np.ndarray
    shift: tuple[int, ...]
    lo: int
    hi: int

    @property
    def shifts(self) -> list[int]:
        return sorted(set(self.shift))

    def select(self) -> list[int]:
        index = {s: k for k, s in enumerate(self.shifts)}
        return [index[s] for s in self.shift]


def sum_range(weight: np.ndarray, fmt: Format) -> tuple[int, int]:
    """The least and greatest possible ``sum(x * w)`` over all outputs (no bias)."""
    qmin = -(1 << (fmt.bits - 1)) if fmt.signed else 0
    qmax = (1 << (fmt.bits - 1)) - 1 if fmt.signed else (1 << fmt.bits) - 1
    w = weight.reshape(weight.shape[0], -1).astype(np.int64)
    hi = int(np.where(w > 0, w * qmax, w * qmin).sum(axis=1).max(initial=0))
    lo = int(np.where(w > 0, w * qmin, w * qmax).sum(axis=1).min(initial=0))
    return lo, hi


def sum_bits(weight: np.ndarray, fmt: Format) -> int:
    """Two's complement width of every possible ``sum(x * w)`` of one output (no bias)."""
    lo, hi = sum_range(weight, fmt)
    return max(2, max(hi.bit_length(), (-lo - 1).bit_length()) + 1)


class ConvStage(wiring.Component):
    """Multiply-accumulate + requantize (see the module docstring)."""

    def __init__(
        self,
        *,
        mode: str,
        in_fmt: Format,
        out_fmt: Format,
        weight: np.ndarray,
        w_bits: int,
        acc_bits: int,
        requant: Requant,
        pe: int,
        folds_per_pixel: int,
        pixels: int,
        weight_style: str = "block",
        param_style: str = "logic",
        dsp_products: int = 0,
        family: str | None = None,
    ) -> None:
        if mode not in ("dense", "depthwise"):
            raise ShapeError(f"MAC stage mode {mode!r}")
        self.mode = mode
        self.weight_style = weight_style
        self.param_style = __import__("os").environ.get("PSTYLE", param_style)
        self.dsp_products, self.family = dsp_products, family
        self.in_fmt, self.out_fmt = in_fmt, out_fmt
        self.w_bits = w_bits
        self.requant = requant
        self.pe = pe
        self.simd = in_fmt.lanes
        self.ol = out_fmt.lanes
        self.pixels = pixels
        self.folds_per_pixel = folds_per_pixel
        c_out = weight.shape[0]
        if pe < 1 or c_out % pe:
            raise ShapeError(f"pe={pe!r} must divide the {c_out} output channels")
        if self.ol < 1 or pe % self.ol:
            raise ShapeError(f"{self.ol!r} output lanes must divide pe={pe}")
        if mode == "depthwise":
            if pe % in_fmt.lanes:
                raise ShapeError(
                    f"depthwise pe={pe} must be a multiple of the {in_fmt.lanes} input lanes"
                )
            self.multiplier = pe // in_fmt.lanes
            if weight.shape[3] != 1 or c_out != in_fmt.channels * self.multiplier:
                raise ShapeError(f"depthwise weight {weight.shape} for {in_fmt.channels} "
                                 f"channels x {self.multiplier}")
            if folds_per_pixel != in_fmt.channels // in_fmt.lanes:
                raise ShapeError("depthwise folds per pixel must be C / lanes")
        else:
            if weight.shape[3] != in_fmt.channels:
                raise ShapeError(f"weight {weight.shape} does not match {in_fmt.channels} "
                                 f"input channels")
            if folds_per_pixel != c_out // pe:
                raise ShapeError("dense folds per pixel must be C_out / pe")
        self.c_out = c_out
        self.kh, self.kw = int(weight.shape[1]), int(weight.shape[2])
        self.rom = self._rom_words(np.asarray(weight, np.int64))
        # the accumulators hold sum(x * w) without the bias (added when requantizing): their
        # width is the proved range of that sum (partial sums lie inside it too)
        self.sum_range = sum_range(np.asarray(weight, np.int64), in_fmt)
        self.sum_bits = sum_bits(np.asarray(weight, np.int64), in_fmt)
        self.acc_bits = acc_bits  # the shape description's width, bias included
        members = {
            "i": In(stream.Signature(window_layout(in_fmt))),
            "o": Out(out_fmt.signature),
        }
        if self.loadable:
            members["load"] = In(weight_write_signature(len(self.rom), self.word_bits))
        super().__init__(members)

    # -- weights loaded at run time (SPRAM cannot be initialised by the bitstream) -------------
    @property
    def loadable(self) -> bool:
        """Weights in single-port RAM that the host fills through ``load`` before inference."""
        return self.weight_style == LOADABLE_STYLE

    @property
    def n_products(self) -> int:
        return self.pe * self.simd if self.mode == "dense" else self.pe

    @property
    def word_bits(self) -> int:
        return self.n_products * self.w_bits

    def weight_bytes(self) -> bytes:
        """The weight words in address order, each little-endian in ceil(word_bits / 8) bytes,
        product k of a word at bits ``[k * w_bits, (k + 1) * w_bits)`` (two's complement)."""
        per_word = (self.word_bits + 7) // 8
        mask = (1 << self.w_bits) - 1
        out = bytearray()
        for word in self.rom:
            value = 0
            for k, v in enumerate(word):
                value |= (int(v) & mask) << (k * self.w_bits)
            out += value.to_bytes(per_word, "little")
        return bytes(out)

    # -- layout of the weight ROM: one word per accepted beat, in stream order ----------------
    def _rom_words(self, w: np.ndarray) -> list[list[int]]:
        words = []
        if self.mode == "dense":
            s = self.simd
            for nf in range(self.c_out // self.pe):
                for ky in range(self.kh):
                    for kx in range(self.kw):
                        for cf in range(self.in_fmt.channels // s):
                            block = w[nf * self.pe : (nf + 1) * self.pe, ky, kx,
                                      cf * s : (cf + 1) * s]
                            words.append([int(v) for v in block.reshape(-1)])  # [pe][simd]
        else:
            for cf in range(self.in_fmt.channels // self.in_fmt.lanes):
                for ky in range(self.kh):
                    for kx in range(self.kw):
                        block = w[cf * self.pe : (cf + 1) * self.pe, ky, kx, 0]
                        words.append([int(v) for v in block])
        return words

    # -- models --------------------------------------------------------------------------------
    @property
    def beats_per_fold(self) -> int:
        if self.mode == "dense":
            return self.kh * self.kw * self.in_fmt.channels // self.simd
        return self.kh * self.kw

    @property
    def multipliers(self) -> int:
        return self.pe * self.simd if self.mode == "dense" else self.pe

    def fold_cycles(self) -> int:
        return max(self.beats_per_fold, self.pe // self.ol + FOLD_DRAIN)

    def expected_cycles(self) -> int:
        return self.pixels * self.folds_per_pixel * self.fold_cycles()

    def macs(self) -> int:
        return self.pixels * self.folds_per_pixel * self.beats_per_fold * self.multipliers

    # -- hardware ------------------------------------------------------------------------------
    def param_words(self) -> list[list[dict]]:
        """The requantizer's table: per output beat (group of `ol` channels, in drain order),
        each channel's bias with the rounding term folded in, and its shift's index."""
        rq = self.requant
        selects = rq.select()
        return [[{"bias": rounded_bias(int(rq.bias[c]), rq.shift[c]), "sel": selects[c]}
                 for c in range(g * self.ol, (g + 1) * self.ol)]
                for g in range(self.c_out // self.ol)]

    def elaborate(self, platform) -> Module:
        m = Module()
        pe, simd, ol = self.pe, self.simd, self.ol
        n_products = pe * simd if self.mode == "dense" else pe
        wshape = signed(self.w_bits)
        acc_shape = signed(self.sum_bits)

        layout = data.ArrayLayout(wshape, n_products)
        waddr = Signal(range(len(self.rom)))
        if self.loadable:
            # single-port RAM (iCE40 SPRAM): the loader's writes and the MAC's reads share
            # one address; a write cycle leaves the read data unchanged
            m.submodules.weights = ram = SinglePortRam(len(self.rom), layout.size,
                                                       family=self.family)
            m.d.comb += [
                ram.addr.eq(Mux(self.load.en, self.load.addr, waddr)),
                ram.wdata.eq(self.load.data), ram.we.eq(self.load.en),
            ]
            weights_now = data.View(layout, ram.rdata)
        else:
            m.submodules.weights = rom = Memory(shape=layout, depth=len(self.rom),
                                                init=self.rom,
                                                attrs={"ram_style": self.weight_style})
            wport = rom.read_port()
            m.d.comb += wport.addr.eq(waddr)
            weights_now = wport.data

        beat = self.i.payload
        # stage A -> B: the accepted beat, registered; the ROM reads in step
        a_valid = Signal()
        a_x = Signal(data.ArrayLayout(self.in_fmt.shape, self.in_fmt.lanes))
        a_first, a_end, a_last = Signal(), Signal(), Signal()
        # stage B -> C: products
        b_valid = Signal()
        b_prod = Signal(data.ArrayLayout(signed(self.w_bits + self.in_fmt.bits + 1), n_products))
        b_first, b_end, b_last = Signal(), Signal(), Signal()

        acc = Signal(data.ArrayLayout(acc_shape, pe))
        # the finished fold, drained `ol` lanes at a time by shifting towards lane 0
        shadow = Signal(data.ArrayLayout(acc_shape, pe))
        shadow_full = Signal()
        shadow_last = Signal()

        end_in_flight = (a_valid & a_end) | (b_valid & b_end)
        accept_end = ~shadow_full & ~end_in_flight
        m.d.comb += self.i.ready.eq(~beat.end | accept_end)
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        with m.If(take):
            m.d.sync += waddr.eq(Mux(waddr == len(self.rom) - 1, 0, waddr + 1))
        m.d.sync += [a_valid.eq(take)]
        with m.If(take):
            m.d.sync += [a_x.eq(beat.data), a_first.eq(beat.first), a_end.eq(beat.end),
                         a_last.eq(beat.last)]

        # products (stage A registered inputs + ROM word), registered by the product array
        m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_end.eq(a_end),
                     b_last.eq(a_last)]
        w = weights_now
        if self.mode == "dense":
            pairs = [(a_x[s], w[p * simd + s]) for p in range(pe) for s in range(simd)]
        else:
            pairs = [(a_x[p // self.multiplier], w[p]) for p in range(pe)]
        m.submodules.products = products = ProductArray(
            [a for a, _ in pairs], [b for _, b in pairs],
            signed(self.w_bits + self.in_fmt.bits + 1), dsp=self.dsp_products,
            family=self.family)
        for k, product in enumerate(products.p):
            m.d.comb += b_prod[k].eq(product)

        # accumulate (stage C)
        steps = pe // ol
        move = Signal()  # the requantizer takes `ol` lanes of the shadow into the output register
        out_valid = Signal()
        m.d.comb += move.eq(shadow_full & (~out_valid | self.o.ready))
        for p in range(pe):
            if self.mode == "dense":
                total = b_prod[p * simd]
                for s in range(1, simd):
                    total = total + b_prod[p * simd + s]
            else:
                total = b_prod[p]
            nxt = Signal(acc_shape, name=f"acc_next{p}")
            m.d.comb += nxt.eq(Mux(b_first, 0, acc[p]) + total)
            with m.If(b_valid):
                m.d.sync += acc[p].eq(nxt)
            with m.If(b_valid & b_end):
                m.d.sync += shadow[p].eq(nxt)
            if p + ol < pe:
                with m.Elif(move):
                    m.d.sync += shadow[p].eq(shadow[p + ol])
        with m.If(b_valid & b_end):
            m.d.sync += [shadow_full.eq(1), shadow_last.eq(b_last)]

        # requantize `ol` lanes of the shadow per move into the output register; the table of
        # biases and shift indices is read one move ahead (a registered read: block RAM, or
        # LUTs and flip-flops)
        rq = self.requant
        words = self.param_words()
        biases = [e["bias"] for word in words for e in word]
        bias_bits = max(signed_bits(min(biases), max(biases)), 1)
        multi = len(rq.shifts) > 1
        fields = {"bias": signed(bias_bits)}
        if multi:
            fields["sel"] = select_width(rq.shifts)
        group_layout = data.ArrayLayout(data.StructLayout(fields), ol)
        init = [[{k: e[k] for k in fields} for e in word] for word in words]
        m.submodules.params = params = Memory(shape=group_layout, depth=len(words), init=init,
                                              attrs={"ram_style": self.param_style})
        pport = params.read_port()
        group = Signal(range(len(words)))
        group_next = Signal.like(group)
        step = Signal(range(steps))
        with m.If(move):
            m.d.comb += group_next.eq(Mux(group == len(words) - 1, 0, group + 1))
        with m.Else():
            m.d.comb += group_next.eq(group)
        m.d.sync += group.eq(group_next)
        m.d.comb += pport.addr.eq(group_next)
        lo_sum, hi_sum = self.sum_range
        out = Signal(self.o.payload.shape())
        m.d.comb += [self.o.payload.eq(out), self.o.valid.eq(out_valid)]
        with m.If(move):
            m.d.sync += [out_valid.eq(1), out.last.eq(shadow_last & (step == steps - 1))]
            for k in range(ol):
                entry = pport.data[k]
                u = Signal(signed(signed_bits(lo_sum + min(biases), hi_sum + max(biases))),
                           name=f"biased{k}")
                m.d.comb += u.eq(shadow[k] + entry.bias)
                m.d.sync += out.data[k].eq(shift_clamp(
                    u, rq.shifts, entry.sel if multi else None, rq.lo, rq.hi,
                    self.out_fmt.shape))
            with m.If(step == steps - 1):
                m.d.sync += [step.eq(0), shadow_full.eq(0)]
            with m.Else():
                m.d.sync += step.eq(step + 1)
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)
        return m
