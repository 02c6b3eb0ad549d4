"""The PE array behind the same ports as the streaming pipeline's `Accelerator`, so the host
link, the board top and the host driver serve both templates unchanged.

`ArrayAccelerator` wraps an `ArrayCore` built for one compiled `Program`:

* ``load``: the program's memory image (instructions, weights, parameters; `weight_image`,
  16-bit words little-endian), one byte a cycle, written through the core's external port from
  word 0; ``loaded`` rises when all `load_bytes` have come (at once when the image is built
  into the memory's initial contents: ``baked``, every family but iCE40, whose SPRAM has none);
  ``load_restart`` starts the image over;
* ``i``: the input codes, one per beat in raster order (``in_fmt``, one lane), each packed into
  its word of the input tensor's layout exactly as `accelgen.array.compiler.to_words` does
  (lanes of the tensor's mode, code offset, pad lanes zero) and written as the word fills; the
  image's last beat starts the program;
* ``o``/``cls``: when the program ends, the output tensor's words are read back, their lanes
  decoded to values and sent one per beat (``out_fmt``) through an `ArgMax`, which also gives
  the class;
* ``latency``: the core's cycle counter for the last image (start to END: the figure
  `accelgen.array.machine.totals` predicts), ``images``: images completed;
* ``cnt_addr``/``cnt_data``: the core's per-layer counters (`layer_words` words, 8 a layer:
  `accelgen.cores.pe_array.counter_address`), which the host link sends as LAYERS.

An input beat is taken a cycle; the core runs while no beat is taken (the host link holds the
next frame's codes back until the response is out). Writes to the core's memory are
registered here and again in the core: they land two cycles after their byte or beat; a word
read back comes `MEM_LATENCY` + 1 cycles after its address is set.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accelgen.accelerator import accelerator_ports
from accelgen.array.compiler import Program
from accelgen.array.isa import MEM_LATENCY
from accelgen.array.machine import totals
from accelgen.cores.pe_array import ArrayCore
from accelgen.cores.pool import ArgMax
from accelgen.cores.streams import Format
from accelgen.errors import ShapeError


class ArrayAccelerator(wiring.Component):
    """`program` on its `ArrayCore` (module docstring), for `family`, built with
    `Program.needs` updated with `build`; `baked` (default: not on iCE40) builds the image into
    the memory instead of loading it; `layer_counters` keeps the per-layer counters readable
    (``cnt_addr``/``cnt_data``, the host link's LAYERS)."""

    def __init__(self, program: Program, *, family: str | None = None,
                 build: dict | None = None, baked: bool | None = None,
                 layer_counters: bool = True) -> None:
        self.program = program
        self.baked = (family != "ice40") if baked is None else baked
        self.core = ArrayCore(program.config, program.image if self.baked else (),
                              family=family, **program.core_options(build))
        missing = self.core.lacks(program)
        if missing:
            raise ShapeError(f"a PE array built without {', '.join(missing)} cannot run "
                             f"{program.name!r}")
        self.inp = program.tensors[program.input]
        self.out = program.tensors[program.output]
        for name, p in (("input", self.inp), ("output", self.out)):
            if p.bits > p.mode.bits:
                raise ShapeError(f"the {name} tensor has {p.bits}-bit codes in "
                                 f"{p.mode.bits}-bit lanes")
        h, w, c = self.inp.shape
        self.in_fmt = Format(h, w, c, self.inp.bits, self.inp.signed, 1)
        h, w, c = self.out.shape
        self.out_fmt = Format(h, w, c, self.out.bits, self.out.signed, 1)
        self.argmax = ArgMax(self.out_fmt)
        self.cls_bits = max(1, (self.argmax.classes - 1).bit_length())
        # the per-layer counters the host link reads (LAYERS): 8 words a layer. Without them
        # (`layer_counters` False) the counter memory and the read and write counters have
        # no reader and synthesis removes them: about 500 iCE40 logic cells
        self.layer_words = 8 * min(len(program.code), self.core.max_layers) \
            if layer_counters else 0
        super().__init__({
            **accelerator_ports(self.in_fmt, self.out_fmt, self.cls_bits),
            "cnt_addr": In(max(1, (self.layer_words - 1).bit_length())),
            "cnt_data": Out(16),
        })

    @property
    def load_bytes(self) -> int:
        """Bytes the host sends through ``load`` before the first image (0 when baked)."""
        return 0 if self.baked else 2 * len(self.program.image)

    def weight_image(self) -> bytes:
        """The memory image the host loads (`load_bytes` bytes)."""
        if self.baked:
            return b""
        return self.program.image.astype("<u2").tobytes()

    @property
    def work_cycles(self) -> int:
        """Cycles of one image on the core (what the host link's stall timer must allow)."""
        return totals(self.program)[0]

    def elaborate(self, platform) -> Module:
        m = Module()
        core = self.core
        m.submodules.core = core
        m.submodules.argmax = am = self.argmax
        if self.layer_words:  # (otherwise nothing reads the counter memory: synthesis drops it)
            m.d.comb += [core.cnt_addr.eq(self.cnt_addr), self.cnt_data.eq(core.cnt_rdata)]
        inp, out = self.inp, self.out
        abits = core.abits

        # ---- the weight image, a word every two bytes
        ld_bytes = Signal(range(max(self.load_bytes, 1) + 1))
        ld_low = Signal(8)
        ld_we = Signal()
        ld_addr = Signal(abits)
        # (loaded: ld_bytes == load_bytes, kept as a register)
        loaded = Signal(init=self.load_bytes == 0)
        m.d.comb += self.loaded.eq(loaded)
        with m.If(self.load_restart):
            m.d.sync += [ld_bytes.eq(0), loaded.eq(self.load_bytes == 0)]
        with m.Elif(self.load.valid & ~loaded):
            m.d.sync += [ld_bytes.eq(ld_bytes + 1), loaded.eq(ld_bytes == self.load_bytes - 1)]
            with m.If(ld_bytes[0]):
                m.d.comb += ld_we.eq(1)
            with m.Else():
                m.d.sync += ld_low.eq(self.load.payload)
        m.d.comb += ld_addr.eq(ld_bytes >> 1)

        # ---- input codes into words: lane `lane` of word `in_addr`
        in_lanes, in_bits = inp.mode.lanes, inp.mode.bits
        c_in = inp.shape[2]
        lane = Signal(range(in_lanes))
        chan = Signal(range(c_in))
        word = Signal(16)
        in_addr = Signal(abits, init=inp.addr)
        code = Signal(in_bits)
        m.d.comb += code.eq(self.i.payload.data[0] - inp.code_offset)
        placed = Signal(16)
        m.d.comb += placed.eq(word | (code << (lane * in_bits)))
        in_we = Signal()

        # ---- output words back to values
        out_lanes, out_bits = out.mode.lanes, out.mode.bits
        c_out = out.shape[2]
        pixels_out = out.shape[0] * out.shape[1]
        o_word = Signal(range(max(out.words, 1) + 1))
        o_lane = Signal(range(out_lanes))
        o_chan = Signal(range(c_out))
        o_pix = Signal(range(pixels_out))
        o_data = Signal(16)
        lane_code = o_data.word_select(o_lane, out_bits) if out_lanes > 1 else o_data
        value = lane_code.as_signed() + out.code_offset

        # writes reach the core's port a cycle later, from registers (the link's frame logic
        # stays off the memory's address and enable paths)
        ext_addr = Signal(abits)  # a read's address (from registers)
        w_we, w_addr, w_data = Signal(), Signal(abits), Signal(16)
        m.d.sync += [w_we.eq(ld_we | in_we), w_addr.eq(Mux(ld_we, ld_addr, in_addr)),
                     w_data.eq(Mux(ld_we, Cat(ld_low, self.load.payload), placed))]
        m.d.comb += [core.ext_addr.eq(Mux(w_we, w_addr, ext_addr)), core.ext_wdata.eq(w_data),
                     core.ext_we.eq(w_we)]

        wait = Signal(range(MEM_LATENCY))
        with m.FSM():
            with m.State("INPUT"):
                m.d.comb += self.i.ready.eq(self.loaded)
                with m.If(self.i.valid & self.loaded):
                    full = (lane == in_lanes - 1) | (chan == c_in - 1)
                    with m.If(full):
                        m.d.comb += in_we.eq(1)
                        m.d.sync += [word.eq(0), lane.eq(0), in_addr.eq(in_addr + 1)]
                    with m.Else():
                        m.d.sync += [word.eq(placed), lane.eq(lane + 1)]
                    m.d.sync += chan.eq(Mux(chan == c_in - 1, 0, chan + 1))
                    with m.If(self.i.payload.last):
                        m.d.sync += [in_addr.eq(inp.addr), chan.eq(0), lane.eq(0), word.eq(0)]
                        m.next = "START"
            with m.State("START"):
                m.d.comb += core.start.eq(1)
                m.next = "RUN"
            with m.State("RUN"), m.If(~core.busy):
                m.d.sync += [self.latency.eq(core.cycles), o_word.eq(0), o_lane.eq(0),
                             o_chan.eq(0), o_pix.eq(0)]
                m.next = "READ"
            with m.State("READ"):  # the word's address is on the port; its data comes
                m.d.comb += ext_addr.eq(out.addr + o_word)  # MEM_LATENCY cycles later
                m.d.sync += wait.eq(0)
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += ext_addr.eq(out.addr + o_word)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == MEM_LATENCY - 2):
                    m.next = "HOLD"
            with m.State("HOLD"):
                m.d.comb += ext_addr.eq(out.addr + o_word)
                m.d.sync += o_data.eq(core.ext_rdata)
                m.next = "EMIT"
            with m.State("EMIT"):
                last = (o_chan == c_out - 1) & (o_pix == pixels_out - 1)
                m.d.comb += [am.i.valid.eq(1), am.i.payload.data[0].eq(value),
                             am.i.payload.last.eq(last)]
                with m.If(am.i.ready):
                    m.d.sync += [o_chan.eq(Mux(o_chan == c_out - 1, 0, o_chan + 1)),
                                 o_lane.eq(Mux((o_lane == out_lanes - 1) | (o_chan == c_out - 1),
                                               0, o_lane + 1))]
                    with m.If(o_chan == c_out - 1):
                        m.d.sync += o_pix.eq(o_pix + 1)
                    with m.If(last):
                        m.d.sync += self.images.eq(self.images + 1)
                        m.next = "INPUT"
                    with m.Elif((o_lane == out_lanes - 1) | (o_chan == c_out - 1)):
                        m.d.sync += o_word.eq(o_word + 1)
                        m.next = "READ"
        wiring.connect(m, am.o, wiring.flipped(self.o))
        wiring.connect(m, am.cls, wiring.flipped(self.cls))
        return m


__all__ = ["ArrayAccelerator"]
