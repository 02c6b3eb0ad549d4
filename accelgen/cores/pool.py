"""Pooling stages, the residual add, standalone activations and the arg-max.

* `WindowPoolStage`: max or average over the channel-order window beats of a `SlidingWindow`.
  Max ignores padded taps; average sums the taps and divides by the window's counted taps with
  the golden division rule ``floor((2*sum + n) / (2*n))``, computed as
  ``(((2*sum + c) * m) >> k) - big_k`` with per-``n`` constants (`accelgen.golden.reciprocal`,
  one shared ``k``).
* `GlobalPoolStage`: mean or max over all pixels of each channel, streaming (running sums in
  block RAM, one word per channel group); the last pixel's beats come out as the result, the
  mean by exact restoring division (one quotient bit per cycle) instead of a multiplier.
* `AddStage`: ``requantize((a << align_a) + (b << align_b))`` lane by lane.
* `ClampStage`: a standalone activation (requantize by a constant shift, clamp).
* `ArgMax`: passes the logits through and emits the index of the first largest one per image.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
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


def global_pool_cycles(mode: str, fmt: Format) -> int:
    """Steady-state cycles per image of a `GlobalPoolStage`: a beat per cycle, but the beats of
    the last pixel one at a time, each through the running value, (average) the `bits` steps
    of the division, and out — while the next image's beats already stream in."""
    final = 2 + (fmt.bits if mode == "avg" else 0)
    cl = fmt.beats_per_pixel
    return max((fmt.height * fmt.width - 1) * cl + 1, final) + (cl - 1) * final


