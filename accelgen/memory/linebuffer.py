"""The sliding-window line buffer: a pixel stream in, the taps of every window out.

`SlidingWindow` keeps the last ``R = kh + sh`` input rows in a ring of block RAM (one word per
input beat, `lanes` channels) and reads, for every output position, the window's taps as a
stream of *window beats*. Taps outside the image (zero padding, asymmetric or not, and the
overhang of a ceil-mode pooling window) come out as zeros with ``pad`` set.

Two tap orders:

* ``"dense"`` (full and pointwise convolutions, dense layers): for each output position, the
  whole window ``(ky, kx, channel group)`` is sent `repeats` times, once per output-channel fold
  of the consumer; ``first``/``end`` mark each repetition.
* ``"channel"`` (depthwise convolutions and pools): for each output position and channel group,
  the ``(ky, kx)`` taps; ``first``/``end`` mark each group.

``last`` is set on the final beat of an image.

Flow control works on whole rows (and with ``partial`` on the columns of the oldest row), so
no tap can be read before it is written or overwritten before it is read: the writer may write
row ``g`` once fewer than ``R`` rows are held; the reader starts output row ``oy`` once every
input row it needs has been written, and releases the rows the next output row no longer needs
once their last tap has been read. With ``R = kh + sh`` the writer fills the next rows while
the reader works, so neither side waits in steady state. With ``partial`` and the ring full,
the writer may also write the next row over the oldest row's columns that the output row being
read no longer needs (left of its next window, counted as each output position's last tap is
read), if that output row releases the oldest row: a *compact* ring (``R = kh``) then waits
only for the last window's columns at the end of each output row, not for the whole row. It
costs a counter and a comparison; the scheduler asks for it where producers wait and no row
can be added.

Hardware: two small counters, offset so that each flag is a sign bit, follow the rows the
writer may still write and the rows the reader still lacks (the reader's issue is a register
bit; the writer's `ready` adds a comparison of its column with the oldest row's freed words);
the reader computes each tap's address and flags into a pipeline register, then reads the
ring into the output register (the block RAM's own read register, its read-during-write logic
dropped: ``no_rw_check``); both stages move together when the output is free or being taken,
so no output FIFO is needed.

Cycle model (`expected_cycles`): one window beat per cycle while the consumer takes them, plus
`ROW_OVERHEAD` (none) cycles per output row; the writer takes one input beat per cycle
(`WindowGeometry.steady_cycles`, an event model of both sides' rows).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from amaranth import Array, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.ir import Padding, Pair, window_output_size

ROW_OVERHEAD = 0


def window_layout(fmt: Format) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(fmt.shape, fmt.lanes),
        "pad": 1,
        "first": 1,
        "end": 1,
        "last": 1,
    })


@dataclass(frozen=True)
class WindowGeometry:
    """Kernel, stride and padding of a sliding window over an input `Format`."""

    fmt: Format
    kernel: Pair
    stride: Pair
    padding: Padding
    ceil_mode: bool = False
    compact: bool = False
    """Hold only the window's rows (``kh``): less memory, but the writer waits for the reader
    at every output row (the scheduler picks it for stages with cycles to spare)."""
    slack_rows: int = 0
    """Rows held beyond those (the scheduler adds them where the coupled pipeline needs room
    for a producer to run ahead: `accelgen.scheduler.flow`)."""
    partial: bool = False
    """Free the oldest row column by column (the writer goes on over the columns the current
    output row no longer needs while the ring is full): a compact ring then flows almost as a
    full one, for a counter and a comparison (the scheduler adds it where producers wait)."""

    def __post_init__(self) -> None:
        if self.slack_rows < 0:
            raise ShapeError(f"slack_rows={self.slack_rows!r} must be >= 0")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ShapeError(
                f"window kernel {self.kernel}, stride {self.stride}, padding {self.padding}"
            )

    @property
    def out_hw(self) -> Pair:
        oh, ow = window_output_size((self.fmt.height, self.fmt.width), self.kernel, self.stride,
                                    self.padding, (1, 1), self.ceil_mode)
        if oh < 1 or ow < 1:
            raise ShapeError(f"kernel {self.kernel} does not fit {self.fmt.height}x"
                             f"{self.fmt.width} with padding {self.padding}")
        return oh, ow

    @property
    def ring_rows(self) -> int:
        """Rows held: the window's rows plus one stride of rows being written meanwhile; a
        window that spans the whole image height (a dense layer) is double-buffered."""
        if self.out_hw[0] == 1:
            rows = self.kernel[0] if self.compact else 2 * self.kernel[0]
        else:
            rows = self.kernel[0] if self.compact else self.kernel[0] + self.stride[0]
        return rows + self.slack_rows

    def row_needs(self) -> list[tuple[int, int]]:
        """Per output row: (input rows that must be written, rows still needed afterwards)."""
        h, kh, sh, pt = self.fmt.height, self.kernel[0], self.stride[0], self.padding[0]
        oh = self.out_hw[0]
        out = []
        for oy in range(oh):
            need = min(h, max(0, oy * sh - pt + kh))
            keep_from = h if oy == oh - 1 else min(h, max(0, (oy + 1) * sh - pt))
            out.append((need, keep_from))
        return out

    def row_read_cycles(self, pixel_cycles: float | None = None, repeats: int = 1) -> float:
        """Cycles the reader spends on one output row: a beat per cycle plus `ROW_OVERHEAD`,
        or the consumer's `pixel_cycles` per position when that is slower."""
        ow = self.out_hw[1]
        beats = ow * repeats * self.taps * self.fmt.beats_per_pixel
        read = beats + ROW_OVERHEAD
        return read if pixel_cycles is None else max(read, ow * pixel_cycles)

    def steady_cycles(self, row_read: float, row_write: float, images: int = 4) -> float:
        """Steady-state cycles per image of the row protocol (an event model): the reader
        spends `row_read` cycles per output row, the writer `row_write` per input row. The
        writer writes a row into the oldest row's slot once that row is released, or, with
        `partial` and where the output row releasing it releases it first, while that output
        row is read: then it finishes the row's last words, those the last window still
        reads, after the output row ends."""
        h, r = self.fmt.height, self.ring_rows
        ow, sw, pl = self.out_hw[1], self.stride[1], self.padding[1]
        rw = self.row_words
        tail = rw - min(max(((ow - 1) * sw - pl) * self.fmt.beats_per_pixel, 0), rw)
        needs = self.row_needs()
        write_end: list[float] = []  # completion time of each global input row
        starts: list[float] = []  # per output row (global): when the reader started it
        ends: list[float] = []  # ... when it ended (and released its rows)
        kept_before: list[int] = []  # ... global input rows released before it
        kept_after: list[int] = []  # ... and after it (non-decreasing)
        writer_free = 0.0
        reader = 0.0
        image_end = []

        def write_until(rows: int) -> None:
            nonlocal writer_free
            while len(write_end) < rows:
                g = len(write_end)
                start, end_at_least = writer_free, 0.0
                if g - r >= 0:  # row g needs row g - r released
                    k = bisect.bisect_right(kept_after, g - r)
                    if self.partial and kept_before[k] == g - r:  # output row k frees it first
                        start = max(start, starts[k])
                        end_at_least = ends[k] + tail
                    else:
                        start = max(start, ends[k])
                writer_free = max(start + row_write, end_at_least)
                write_end.append(writer_free)

        kept = 0
        for img in range(images):
            for oy, (need, keep_from) in enumerate(needs):
                write_until(img * h + need)
                ready = write_end[img * h + need - 1] if need else 0.0
                starts.append(max(reader, ready))
                reader = starts[-1] + row_read
                ends.append(reader)
                kept_before.append(kept)
                kept = img * h + keep_from
                kept_after.append(kept)
                if oy == len(needs) - 1:
                    image_end.append(reader)
        return image_end[-1] - image_end[-2]

    @property
    def row_words(self) -> int:
        return self.fmt.width * self.fmt.beats_per_pixel

    @property
    def words(self) -> int:
        return self.ring_rows * self.row_words

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]


