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
products are registered (DSP blocks, a block shared with another stage, or LUT multipliers);
the next cycle adds them into the accumulators. A cycle after a fold's last product (`fin`)
the requantizer takes ``ol`` sums at a time — the first straight from the accumulators, the
fold's other lanes from a shift register they are copied into — through two register stages:
the bias (rounding term folded in: `accelgen.cores.requant.rounded_bias`) is added, then the
channel's shift is selected with its saturation flags, into a two-entry output queue; the
clamp is applied on the way out. The per-channel biases (block RAM or LUTs, as the plan
places them) and shift indices are read one step ahead from a registered address. The stage
accepts a fold-ending beat only when no other fold is in flight or still being requantized
and the queue will have room, so nothing is ever dropped; the registered `blocked` flag keeps
``i.ready`` one gate from registers.

Cycle model: a fold costs ``max(beats, pe / ol + FOLD_DRAIN)`` cycles when the neighbours keep
up (`expected_cycles`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from accelgen.cores.mul import ProductArray, shared_signature
from accelgen.cores.requant import (
    clamp_select,
    rounded_bias,
    select_width,
    shift_select,
    signed_bits,
)
from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.memory.linebuffer import window_layout
from accelgen.memory.rom import BlockRom
from accelgen.memory.spram import SinglePortRam

FOLD_DRAIN = 3  # a fold of `steps` output beats ends at most every steps + FOLD_DRAIN cycles
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
        shared_product: bool = False,
        family: str | None = None,
    ) -> None:
        if mode not in ("dense", "depthwise"):
            raise ShapeError(f"MAC stage mode {mode!r}")
        self.mode = mode
        self.weight_style = weight_style
        self.param_style = param_style
        self.dsp_products, self.family = dsp_products, family
        self.shared_product = shared_product
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
        if shared_product:
            if dsp_products >= self.n_products:
                raise ShapeError(f"no product left for a shared DSP block: {self.n_products} "
                                 f"products, {dsp_products} on the stage's own blocks")
            members["mul"] = Out(shared_signature(
                self.in_fmt.shape, signed(w_bits), self.product_shape))
        super().__init__(members)

    @property
    def product_shape(self):
        return signed(self.w_bits + self.in_fmt.bits + 1)

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

    @property
    def bias_bits(self) -> int:
        """Width of the table's biases (rounding included)."""
        biases = [e["bias"] for word in self.param_words() for e in word]
        return signed_bits(min(biases), max(biases))

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
        elif self.weight_style == "block":
            # block RAM: on iCE40 the primitives themselves (`BlockRom`)
            m.submodules.weights = brom = BlockRom(shape=layout, depth=len(self.rom),
                                                   init=self.rom, family=self.family)
            m.d.comb += brom.addr.eq(waddr)
            weights_now = brom.data
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

        # a fold's last beat waits while another fold end is in flight, a fold is still being
        # requantized or the output queue is full (`blocked`, registered from its next state,
        # so ready is one gate from registers)
        blocked = Signal()
        m.d.comb += self.i.ready.eq(~beat.end | ~blocked)
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
            [a for a, _ in pairs], [b for _, b in pairs], self.product_shape,
            dsp=self.dsp_products, family=self.family, shared=self.shared_product)
        if self.shared_product:
            m.d.comb += [self.mul.a.eq(products.ext_a), self.mul.b.eq(products.ext_b),
                         products.ext_p.eq(self.mul.p)]
        for k, product in enumerate(products.p):
            m.d.comb += b_prod[k].eq(product)

        # accumulate (stage C); a cycle after a fold's last product (`fin`) its sums are final
        steps = pe // ol
        fin, fin_last = Signal(), Signal()
        m.d.sync += [fin.eq(b_valid & b_end), fin_last.eq(b_last)]
        for p in range(pe):
            if self.mode == "dense":
                total = b_prod[p * simd]
                for s in range(1, simd):
                    total = total + b_prod[p * simd + s]
            else:
                total = b_prod[p]
            with m.If(b_valid):
                m.d.sync += acc[p].eq(Mux(b_first, total, acc[p] + total))

        # requantize `ol` sums at a time, in two register stages: `load` adds the biases into
        # `u` — at `fin` straight from the accumulators (the next fold's first product
        # overwrites them a cycle later), the fold's other lanes later from `rest` — then a
        # push shifts and flags them into a two-entry output queue
        entry = data.StructLayout({
            "lanes": data.ArrayLayout(data.StructLayout(
                {"t": signed(signed_bits(self.requant.lo, self.requant.hi)), "ovf": 1,
                 "sign": 1}), ol),
            "last": 1,
        })
        q0, q1 = Signal(entry), Signal(entry)
        q0_valid, q1_valid = Signal(), Signal()
        u_valid, u_last = Signal(), Signal()
        pop, push, load = Signal(), Signal(), Signal()
        new = Signal(entry)
        m.d.comb += [
            pop.eq(q0_valid & self.o.ready),
            push.eq(u_valid & (~q1_valid | pop)),
            new.last.eq(u_last),
        ]
        sources = [acc[k] for k in range(ol)]
        pending_next = Const(0)
        if steps > 1:
            rest = Signal(data.ArrayLayout(acc_shape, pe - ol))
            rest_last = Signal()
            pending = Signal(range(steps))  # loads left of the current fold
            pending_next = Signal.like(pending)
            later = Signal()
            m.d.comb += [
                # `u` is free, or certain to move on this cycle (the queue has a free entry)
                later.eq((pending != 0) & (~u_valid | ~q1_valid)),
                load.eq(fin | later),
                pending_next.eq(Mux(fin, steps - 1, Mux(later, pending - 1, pending))),
            ]
            m.d.sync += pending.eq(pending_next)
            sources = [Mux(fin, acc[k], rest[k]) for k in range(ol)]
            with m.If(fin):
                m.d.sync += rest_last.eq(fin_last)
                for r in range(pe - ol):
                    m.d.sync += rest[r].eq(acc[ol + r])
            with m.Elif(later):
                for r in range(pe - 2 * ol):
                    m.d.sync += rest[r].eq(rest[r + ol])
            with m.If(load):
                m.d.sync += u_last.eq(Mux(fin, 0, rest_last & (pending == 1)))
        else:
            m.d.comb += load.eq(fin)
            with m.If(load):
                m.d.sync += u_last.eq(fin_last)
        u_valid_next = Signal()
        m.d.comb += u_valid_next.eq(load | (u_valid & ~push))
        m.d.sync += u_valid.eq(u_valid_next)
        q1_valid_next = Signal()
        m.d.comb += q1_valid_next.eq(Mux(pop, q1_valid & push, q1_valid | (push & q0_valid)))
        m.d.sync += q1_valid.eq(q1_valid_next)
        with m.If(pop):
            with m.If(q1_valid):
                m.d.sync += q0.eq(q1)
                with m.If(push):
                    m.d.sync += q1.eq(new)
            with m.Else():
                m.d.sync += q0_valid.eq(push)
                with m.If(push):
                    m.d.sync += q0.eq(new)
        with m.Elif(push):
            with m.If(q0_valid):
                m.d.sync += q1.eq(new)
            with m.Else():
                m.d.sync += [q0.eq(new), q0_valid.eq(1)]
        # a fold end may enter when, by its `fin`, `u` is sure to be free: no other fold in
        # flight or being loaded, and `u` empty or able to move on (the queue not full)
        m.d.sync += blocked.eq((take & beat.end) | (a_valid & a_end) | (b_valid & b_end)
                               | (pending_next != 0) | (u_valid_next & q1_valid_next))

        # the table of biases (block RAM or LUTs, as `param_style` says) and shift indices
        # (LUTs) is read one load ahead into the read ports' registers, from a registered
        # address: a load only enables them
        rq = self.requant
        words = self.param_words()
        biases = [e["bias"] for word in words for e in word]
        bias_bits = self.bias_bits
        multi = len(rq.shifts) > 1
        ahead = Signal(range(len(words)))  # the group after the one in the ports' registers
        primed = Signal()  # the first group is in the ports' registers
        fetch = load | ~primed
        with m.If(fetch):
            m.d.sync += [primed.eq(1), ahead.eq(Mux(ahead == len(words) - 1, 0, ahead + 1))]
        bias_layout = data.ArrayLayout(signed(bias_bits), ol)
        bias_init = [[e["bias"] for e in word] for word in words]
        bias_port: BlockRom | ReadPort
        if self.param_style == "block":
            m.submodules.biases = bias_port = BlockRom(shape=bias_layout, depth=len(words),
                                                       init=bias_init, family=self.family)
        else:
            m.submodules.biases = bias_mem = Memory(shape=bias_layout, depth=len(words),
                                                    init=bias_init,
                                                    attrs={"ram_style": self.param_style})
            bias_port = bias_mem.read_port()
        m.d.comb += [bias_port.addr.eq(ahead), bias_port.en.eq(fetch)]
        sel_port = None
        if multi:
            m.submodules.selects = sel_mem = Memory(
                shape=data.ArrayLayout(select_width(rq.shifts), ol), depth=len(words),
                init=[[e["sel"] for e in word] for word in words], attrs={"ram_style": "logic"})
            sel_port = sel_mem.read_port()
            m.d.comb += [sel_port.addr.eq(ahead), sel_port.en.eq(fetch)]
            sel_reg = Signal.like(sel_port.data)  # travels with `u`
            with m.If(load):
                m.d.sync += sel_reg.eq(sel_port.data)
        lo_sum, hi_sum = self.sum_range
        # a queue entry holds the selected shift and its saturation flags; the clamp is applied
        # on the way out (no constant-selecting logic behind the registers' enables)
        for k in range(ol):
            u = Signal(signed(signed_bits(lo_sum + min(biases), hi_sum + max(biases))),
                       name=f"biased{k}")
            with m.If(load):
                m.d.sync += u.eq(sources[k] + bias_port.data[k])
            t, ovf, sign = shift_select(u, rq.shifts, None if sel_port is None
                                        else sel_reg[k], rq.lo, rq.hi)
            m.d.comb += [new.lanes[k].t.eq(t), new.lanes[k].ovf.eq(ovf),
                         new.lanes[k].sign.eq(sign)]
            lane = q0.lanes[k]
            m.d.comb += self.o.payload.data[k].eq(clamp_select(
                lane.t, lane.ovf, lane.sign, rq.lo, rq.hi, self.out_fmt.shape))
        m.d.comb += [self.o.valid.eq(q0_valid), self.o.payload.last.eq(q0.last)]
        return m
