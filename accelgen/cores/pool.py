"""Pooling stages, the residual add, standalone activations and the arg-max.

* `WindowPoolStage`: max or average over the channel-order window beats of a `SlidingWindow`.
  Max ignores padded taps; average sums the taps and divides by the window's counted taps with
  the golden division rule ``floor((2*sum + n) / (2*n))``, computed as
  ``(((2*sum + c) * m) >> k) - big_k`` with per-``n`` constants (`accelgen.golden.reciprocal`,
  one shared ``k``).
* `GlobalPoolStage`: mean or max over all pixels of each channel, streaming (running sums in
  block RAM, one word per channel group); the last pixel's beats come out as the result.
* `AddStage`: ``requantize((a << align_a) + (b << align_b))`` lane by lane.
* `ClampStage`: a standalone activation (requantize by a constant shift, clamp).
* `ArgMax`: passes the logits through and emits the index of the first largest one per image.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accelgen.cores.requant import requantize
from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.golden import reciprocal
from accelgen.ir import Padding, Pair
from accelgen.kernels import counted_taps
from accelgen.memory.linebuffer import window_layout


def _lowest(fmt: Format) -> int:
    return -(1 << (fmt.bits - 1)) if fmt.signed else 0


def _sum_bits(fmt: Format, n: int) -> int:
    """Signed width of a sum of `n` codes of `fmt`."""
    lo = _lowest(fmt) * n
    hi = ((1 << (fmt.bits - 1)) - 1 if fmt.signed else (1 << fmt.bits) - 1) * n
    return max(hi.bit_length(), (-lo - 1).bit_length() if lo < 0 else 0) + 1


class _Divider:
    """Constants of the average-pool division for a set of divisors, with one shared shift."""

    def __init__(self, divisors: list[int], sum_bits: int) -> None:
        self.divisors = sorted(set(divisors))
        raw = [reciprocal(n, sum_bits) for n in self.divisors]
        self.k = max(r[2] for r in raw)
        self.entries = []
        for n, (c, _, _, big_k) in zip(self.divisors, raw, strict=True):
            d = 2 * n
            m = -(-(1 << self.k) // d)  # still ceil(2**k / d), k only larger: the proof holds
            self.entries.append((c, m, big_k))

    def index(self, n: int) -> int:
        return self.divisors.index(n)


class WindowPoolStage(wiring.Component):
    """Max or average pool over channel-order window beats; output lanes = input lanes."""

    def __init__(self, *, mode: str, fmt: Format, hw: Pair, out_hw: Pair, kernel: Pair,
                 stride: Pair, padding: Padding, count_include_pad: bool = False) -> None:
        if mode not in ("max", "avg"):
            raise ShapeError(f"pool mode {mode!r}")
        self.mode, self.fmt, self.out_hw = mode, fmt, out_hw
        self.taps = kernel[0] * kernel[1]
        counts = counted_taps(hw, out_hw, kernel, stride, padding, (1, 1), count_include_pad)
        self.counts = counts
        self.out_fmt = Format(out_hw[0], out_hw[1], fmt.channels, fmt.bits, fmt.signed, fmt.lanes)
        super().__init__({"i": In(stream.Signature(window_layout(fmt))),
                          "o": Out(self.out_fmt.signature)})

    def expected_cycles(self) -> int:
        oh, ow = self.out_hw
        return oh * ow * self.fmt.beats_per_pixel * self.taps

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt = self.fmt
        oh, ow = self.out_hw
        cl = fmt.beats_per_pixel
        beat = self.i.payload
        sum_bits = _sum_bits(fmt, self.taps)
        acc_shape = fmt.shape if self.mode == "max" else signed(sum_bits)
        acc = Signal(data.ArrayLayout(acc_shape, fmt.lanes))
        out_full = Signal()
        out_reg = Signal(self.out_fmt.payload)
        take = Signal()
        m.d.comb += [
            self.i.ready.eq(~beat.end | ~out_full | self.o.ready),
            take.eq(self.i.valid & self.i.ready),
            self.o.valid.eq(out_full),
            self.o.payload.eq(out_reg),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += out_full.eq(0)
        # output position, for the divisor of the average
        py, px, group = Signal(range(oh)), Signal(range(ow)), Signal(range(cl))
        divider = None
        if self.mode == "avg":
            divider = _Divider([int(n) for n in self.counts.reshape(-1)], sum_bits)
            sel_table = [divider.index(int(n)) for n in self.counts.reshape(-1)]
            m.submodules.sel = sel_mem = Memory(shape=range(len(divider.divisors)),
                                                depth=len(sel_table), init=sel_table)
            sel_port = sel_mem.read_port(domain="comb")
            m.d.comb += sel_port.addr.eq(py * ow + px)
        for lane in range(fmt.lanes):
            x = beat.data[lane]
            if self.mode == "max":
                start = Mux(beat.pad, _lowest(fmt), x)
                grown = Mux(beat.pad | (acc[lane] >= x), acc[lane], x)
                nxt = Mux(beat.first, start, grown)
                result = nxt
            else:
                nxt = Mux(beat.first, 0, acc[lane]) + x
                c = self._pick(sel_port.data, [e[0] for e in divider.entries])
                mult = self._pick(sel_port.data, [e[1] for e in divider.entries])
                big_k = self._pick(sel_port.data, [e[2] for e in divider.entries])
                t = (nxt << 1) + c
                result = ((t * mult) >> divider.k) - big_k
            with m.If(take):
                m.d.sync += acc[lane].eq(nxt)
                with m.If(beat.end):
                    m.d.sync += out_reg.data[lane].eq(result)
        with m.If(take & beat.end):
            m.d.sync += [out_full.eq(1), out_reg.last.eq(beat.last)]
            with m.If(group == cl - 1):
                m.d.sync += group.eq(0)
                with m.If(px == ow - 1):
                    m.d.sync += [px.eq(0), py.eq(Mux(py == oh - 1, 0, py + 1))]
                with m.Else():
                    m.d.sync += px.eq(px + 1)
            with m.Else():
                m.d.sync += group.eq(group + 1)
        return m

    @staticmethod
    def _pick(sel, values: list[int]):
        out = values[0]
        for j in range(1, len(values)):
            out = Mux(sel == j, values[j], out)
        return out


class GlobalPoolStage(wiring.Component):
    """Mean (rounded half up) or max of each channel over all pixels, streaming."""

    def __init__(self, *, mode: str, fmt: Format, ram_style: str = "logic") -> None:
        if mode not in ("max", "avg"):
            raise ShapeError(f"global pool mode {mode!r}")
        self.ram_style = ram_style
        self.mode, self.fmt = mode, fmt
        self.pixels = fmt.height * fmt.width
        self.out_fmt = Format(1, 1, fmt.channels, fmt.bits, fmt.signed, fmt.lanes)
        super().__init__({"i": In(fmt.signature), "o": Out(self.out_fmt.signature)})

    def expected_cycles(self) -> int:
        return self.fmt.beats

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt = self.fmt
        cl = fmt.beats_per_pixel
        n = self.pixels
        sum_bits = _sum_bits(fmt, n) if self.mode == "avg" else fmt.bits
        acc_shape = signed(sum_bits) if self.mode == "avg" else fmt.shape
        word = data.ArrayLayout(acc_shape, fmt.lanes)
        m.submodules.sums = sums = Memory(shape=word, depth=max(cl, 2), init=[],
                                          attrs={"ram_style": self.ram_style})
        wp = sums.write_port()
        rp = sums.read_port(transparent_for=(wp,))
        beat_idx = Signal(range(max(cl, 2)))
        pixel = Signal(range(max(n, 2)))
        m.submodules.out = out = fifo.SyncFIFO(width=self.out_fmt.payload.size, depth=4)
        inflight = Signal()
        credit = out.level + inflight < 4
        last_pixel = pixel == n - 1
        m.d.comb += self.i.ready.eq(~last_pixel | credit)
        take = Signal()
        m.d.comb += [take.eq(self.i.valid & self.i.ready), rp.addr.eq(beat_idx)]
        # registered beat (the sums read in step)
        r_valid, r_first, r_final, r_last = Signal(), Signal(), Signal(), Signal()
        r_idx = Signal.like(beat_idx)
        r_x = Signal(data.ArrayLayout(fmt.shape, fmt.lanes))
        m.d.sync += r_valid.eq(take)
        with m.If(take):
            m.d.sync += [r_first.eq(pixel == 0), r_final.eq(last_pixel), r_idx.eq(beat_idx),
                         r_x.eq(self.i.payload.data), r_last.eq(self.i.payload.last)]
            m.d.sync += beat_idx.eq(Mux(beat_idx == cl - 1, 0, beat_idx + 1))
            with m.If(beat_idx == cl - 1):
                m.d.sync += pixel.eq(Mux(last_pixel, 0, pixel + 1))
        m.d.sync += inflight.eq(take & last_pixel)
        result = Signal(self.out_fmt.payload)
        div = _Divider([n], sum_bits) if self.mode == "avg" else None
        for lane in range(fmt.lanes):
            old = rp.data[lane]
            x = r_x[lane]
            if self.mode == "avg":
                nxt = Mux(r_first, 0, old) + x
                c, mult, big_k = div.entries[0]
                value = ((((nxt << 1) + c) * mult) >> div.k) - big_k
            else:
                nxt = Mux(r_first | (x > old), x, old)
                value = nxt
            m.d.comb += [wp.data[lane].eq(nxt), result.data[lane].eq(value)]
        m.d.comb += [
            wp.addr.eq(r_idx),
            wp.en.eq(r_valid & ~r_final),
            result.last.eq(r_last),
            out.w_data.eq(result.as_value()),
            out.w_en.eq(r_valid & r_final),
            self.o.payload.eq(out.r_data),
            self.o.valid.eq(out.r_rdy),
            out.r_en.eq(self.o.ready),
        ]
        return m


class AddStage(wiring.Component):
    """Residual add of two aligned pixel streams with requantization."""

    def __init__(self, *, a: Format, b: Format, out: Format, align: tuple[int, int], shift: int,
                 lo: int, hi: int) -> None:
        if a.lanes != b.lanes or a.lanes != out.lanes or a.channels != b.channels:
            raise ShapeError(f"residual add of {a.lanes}/{b.lanes} lanes into {out.lanes}")
        self.a_fmt, self.b_fmt, self.out_fmt = a, b, out
        self.align, self.shift, self.lo, self.hi = align, shift, lo, hi
        super().__init__({"a": In(a.signature), "b": In(b.signature), "o": Out(out.signature)})

    def expected_cycles(self) -> int:
        return self.out_fmt.beats

    def elaborate(self, platform) -> Module:
        m = Module()
        full = Signal()
        reg = Signal(self.out_fmt.payload)
        both = self.a.valid & self.b.valid
        room = ~full | self.o.ready
        take = Signal()
        m.d.comb += [
            take.eq(both & room),
            self.a.ready.eq(both & room),
            self.b.ready.eq(both & room),
            self.o.valid.eq(full),
            self.o.payload.eq(reg),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(take):
            m.d.sync += [full.eq(1), reg.last.eq(self.a.payload.last)]
            for lane in range(self.out_fmt.lanes):
                a, b = self.a.payload.data[lane], self.b.payload.data[lane]
                total = (a << self.align[0]) + (b << self.align[1])
                m.d.sync += reg.data[lane].eq(
                    requantize(total, [self.shift], None, self.lo, self.hi, self.out_fmt.shape))
        return m


class ClampStage(wiring.Component):
    """A standalone activation: requantize each lane by a constant shift, clamp to [lo, hi]."""

    def __init__(self, *, fmt: Format, out: Format, shift: int, lo: int, hi: int) -> None:
        self.fmt, self.out_fmt, self.shift, self.lo, self.hi = fmt, out, shift, lo, hi
        super().__init__({"i": In(fmt.signature), "o": Out(out.signature)})

    def expected_cycles(self) -> int:
        return self.fmt.beats

    def elaborate(self, platform) -> Module:
        m = Module()
        full = Signal()
        reg = Signal(self.out_fmt.payload)
        take = Signal()
        m.d.comb += [
            self.i.ready.eq(~full | self.o.ready),
            take.eq(self.i.valid & self.i.ready),
            self.o.valid.eq(full),
            self.o.payload.eq(reg),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(take):
            m.d.sync += [full.eq(1), reg.last.eq(self.i.payload.last)]
            for lane in range(self.fmt.lanes):
                m.d.sync += reg.data[lane].eq(requantize(
                    self.i.payload.data[lane], [self.shift], None, self.lo, self.hi,
                    self.out_fmt.shape))
        return m


class ArgMax(wiring.Component):
    """Forwards the logits; emits the index of the first largest logit of each image."""

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.classes = fmt.height * fmt.width * fmt.channels
        super().__init__({"i": In(fmt.signature), "o": Out(fmt.signature),
                          "cls": Out(stream.Signature(unsigned(max(1, (self.classes - 1)
                                                                     .bit_length()))))})

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt = self.fmt
        best = Signal(fmt.shape)
        best_idx = Signal(range(max(self.classes, 2)))
        base = Signal(range(max(self.classes, 2)))
        started = Signal()
        cls_full = Signal()
        cls_reg = Signal.like(self.cls.payload)
        last = self.i.payload.last
        room = ~last | ~cls_full | self.cls.ready
        m.d.comb += [
            self.o.payload.eq(self.i.payload),
            self.o.valid.eq(self.i.valid & room),
            self.i.ready.eq(self.o.ready & room),
            self.cls.valid.eq(cls_full),
            self.cls.payload.eq(cls_reg),
        ]
        with m.If(self.cls.valid & self.cls.ready):
            m.d.sync += cls_full.eq(0)
        # running maximum over this beat's lanes, starting from the previous beats' best
        cur_v, cur_i = Mux(started, best, self.i.payload.data[0]), Mux(started, best_idx, base)
        for lane in range(fmt.lanes):
            v = self.i.payload.data[lane]
            better = v > cur_v
            cur_v, cur_i = Mux(better, v, cur_v), Mux(better, base + lane, cur_i)
        with m.If(self.i.valid & self.i.ready):
            with m.If(last):
                m.d.sync += [started.eq(0), base.eq(0), cls_full.eq(1), cls_reg.eq(cur_i)]
            with m.Else():
                m.d.sync += [started.eq(1), best.eq(cur_v), best_idx.eq(cur_i),
                             base.eq(base + fmt.lanes)]
        return m