class SlidingWindow(wiring.Component):
    """Line buffer + window reader (see the module docstring for the contract)."""

    def __init__(self, geometry: WindowGeometry, *, order: str = "dense", repeats: int = 1,
                 ram_style: str = "block") -> None:
        if order not in ("dense", "channel"):
            raise ShapeError(f"window order {order!r} (dense or channel)")
        if repeats < 1 or (order == "channel" and repeats != 1):
            raise ShapeError(f"repeats={repeats!r} (>= 1, and 1 for the channel order)")
        self.geometry = geometry
        self.order = order
        self.repeats = repeats
        self.ram_style = ram_style
        fmt = geometry.fmt
        super().__init__({
            "i": In(fmt.signature),
            "o": Out(stream.Signature(window_layout(fmt))),
        })

    # -- models ------------------------------------------------------------------------------
    def beats_per_image(self) -> int:
        g = self.geometry
        oh, ow = g.out_hw
        return oh * ow * self.repeats * g.taps * g.fmt.beats_per_pixel

    def expected_cycles(self, pixel_cycles: float | None = None) -> float:
        """Cycles per image in steady state, the producer sending a beat per cycle and the
        consumer taking one window beat per cycle (or spending `pixel_cycles` per output
        position, if slower)."""
        g = self.geometry
        return g.steady_cycles(g.row_read_cycles(pixel_cycles, self.repeats), g.row_words)

    def memory_bits(self) -> int:
        g = self.geometry
        return g.words * g.fmt.lanes * g.fmt.bits

    # -- hardware ----------------------------------------------------------------------------
    def elaborate(self, platform) -> Module:
        m = Module()
        g = self.geometry
        fmt = g.fmt
        H, W = fmt.height, fmt.width
        CL = fmt.beats_per_pixel
        kh, kw = g.kernel
        sh, sw = g.stride
        pt, pl, _, _ = g.padding
        OH, OW = g.out_hw
        R = g.ring_rows
        RW = g.row_words
        word = data.ArrayLayout(fmt.shape, fmt.lanes)

        m.submodules.ring = ring = Memory(shape=word, depth=g.words, init=[],
                                          attrs={"ram_style": self.ram_style, "no_rw_check": 1})
        wp = ring.write_port()
        # an asynchronous port behind a register of our own: Yosys folds the register into
        # the block RAM and, with `no_rw_check`, builds no read-during-write emulation (the
        # flow control never reads a row being written; padded taps are masked)
        rp = ring.read_port(domain="comb")
        rdata = Signal(word)

        # the window's first input row and column, over the output positions
        y_first, y_final = -pt, (OH - 1) * sh - pt
        x_first, x_final = -pl, (OW - 1) * sw - pl
        y_lo = _register(m, "y_lo", y_first, y_final)
        x_lo = _register(m, "x_lo", x_first, x_final)
        ky, kx = _register(m, "ky", 0, kh - 1), _register(m, "kx", 0, kw - 1)
        cf = _register(m, "cf", 0, CL - 1)
        rep = _register(m, "rep", 0, self.repeats - 1)
        slot_lo = _register(m, "slot_lo", 0, R - 1, init=(-pt) % R)  # ring slot of row y_lo

        # ---- row accounting ---------------------------------------------------------------
        # With `avail` the input rows written, counted from the reader's current image's row 0
        # (the writer may be into the next image, or still behind: rows a stride skips at the
        # bottom), the reader has released the rows above `freed(y_lo)` and the current output
        # row needs `need(y_lo)` rows. Two small registers follow the differences that matter,
        # `held = avail - freed` (the writer may write while < R) and `deficit = need - avail`
        # (the reader may read while <= 0), so ready and issue are each a register's bit
        def freed(y0: int) -> int:  # rows above output row y0's window, within the image
            return min(max(y0, 0), H)

        def need(y0: int) -> int:  # rows the window starting at row y0 needs written
            return min(max(y0 + kh, 0), H)

        # (both kept offset so that the flag is the sign bit: `held - R`, `deficit - 1`)
        span = H + R + 2
        held = Signal(range(-span - R, span + 1 + g.partial), init=-R)
        deficit = Signal(range(-span - 1, 2 * span + 1), init=need(y_first) - 1)
        can_write = Signal()
        rows_ok = Signal()
        # (`partial`) the oldest row, freed column by column: while the ring is full (`held`
        # = R), the writer may write the next row over the words of the oldest row that the
        # output row being read no longer needs, once that output row releases rows at all
        # (`rel_ok`): ``freed_words``, those left of the next window, counted as its reads
        # complete
        if g.partial:
            freed_words = Signal(range(-pl * CL - 1, (OW * sw + 1) * CL + 1), init=-pl * CL)
            rel_ok = Signal()
        if g.partial:
            m.d.comb += rows_ok.eq(deficit.as_unsigned()[-1])
        else:
            m.d.comb += [can_write.eq(held.as_unsigned()[-1]),
                         rows_ok.eq(deficit.as_unsigned()[-1])]

        # ---- writer: input beats into the ring, whole rows at a time ----------------------
        waddr = _register(m, "waddr", 0, g.words - 1)
        wbeat = _register(m, "wbeat", 0, RW - 1)
        write = Signal()
        m.d.comb += [
            self.i.ready.eq(can_write),
            write.eq(self.i.valid & can_write),
            wp.addr.eq(waddr),
            wp.data.eq(self.i.payload.data),
            wp.en.eq(write),
        ]
        with m.If(write):
            _wrap_inc(m, waddr, g.words)
            _wrap_inc(m, wbeat, RW)
        row_written = write & (wbeat == RW - 1)
        if g.partial:
            m.d.comb += can_write.eq(held.as_unsigned()[-1]
                                     | ((held == 0) & rel_ok & (wbeat < freed_words)))

        # ---- reader: output positions x taps, one window beat per cycle ---------------------
        y = y_lo + ky
        x = x_lo + kx
        inside = Const(1)
        if y_first < 0:
            inside = inside & (y >= 0)
        if y_final + kh - 1 >= H:
            inside = inside & (y < H)
        if x_first < 0:
            inside = inside & (x >= 0)
        if x_final + kw - 1 >= W:
            inside = inside & (x < W)
        # ring address: the tap's row slot (slot_lo + ky, wrapped) times the row, plus its
        # column ``x * CL + cf``; where that takes a multiplication (several pixels of several
        # beats per row), the column is a register that steps by constants as the loops
        # advance (modulo the address width: a padded tap's column is never used)
        slot_sum = slot_lo + ky
        row_base = Array([Const((s % R) * RW, range(g.words)) for s in range(R + kh - 1)])
        col_bits = max(1, (g.words - 1).bit_length())
        stepped = W > 1 and CL > 1
        if stepped:
            col = Signal(col_bits, init=(x_first * CL) % (1 << col_bits))
        else:
            col = x.as_unsigned() if W > 1 else cf

        last_cf = cf == CL - 1
        last_kx = kx == kw - 1
        last_ky = ky == kh - 1
        last_rep = rep == self.repeats - 1
        last_ox = x_lo == x_final
        last_oy = y_lo == y_final
        if self.order == "dense":
            end_of_window = last_cf & last_kx & last_ky
            end_of_pixel = end_of_window & last_rep
            first_of_window = (cf == 0) & (kx == 0) & (ky == 0)
        else:
            end_of_window = last_kx & last_ky
            end_of_pixel = end_of_window & last_cf
            first_of_window = (kx == 0) & (ky == 0)
        end_of_row = end_of_pixel & last_ox
        end_of_image = end_of_row & last_oy

        # per output row (constants, by the row's y_lo): the rows it releases and the further
        # rows the next output row needs; the image's last row moves to the next image
        release, more = Signal(range(sh + 1)), Signal(range(sh + 1))
        m.d.comb += [release.eq(sh), more.eq(sh)]
        with m.Switch(y_lo):
            for y0 in range(y_first, y_final, sh):
                r, n = freed(y0 + sh) - freed(y0), need(y0 + sh) - need(y0)
                if (r, n) != (sh, sh):
                    with m.Case(y0):
                        m.d.comb += [release.eq(r), more.eq(n)]
        image_release = H - freed(y_final)
        image_more = need(y_first) - need(y_final) + H

        # two pipeline stages, moving together whenever the output register is free or being
        # read (`advance`): the tap's address and flags into `s1` (issue), then the ring's
        # read into the output register (the read port's own data register, flags beside it)
        out_valid = Signal()
        flags = Signal(data.StructLayout({"pad": 1, "first": 1, "end": 1, "last": 1}))
        s1_valid = Signal()
        s1_flags = Signal.like(flags)
        s1_addr = Signal(range(g.words))
        # the rows a finished output row releases, applied once its last tap has been read
        s1_release = Signal(range(max(sh, image_release) + 1))
        s1_row_end = Signal()
        s1_pixel_end = Signal() if g.partial else None
        advance = Signal()
        issue = Signal()
        m.d.comb += [
            advance.eq(~out_valid | self.o.ready),
            issue.eq(rows_ok & advance),
            rp.addr.eq(s1_addr),
            self.o.valid.eq(out_valid),
            self.o.payload.pad.eq(flags.pad),
            self.o.payload.first.eq(flags.first),
            self.o.payload.end.eq(flags.end),
            self.o.payload.last.eq(flags.last),
        ]
        for lane in range(fmt.lanes):
            m.d.comb += self.o.payload.data[lane].eq(Mux(flags.pad, 0, rdata[lane]))
        with m.If(advance):
            m.d.sync += [out_valid.eq(s1_valid), flags.eq(s1_flags), s1_valid.eq(rows_ok)]
            with m.If(s1_valid):
                m.d.sync += rdata.eq(rp.data)
        with m.If(issue):
            m.d.sync += [
                s1_addr.eq(row_base[slot_sum] + col),
                s1_flags.pad.eq(~inside),
                s1_flags.first.eq(first_of_window),
                s1_flags.end.eq(end_of_window),
                s1_flags.last.eq(end_of_image),
                s1_row_end.eq(end_of_row),
                s1_release.eq(Mux(last_oy, image_release, release)),
            ]
            if g.partial:
                m.d.sync += s1_pixel_end.eq(end_of_pixel)
            if self.order == "dense":
                _nest(m, [(cf, CL), (kx, kw), (ky, kh), (rep, self.repeats)])
                steps = [(end_of_row, None), (end_of_pixel, sw * CL - (kw * CL - 1)),
                         (last_cf & last_kx, -(kw * CL - 1)), (Const(1), 1)]
            else:
                _nest(m, [(kx, kw), (ky, kh), (cf, CL)])
                steps = [(end_of_row, None), (end_of_pixel, sw * CL - (kw - 1) * CL - (CL - 1)),
                         (last_kx & last_ky, 1 - (kw - 1) * CL), (last_kx, -(kw - 1) * CL),
                         (Const(1), CL)]
            if stepped:
                with m.If(steps[0][0]):
                    m.d.sync += col.eq((x_first * CL) % (1 << col_bits))
                for cond, delta in steps[1:]:
                    with m.Elif(cond):
                        m.d.sync += col.eq(col + delta)
            with m.If(end_of_pixel):
                if OW > 1:
                    m.d.sync += x_lo.eq(Mux(last_ox, x_first, x_lo + sw))
            with m.If(end_of_row):
                if OH > 1:
                    m.d.sync += y_lo.eq(Mux(last_oy, y_first, y_lo + sh))
                # the next row's first slot: a stride on, or the next image's row -pt
                step = Mux(last_oy, (H - (OH - 1) * sh) % R, sh % R)
                if R > 1:
                    nxt = slot_lo + step
                    m.d.sync += slot_lo.eq(Mux(nxt >= R, nxt - R, nxt))
        # row accounting: rows written; rows needed as an output row ends (a new image: the
        # reader's row 0 moves H rows on), rows released once that row's taps are all read
        read_row_end = advance & s1_valid & s1_row_end
        if g.partial:
            with m.If(advance & s1_valid):
                m.d.sync += rel_ok.eq(s1_release != 0)
                with m.If(s1_row_end):
                    m.d.sync += freed_words.eq(-pl * CL)
                with m.Elif(s1_pixel_end):
                    m.d.sync += freed_words.eq(freed_words + sw * CL)
        m.d.sync += [
            held.eq(held + row_written - Mux(read_row_end, s1_release, 0)),
            deficit.eq(deficit - row_written
                       + Mux(issue & end_of_row, Mux(last_oy, image_more, more), 0)),
        ]
        return m


