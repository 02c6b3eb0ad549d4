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

Flow control works on whole rows, so no tap can be read before it is written or overwritten
before it is read: the writer may write row ``g`` once fewer than ``R`` rows are held; the
reader starts output row ``oy`` once every input row it needs has been written, and releases
the rows the next output row no longer needs. With ``R = kh + sh`` the writer fills the next
rows while the reader works, so neither side waits in steady state.

Cycle model (`expected_cycles`): one window beat per cycle while the consumer takes them, plus
`ROW_OVERHEAD` cycles per output row; the writer takes one input beat per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.ir import Padding, Pair, window_output_size

ROW_OVERHEAD = 1
OUT_FIFO_DEPTH = 4


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

    def __post_init__(self) -> None:
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
            return self.kernel[0] if self.compact else 2 * self.kernel[0]
        return self.kernel[0] if self.compact else self.kernel[0] + self.stride[0]

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
        or the consumer's `pixel_cycles` per position when that is slower (the reader's FIFO
        hides its row overhead then)."""
        ow = self.out_hw[1]
        beats = ow * repeats * self.taps * self.fmt.beats_per_pixel
        read = beats + ROW_OVERHEAD
        return read if pixel_cycles is None else max(read, ow * pixel_cycles)

    def steady_cycles(self, row_read: float, row_write: float, images: int = 4) -> float:
        """Steady-state cycles per image of the row protocol (an event model, exact at row
        granularity): the reader spends `row_read` cycles per output row, the writer
        `row_write` per input row."""
        h, r = self.fmt.height, self.ring_rows
        needs = self.row_needs()
        write_end: list[float] = []  # completion time of each global input row
        releases: list[tuple[float, int]] = []  # (time, rows freed so far), in time order
        writer_free = 0.0
        reader = 0.0
        image_end = []

        def write_until(rows: int) -> None:
            nonlocal writer_free
            while len(write_end) < rows:
                g = len(write_end)
                start = writer_free
                if g - r >= 0:  # row g needs row g - r released
                    release = next(t for t, freed in releases if freed > g - r)
                    start = max(start, release)
                writer_free = start + row_write
                write_end.append(writer_free)

        for img in range(images):
            for oy, (need, keep_from) in enumerate(needs):
                write_until(img * h + need)
                ready = write_end[img * h + need - 1] if need else 0.0
                reader = max(reader, ready) + row_read
                releases.append((reader, img * h + keep_from))
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
        row_words = g.row_words
        word = data.ArrayLayout(fmt.shape, fmt.lanes)

        m.submodules.ring = ring = Memory(shape=word, depth=g.words, init=[],
                                          attrs={"ram_style": self.ram_style})
        wp = ring.write_port()
        rp = ring.read_port()

        # ---- writer: input beats into the ring, whole rows at a time ----------------------
        cw = 16  # width of the global row counters (differences stay far below 2**15)
        rows_written = Signal(cw)
        rows_freed = Signal(cw)
        waddr = Signal(range(g.words))
        wbeat = Signal(range(row_words))
        # signed: the reader may release rows the writer has not reached yet (rows a stride
        # skips), and may start an image before the writer finished the previous one
        held = Signal(signed(cw))
        m.d.comb += held.eq(rows_written - rows_freed)
        can_write = Signal()
        m.d.comb += can_write.eq(held < R)
        m.d.comb += [
            self.i.ready.eq(can_write),
            wp.addr.eq(waddr),
            wp.data.eq(self.i.payload.data),
            wp.en.eq(self.i.valid & can_write),
        ]
        with m.If(self.i.valid & can_write):
            m.d.sync += waddr.eq(Mux(waddr == g.words - 1, 0, waddr + 1))
            with m.If(wbeat == row_words - 1):
                m.d.sync += [wbeat.eq(0), rows_written.eq(rows_written + 1)]
            with m.Else():
                m.d.sync += wbeat.eq(wbeat + 1)

        # ---- reader: loops over output positions and taps -------------------------------------
        oy = Signal(range(OH))
        ox = Signal(range(OW))
        rep = Signal(range(self.repeats))
        ky = Signal(range(kh))
        kx = Signal(range(kw))
        cf = Signal(range(CL))
        big = max(H, W, OH * sh, OW * sw) + max(kh, kw) + max(pt, pl) + 2
        y_lo = Signal(signed(big.bit_length() + 1), init=-pt)  # oy * sh - pt
        x_lo = Signal(signed(big.bit_length() + 1), init=-pl)  # ox * sw - pl
        r_base = Signal(cw)  # global index of the current image's row 0
        slot_lo = Signal(range(R), init=(-pt) % R)  # (r_base + y_lo) mod R
        r_base_slot = Signal(range(R))
        running = Signal()  # inside an output row

        y = Signal.like(y_lo)
        x = Signal.like(x_lo)
        m.d.comb += [y.eq(y_lo + ky), x.eq(x_lo + kx)]
        slot_sum = Signal(range(2 * R))
        tap_slot = Signal(range(R))
        m.d.comb += [
            slot_sum.eq(slot_lo + ky),
            tap_slot.eq(Mux(slot_sum >= R, slot_sum - R, slot_sum)),
        ]
        inside = Signal()
        m.d.comb += inside.eq((y >= 0) & (y < H) & (x >= 0) & (x < W))
        col = Signal(range(max(row_words, 2)))
        m.d.comb += col.eq(x.as_unsigned()[: len(col)] * CL + cf)
        m.d.comb += rp.addr.eq(tap_slot * row_words + col)

        # rows the current output row needs: min(H, max(0, y_lo + kh))
        need = Signal(range(H + 1))
        need_raw = Signal.like(y_lo)
        m.d.comb += need_raw.eq(y_lo + kh)
        m.d.comb += need.eq(Mux(need_raw > H, H, Mux(need_raw < 0, 0, need_raw)))
        available = Signal(signed(cw))
        m.d.comb += available.eq(rows_written - r_base)

        # output FIFO with credits: one read in flight at most
        m.submodules.out = out = fifo.SyncFIFO(width=window_layout(fmt).size,
                                                depth=OUT_FIFO_DEPTH)
        inflight = Signal()
        credit = Signal()
        m.d.comb += credit.eq(out.level + inflight < OUT_FIFO_DEPTH)

        # loop end conditions
        last_cf = cf == CL - 1
        last_kx = kx == kw - 1
        last_ky = ky == kh - 1
        last_rep = rep == self.repeats - 1
        last_ox = ox == OW - 1
        last_oy = oy == OH - 1
        if self.order == "dense":
            end_of_window = last_cf & last_kx & last_ky
            end_of_pixel = end_of_window & last_rep
        else:
            end_of_window = last_kx & last_ky
            end_of_pixel = end_of_window & last_cf
        end_of_row = end_of_pixel & last_ox
        end_of_image = end_of_row & last_oy
        if self.order == "dense":
            first_of_window = (cf == 0) & (kx == 0) & (ky == 0)
        else:
            first_of_window = (kx == 0) & (ky == 0)

        issue = Signal()
        m.d.comb += issue.eq(running & credit)

        # flags travel with the read (memory latency one cycle)
        flags = Signal(data.StructLayout({"pad": 1, "first": 1, "end": 1, "last": 1}))
        m.d.sync += inflight.eq(issue)
        with m.If(issue):
            m.d.sync += [
                flags.pad.eq(~inside),
                flags.first.eq(first_of_window),
                flags.end.eq(end_of_window),
                flags.last.eq(end_of_image),
            ]
        beat = Signal(window_layout(fmt))
        m.d.comb += [
            beat.pad.eq(flags.pad),
            beat.first.eq(flags.first),
            beat.end.eq(flags.end),
            beat.last.eq(flags.last),
        ]
        for lane in range(fmt.lanes):
            m.d.comb += beat.data[lane].eq(Mux(flags.pad, 0, rp.data[lane]))
        m.d.comb += [out.w_data.eq(beat.as_value()), out.w_en.eq(inflight)]
        m.d.comb += [
            self.o.payload.eq(out.r_data),
            self.o.valid.eq(out.r_rdy),
            out.r_en.eq(self.o.ready),
        ]

        # start of an output row: wait for its input rows
        with m.If(~running & (available >= need)):
            m.d.sync += running.eq(1)

        def advance_inner() -> None:
            """Advance (rep,) ky, kx, cf in the chosen order; the caller handles pixel ends."""
            if self.order == "dense":
                with m.If(~last_cf):
                    m.d.sync += cf.eq(cf + 1)
                with m.Else():
                    m.d.sync += cf.eq(0)
                    with m.If(~last_kx):
                        m.d.sync += kx.eq(kx + 1)
                    with m.Else():
                        m.d.sync += kx.eq(0)
                        with m.If(~last_ky):
                            m.d.sync += ky.eq(ky + 1)
                        with m.Else():
                            m.d.sync += [ky.eq(0), rep.eq(Mux(last_rep, 0, rep + 1))]
            else:
                with m.If(~last_kx):
                    m.d.sync += kx.eq(kx + 1)
                with m.Else():
                    m.d.sync += kx.eq(0)
                    with m.If(~last_ky):
                        m.d.sync += ky.eq(ky + 1)
                    with m.Else():
                        m.d.sync += [ky.eq(0), cf.eq(Mux(last_cf, 0, cf + 1))]

        with m.If(issue):
            advance_inner()
            with m.If(end_of_pixel):
                m.d.sync += [ox.eq(Mux(last_ox, 0, ox + 1)), x_lo.eq(Mux(last_ox, -pl, x_lo + sw))]
            with m.If(end_of_row):
                m.d.sync += running.eq(0)
                # release the rows the next output row no longer needs
                nxt = Signal.like(y_lo)
                m.d.comb += nxt.eq(y_lo + sh)
                keep_from = Mux(nxt > H, H, Mux(nxt < 0, 0, nxt))
                with m.If(last_oy):
                    m.d.sync += [
                        oy.eq(0),
                        y_lo.eq(-pt),
                        rows_freed.eq(r_base + H),
                        r_base.eq(r_base + H),
                    ]
                    next_base = (r_base_slot + H % R)
                    next_base_slot = Signal(range(R))
                    m.d.comb += next_base_slot.eq(Mux(next_base >= R, next_base - R, next_base))
                    m.d.sync += r_base_slot.eq(next_base_slot)
                    start = next_base_slot + ((-pt) % R)
                    m.d.sync += slot_lo.eq(Mux(start >= R, start - R, start))
                with m.Else():
                    m.d.sync += [
                        oy.eq(oy + 1),
                        y_lo.eq(nxt),
                        rows_freed.eq(r_base + keep_from),
                    ]
                    step = slot_lo + (sh % R)
                    m.d.sync += slot_lo.eq(Mux(step >= R, step - R, step))
        return m
