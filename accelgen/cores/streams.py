"""Stream payloads and the small stream blocks every pipeline needs.

A tensor travels as **pixel beats**: pixels in raster order (rows top to bottom, columns left to
right); each pixel's C channels in ``C / lanes`` beats of `lanes` values (channel
``beat * lanes + lane``). The payload is a struct: ``data`` (an array of `lanes` codes, signed or
unsigned `bits`-bit integers) and ``last`` (set on the final beat of an image).

Blocks here: `StreamFifo` (a `lib.fifo.SyncFIFOBuffered` behind stream ports, so it maps to
block RAM), `WidthConverter` (re-beats a stream to another lane count), `Broadcast` (one stream
to several consumers, in lockstep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accelgen.errors import ShapeError


@dataclass(frozen=True)
class Format:
    """How one tensor travels: its shape, code width and signedness, and lanes per beat."""

    height: int
    width: int
    channels: int
    bits: int
    signed: bool
    lanes: int

    def __post_init__(self) -> None:
        if self.lanes < 1 or self.channels % self.lanes:
            raise ShapeError(
                f"{self.lanes!r} lanes do not divide {self.channels} channels"
            )
        if not 1 <= self.bits <= 32:
            raise ShapeError(f"code width {self.bits!r} bits")

    @property
    def shape(self) -> Shape:
        return signed(self.bits) if self.signed else unsigned(self.bits)

    @property
    def beats_per_pixel(self) -> int:
        return self.channels // self.lanes

    @property
    def beats(self) -> int:
        """Beats per image."""
        return self.height * self.width * self.beats_per_pixel

    def with_lanes(self, lanes: int) -> Format:
        return Format(self.height, self.width, self.channels, self.bits, self.signed, lanes)

    @property
    def payload(self) -> data.StructLayout:
        return pixel_layout(self.shape, self.lanes)

    @property
    def signature(self) -> stream.Signature:
        return stream.Signature(self.payload)


def pixel_layout(shape: Shape, lanes: int) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(shape, lanes), "last": 1})


class StreamFifo(wiring.Component):
    """A first-in first-out queue between two streams, `depth` beats.

    ``style="logic"``: a ring of registers read through a multiplexer (small queues).
    ``style="block"``: a block-RAM ring (``ram_style`` attribute, so synthesis maps it where the
    plan counted it) behind an output register; it holds ``depth`` beats plus the one in the
    register. Both accept and deliver a beat per cycle.
    """

    def __init__(self, payload: data.Layout | Shape, depth: int, style: str = "logic") -> None:
        if depth < 1:
            raise ShapeError(f"FIFO depth {depth!r} must be at least 1")
        if style not in ("logic", "block"):
            raise ShapeError(f"FIFO style {style!r} (logic or block)")
        self._payload = payload
        self.depth = depth
        self.style = style
        super().__init__({"i": In(stream.Signature(payload)), "o": Out(stream.Signature(payload))})

    def elaborate(self, platform) -> Module:
        m = Module()
        width = Shape.cast(self._payload).width
        depth = self.depth
        produce = Signal(range(depth))
        consume = Signal(range(depth))
        count = Signal(range(depth + 1))
        do_write = self.i.valid & self.i.ready
        m.d.comb += self.i.ready.eq(count < depth)

        def bump(ptr: Signal) -> None:
            m.d.sync += ptr.eq(Mux(ptr == depth - 1, 0, ptr + 1))

        if self.style == "logic":
            regs = [Signal(width, name=f"slot{k}") for k in range(depth)]
            with m.If(do_write):
                bump(produce)
                for k, reg in enumerate(regs):
                    with m.If(produce == k):
                        m.d.sync += reg.eq(self.i.payload)
            out = regs[0]
            for k in range(1, depth):
                out = Mux(consume == k, regs[k], out)
            m.d.comb += [self.o.payload.eq(out), self.o.valid.eq(count != 0)]
            do_read = self.o.valid & self.o.ready
            with m.If(do_read):
                bump(consume)
            with m.If(do_write & ~do_read):
                m.d.sync += count.eq(count + 1)
            with m.Elif(do_read & ~do_write):
                m.d.sync += count.eq(count - 1)
            return m

        m.submodules.ring = ring = Memory(shape=width, depth=depth, init=[],
                                          attrs={"ram_style": "block"})
        wp = ring.write_port()
        rp = ring.read_port()
        out_valid = Signal()
        fetch = (count != 0) & (~out_valid | self.o.ready)
        m.d.comb += [
            wp.addr.eq(produce), wp.data.eq(self.i.payload), wp.en.eq(do_write),
            rp.addr.eq(consume), rp.en.eq(fetch),
            self.o.payload.eq(rp.data), self.o.valid.eq(out_valid),
        ]
        with m.If(do_write):
            bump(produce)
        with m.If(fetch):
            bump(consume)
            m.d.sync += out_valid.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(do_write & ~fetch):
            m.d.sync += count.eq(count + 1)
        with m.Elif(fetch & ~do_write):
            m.d.sync += count.eq(count - 1)
        return m


class WidthConverter(wiring.Component):
    """Re-beats a pixel stream from `lanes_in` to `lanes_out` values per beat.

    Either count must divide the other. Widening gathers ``lanes_out / lanes_in`` beats into
    one; narrowing sends each beat as ``lanes_in / lanes_out`` beats. `last` is kept on the final
    beat. One beat in or out per cycle; no bubbles: a widening converter gathers the first beats
    of the next output while its last output waits to be taken (so a narrowing converter after
    it, which takes a beat every ``k`` cycles, never stops it).
    """

    def __init__(self, shape: Shape, lanes_in: int, lanes_out: int) -> None:
        if lanes_in % lanes_out and lanes_out % lanes_in:
            raise ShapeError(
                f"cannot convert {lanes_in} lanes to {lanes_out}: one must divide the other "
                f"(chain two converters through {math.gcd(lanes_in, lanes_out)})"
            )
        self.shape, self.lanes_in, self.lanes_out = shape, lanes_in, lanes_out
        super().__init__({
            "i": In(stream.Signature(pixel_layout(shape, lanes_in))),
            "o": Out(stream.Signature(pixel_layout(shape, lanes_out))),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        li, lo = self.lanes_in, self.lanes_out
        if li == lo:
            wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
            return m
        if lo > li:  # gather k beats: k - 1 into `part`, the k-th with them into the output
            k = lo // li
            part = Signal(data.ArrayLayout(self.shape, lo - li))
            buf = Signal(data.ArrayLayout(self.shape, lo))
            count = Signal(range(k))
            full = Signal()
            last = Signal()
            m.d.comb += [
                self.o.payload.data.eq(buf),
                self.o.payload.last.eq(last),
                self.o.valid.eq(full),
                # only the k-th beat needs the output register free
                self.i.ready.eq((count != k - 1) | ~full | self.o.ready),
            ]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += full.eq(0)
            with m.If(self.i.valid & self.i.ready):
                for j in range(k - 1):
                    with m.If(count == j):
                        for lane in range(li):
                            m.d.sync += part[j * li + lane].eq(self.i.payload.data[lane])
                m.d.sync += count.eq(Mux(count == k - 1, 0, count + 1))
                with m.If(count == k - 1):
                    for lane in range(lo - li):
                        m.d.sync += buf[lane].eq(part[lane])
                    for lane in range(li):
                        m.d.sync += buf[lo - li + lane].eq(self.i.payload.data[lane])
                    m.d.sync += [full.eq(1), last.eq(self.i.payload.last)]
            return m
        k = li // lo  # split each beat into k
        count = Signal(range(k))
        for lane in range(lo):
            choices = [self.i.payload.data[j * lo + lane] for j in range(k)]
            value = choices[0]
            for j in range(1, k):
                value = Mux(count == j, choices[j], value)
            m.d.comb += self.o.payload.data[lane].eq(value)
        m.d.comb += [
            self.o.payload.last.eq(self.i.payload.last & (count == k - 1)),
            self.o.valid.eq(self.i.valid),
            self.i.ready.eq(self.o.ready & (count == k - 1)),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += count.eq(Mux(count == k - 1, 0, count + 1))
        return m


class Broadcast(wiring.Component):
    """One stream to `n` consumers: every beat goes to each of them; the input beat retires once
    all have taken it (a consumer that took it early is not offered it again).

    Put a FIFO on any branch that must run ahead of the others (a residual skip path).
    """

    def __init__(self, payload: data.Layout, n: int) -> None:
        self.n = n
        super().__init__({"i": In(stream.Signature(payload)),
                          "o": Out(stream.Signature(payload)).array(n)})

    def elaborate(self, platform) -> Module:
        m = Module()
        done = Signal(self.n)
        taken = [done[k] | self.o[k].ready for k in range(self.n)]
        retire = taken[0]
        for t in taken[1:]:
            retire = retire & t
        for k, o in enumerate(self.o):
            m.d.comb += [o.payload.eq(self.i.payload), o.valid.eq(self.i.valid & ~done[k])]
            with m.If(o.valid & o.ready):
                m.d.sync += done[k].eq(1)
        m.d.comb += self.i.ready.eq(retire)
        with m.If(self.i.valid & retire):
            m.d.sync += done.eq(0)
        return m