def _register(m: Module, name: str, lo: int, hi: int, init: int | None = None) -> Value:
    """A register holding `lo`..`hi` (a constant when that is one value)."""
    if lo == hi:
        return Const(lo, range(lo, hi + 1))
    return Signal(range(lo, hi + 1), name=name, init=lo if init is None else init)


def _clamp(v: Value, v_lo: int, v_hi: int, lo: int, hi: int) -> Value:
    """``min(max(v, lo), hi)`` for `v` known to lie in ``[v_lo, v_hi]``."""
    if v_lo < lo:
        v = Mux(v < lo, lo, v)
    if v_hi > hi:
        v = Mux(v > hi, hi, v)
    return v


def _wrap_inc(m: Module, counter: Value, n: int) -> None:
    if n > 1:
        m.d.sync += counter.eq(Mux(counter == n - 1, 0, counter + 1))


def _nest(m: Module, loops: list[tuple[Value, int]]) -> None:
    """Advance nested counters (innermost first), each wrapping at its count."""
    counter, n = loops[0]
    if n > 1:
        with m.If(counter != n - 1):
            m.d.sync += counter.eq(counter + 1)
        with m.Else():
            m.d.sync += counter.eq(0)
            if loops[1:]:
                _nest(m, loops[1:])
    elif loops[1:]:
        _nest(m, loops[1:])