def global_pool_value_bits(mode: str, fmt: Format) -> int:
    """Width of a `GlobalPoolStage`'s running value of one channel (mean: ``n // 2`` plus the
    codes less the lowest code, see the class)."""
    if mode == "max":
        return fmt.bits
    n = fmt.height * fmt.width
    return (n // 2 + ((1 << fmt.bits) - 1) * n).bit_length()


class GlobalPoolStage(wiring.Component):
    """Mean (rounded half up) or max of each channel over all pixels, streaming.

    The running value of each channel group lives in a small memory (one word per group),
    updated as the pixels pass; the last pixel's beats are finished one at a time into the
    output register. The mean follows the golden rule ``floor((2*sum + n) / (2*n))`` by exact
    restoring division, one quotient bit per cycle: the running value is kept as
    ``v = n // 2 + sum(x - lo)`` (``lo`` the lowest code), so the dividend ``2*sum' + n`` is
    ``v`` with ``n``'s parity appended, the quotient fits the code width, and adding ``lo``
    back only flips a signed code's top bit.
    """

    def __init__(self, *, mode: str, fmt: Format, ram_style: str = "logic") -> None:
        if mode not in ("max", "avg"):
            raise ShapeError(f"global pool mode {mode!r}")
        self.ram_style = ram_style
        self.mode, self.fmt = mode, fmt
        self.pixels = fmt.height * fmt.width
        self.out_fmt = Format(1, 1, fmt.channels, fmt.bits, fmt.signed, fmt.lanes)
        super().__init__({"i": In(fmt.signature), "o": Out(self.out_fmt.signature)})

    def expected_cycles(self) -> int:
        return global_pool_cycles(self.mode, self.fmt)

    def value_bits(self) -> int:
        """Width of the running value of one channel."""
        return global_pool_value_bits(self.mode, self.fmt)

    def elaborate(self, platform) -> Module:
        m = Module()
        fmt = self.fmt
        cl = fmt.beats_per_pixel
        n = self.pixels
        bits = fmt.bits
        avg = self.mode == "avg"
        value_shape = unsigned(self.value_bits()) if avg else fmt.shape
        word = data.ArrayLayout(value_shape, fmt.lanes)

        beat_idx = Signal(range(max(cl, 2)))
        pixel = Signal(range(max(n, 2)))
        last_pixel = Signal(init=n == 1)  # pixel == n - 1, kept as a register (ready's path)
        busy = Signal()  # a last-pixel beat is being finished
        out_valid = Signal()
        take = Signal()
        m.d.comb += [
            # the next last-pixel beat may enter as the output leaves
            self.i.ready.eq(~last_pixel | ~busy | (out_valid & self.o.ready)),
            take.eq(self.i.valid & self.i.ready),
            self.o.valid.eq(out_valid),
        ]
        with m.If(self.o.valid & self.o.ready):  # (before the assignments that may override)
            m.d.sync += [out_valid.eq(0), busy.eq(0)]
        # stage r: the accepted beat, registered, with its group's running value
        r_valid, r_first, r_final, r_last = Signal(), Signal(), Signal(), Signal()
        r_x = Signal(data.ArrayLayout(fmt.shape, fmt.lanes))
        m.d.sync += r_valid.eq(take)
        with m.If(take):
            m.d.sync += [r_first.eq(pixel == 0), r_final.eq(last_pixel),
                         r_x.eq(self.i.payload.data), r_last.eq(self.i.payload.last)]
            if cl > 1:
                m.d.sync += beat_idx.eq(Mux(beat_idx == cl - 1, 0, beat_idx + 1))
            with m.If(beat_idx == cl - 1):
                m.d.sync += [pixel.eq(Mux(last_pixel, 0, pixel + 1)),
                             last_pixel.eq(Mux(last_pixel, n == 1, pixel == n - 2))]
            with m.If(last_pixel):
                m.d.sync += busy.eq(1)
        new = Signal(word)
        if cl > 1:
            # a beat reads its group's value as it is accepted (the previous pixel wrote it at
            # least a cycle earlier) and writes it back a cycle later: never the same address
            # in one cycle, so the block RAM needs no read-during-write logic
            m.submodules.sums = sums = Memory(
                shape=word, depth=cl, init=[],
                attrs={"ram_style": self.ram_style, "no_rw_check": 1})
            wp = sums.write_port()
            rp = sums.read_port(domain="comb")
            old = Signal(word)
            r_idx = Signal.like(beat_idx)
            with m.If(take):
                m.d.sync += [old.eq(rp.data), r_idx.eq(beat_idx)]
            m.d.comb += [rp.addr.eq(beat_idx), wp.addr.eq(r_idx), wp.data.eq(new),
                         wp.en.eq(r_valid & ~r_final)]
        else:
            old = Signal(word)
            with m.If(r_valid):
                m.d.sync += old.eq(new)
        for lane in range(fmt.lanes):
            x = r_x[lane]
            if avg:  # x - lo: the code read as unsigned (a signed code's top bit flipped)
                offset = x.as_unsigned() ^ (1 << (bits - 1)) if fmt.signed else x
                m.d.comb += new[lane].eq(Mux(r_first, n // 2, old[lane]) + offset)
            else:
                m.d.comb += new[lane].eq(Mux(r_first | (x > old[lane]), x, old[lane]))

        result = Signal(self.out_fmt.payload)
        m.d.comb += self.o.payload.eq(result)
        start = r_valid & r_final
        with m.If(start):
            m.d.sync += result.last.eq(r_last)
        if avg:
            # restoring division of t = 2*v + (n & 1) by d = 2*n, quotient bits MSB first
            d = 2 * n
            rem_bits = (d - 1).bit_length()
            count = Signal(range(bits + 1))
            with m.If(start):
                m.d.sync += count.eq(bits)
            with m.Elif(count != 0):
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.d.sync += out_valid.eq(1)
            for lane in range(fmt.lanes):
                rem = Signal(rem_bits, name=f"rem{lane}")
                quo = Signal(bits, name=f"quo{lane}")
                t = Cat(Const(n & 1, 1), new[lane])
                shifted = Cat(quo[-1], rem)
                diff = Signal(signed(rem_bits + 2), name=f"diff{lane}")
                m.d.comb += diff.eq(shifted - d)
                with m.If(start):
                    m.d.sync += [quo.eq(t[:bits]), rem.eq(t[bits:])]
                with m.Elif(count != 0):
                    with m.If(diff >= 0):
                        m.d.sync += [rem.eq(diff), quo.eq(Cat(Const(1, 1), quo[:-1]))]
                    with m.Else():
                        m.d.sync += [rem.eq(shifted), quo.eq(Cat(Const(0, 1), quo[:-1]))]
                code = quo ^ (1 << (bits - 1)) if fmt.signed else quo
                m.d.comb += result.data[lane].eq(code)
        else:
            with m.If(start):
                m.d.sync += [out_valid.eq(1), result.data.eq(new)]
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
        # the beats pass through; a copy is compared a cycle later (off the stream's path)
        r_valid, r_last = Signal(), Signal()
        r_data = Signal(data.ArrayLayout(fmt.shape, fmt.lanes))
        r_base = Signal.like(base)
        last = self.i.payload.last
        # an image's last beat enters once its class will have a free register
        room = ~last | (~(r_valid & r_last) & (~cls_full | self.cls.ready))
        take = Signal()
        m.d.comb += [
            self.o.payload.eq(self.i.payload),
            self.o.valid.eq(self.i.valid & room),
            self.i.ready.eq(self.o.ready & room),
            take.eq(self.i.valid & self.i.ready),
            self.cls.valid.eq(cls_full),
            self.cls.payload.eq(cls_reg),
        ]
        with m.If(self.cls.valid & self.cls.ready):
            m.d.sync += cls_full.eq(0)
        m.d.sync += r_valid.eq(take)
        with m.If(take):
            m.d.sync += [r_data.eq(self.i.payload.data), r_last.eq(last), r_base.eq(base),
                         base.eq(Mux(last, 0, base + fmt.lanes))]
        # running maximum over this beat's lanes, starting from the previous beats' best (the
        # first lane wins outright at an image's start)
        first = ~started | (r_data[0] > best)
        cur_v, cur_i = Mux(first, r_data[0], best), Mux(first, r_base, best_idx)
        for lane in range(1, fmt.lanes):
            v = r_data[lane]
            better = v > cur_v
            cur_v, cur_i = Mux(better, v, cur_v), Mux(better, r_base + lane, cur_i)
        with m.If(r_valid):
            with m.If(r_last):
                m.d.sync += [started.eq(0), cls_full.eq(1), cls_reg.eq(cur_i)]
            with m.Else():
                m.d.sync += [started.eq(1), best.eq(cur_v), best_idx.eq(cur_i)]
        return m
