"""The PE array (seed 001): a controller that runs a compiled program layer by layer on `pes`
multi-width PEs, with every feature map, weight and parameter in one word-addressed memory.

The convolution mapping
-----------------------
A CONV instruction's output channels are taken in groups of ``gsz`` (``fold`` channels on each
of the array's `pes` PEs for a convolution, pointwise or dense layer; one word's worth of
channels, one a PE, for a depthwise layer). For each group:

1. **weights**: each PE's weight buffer receives its channels' kernels, ``k`` words each in
   the order they will be used (tap by tap, row-major; within a tap the channel words; the
   ``fold`` channels' words interleaved); then the group's parameters (bias and shift, 4
   words a channel) go to the parameter buffer;
2. **pixels**: for every output pixel, row by row, the controller reads the input words of
   every tap, one per cycle, and *broadcasts* each to all PEs, ``fold`` cycles in a row (the
   word is read once and held); PE ``p`` multiplies it lane by lane with its weight word
   (``mode``: one 16-bit, two 8-bit or four 4-bit lanes per word) and accumulates the dot
   product in the accumulator of that cycle's channel (a ring of ``fold``, `MultiModePE`). A
   tap outside the input feeds the padding word (the code of zero) without reading memory.
   So one memory read feeds ``gsz * lanes`` multiplications: more channels per PE mean fewer
   groups and fewer reads of the input, and a narrower mode packs more channels into each
   read (and its kernels fit the weight buffer more times): the reason lower widths need
   fewer memory accesses as well as fewer cycles;
3. **requantization**: when a pixel's last word has been accumulated, the PEs' accumulators
   (all ``fold`` of each) are copied to shadow registers (the PEs go on with the next pixel)
   and the requantizer
   takes one channel per cycle: bias (the compiler has folded the rounding of the shift into
   it), shift, clamp, the output's code offset; it packs the codes into words of the
   output's lanes and writes each word to its place (a write takes the memory for a cycle;
   the reads wait).

A depthwise group reads only its own channels' words; PE ``p``'s kernel has its weight in the
lane of its channel and zeros elsewhere, so the same datapath computes it.

Timing
------
Everything is counted in `accelgen.array.machine.cost`, which this hardware is tested
against cycle for cycle; the memory has one port (one read or one write per cycle).

A core built for a program
--------------------------
The instruction stream switches widths, layers and shapes at run time, but a core is built
for the programs it will run (`Program.needs`): the lane modes, operations, accumulator
width, shift range, add alignment and the bits of each instruction field they use. A build
for one model leaves out the rest (the 16-bit corrections and 4-bit operand selection of the
PEs, the max-pool comparators, the requantizer's left shifter, the upper bits of every field
and counter): on the UP5K that is what lets 8 PEs, the controller and the host link fit
(ResNet-8 at 8 bits: 4,972 of 5,280 logic cells, against 6,127 for the general core).
`ArrayCore.lacks` names what a program needs that a core does not have.
"""

from __future__ import annotations

import itertools

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accelgen.array.compiler import (
    LANE_BITS,
    MAX_ALIGN,
    MAX_LEFT_SHIFT,
    MAX_RIGHT_SHIFT,
    PARAM_WORDS,
    ArrayConfig,
)
from accelgen.array.isa import FIELDS, LAYOUT, MEM_LATENCY, WORDS, Flag, Mode, Op
from accelgen.cores.pe import LATENCY, MultiModePE, by_mode
from accelgen.errors import ShapeError

COUNTER_WORDS = 6  # per layer: cycles, reads, writes, 32 bits each


class _PortView:
    """The address/enable/data signals of a memory port, for a RAM that has one port."""

    def __init__(self, data) -> None:
        self.addr = Signal(24)
        self.en = Signal()
        self.data = data if data is not None else Signal(16)


class _Fields:
    """The fetched instruction's fields, each cut to the bits the build keeps (`fields`):
    ``ins.name`` is an unsigned or a sign-extended signed value of those bits."""

    def __init__(self, view, bits: dict[str, int]) -> None:
        self._view = view
        self._bits = bits
        self._signed = {name: s for name, _, s in FIELDS}

    def __getattr__(self, name: str):
        v = Value.cast(getattr(self._view, name))[:self._bits[name]]
        return v.as_signed() if self._signed[name] else v


class ArrayCore(wiring.Component):
    """The controller, PEs and memory (module docstring).

    `image` initialises the memory (program, weights, parameters; the input may be written
    through the ``ext_*`` port while ``busy`` is low); ``start`` runs the program from word 0;
    ``busy`` falls when END is reached. ``cycles`` counts the cycles of the last run;
    ``reads``/``writes`` its memory accesses; ``cnt_rdata`` is word ``cnt_addr`` of the
    per-layer counters (a cycle after the address): for each layer the run's cycles, reads and
    writes *up to its end* (`layer_counters` turns them into each layer's own).

    `acc_bits`, `modes`, `shifts`, `ops`, `align` and `folds` specialise the hardware to the
    programs it will run (`Program.acc_bits`, `.modes`, `.shift_range`, `.ops`, `.align`,
    `.folds`; `folds` at most `ArrayConfig.folds`): an
    operation left out has no logic; a program needing more is undefined (`Program.needs`
    lists them all, `ArrayCore.lacks` checks a program against a core).
    """

    def __init__(self, config: ArrayConfig, image, *, acc_bits: int = 48,
                 family: str | None = None, max_layers: int = 64, modes=None,
                 shifts: tuple[int, int] = (-MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT), ops=None,
                 align: int = MAX_ALIGN, fields: dict[str, int] | None = None,
                 folds: int | None = None) -> None:
        self.config = config
        self.folds = config.folds if folds is None else folds
        if not 1 <= self.folds <= config.folds:
            raise ShapeError(f"{folds!r} accumulators a PE: the array {config} has 1.."
                             f"{config.folds}")
        self.fields = {name: bits for name, bits, _ in FIELDS}
        for name, bits in (fields or {}).items():
            if name not in self.fields or not 1 <= bits <= self.fields[name]:
                raise ShapeError(f"instruction field {name!r} of {bits!r} bits (the ISA's is "
                                 f"{self.fields.get(name)})")
            self.fields[name] = bits
        self.ops = frozenset(Op) if ops is None else frozenset(Op(v) for v in ops)
        if not 0 <= align <= MAX_ALIGN:
            raise ShapeError(f"alignment {align!r}: an add's inputs shift left by 0..{MAX_ALIGN}")
        self.align = align
        self.shifts = (int(shifts[0]), int(shifts[1]))
        if not -MAX_LEFT_SHIFT <= self.shifts[0] <= 0 <= self.shifts[1] <= MAX_RIGHT_SHIFT:
            raise ShapeError(f"shift range {shifts!r}: the requantizer takes "
                             f"{-MAX_LEFT_SHIFT}..0 .. 0..{MAX_RIGHT_SHIFT}")
        self.modes = frozenset(Mode) if modes is None else frozenset(Mode(v) for v in modes)
        self.image = [int(v) for v in image]
        if len(self.image) > config.mem_words:
            raise ShapeError(f"an image of {len(self.image)} words for a memory of "
                             f"{config.mem_words}")
        self.acc_bits = acc_bits
        self.family = family
        self.max_layers = max_layers
        cbits = max(1, (8 * max_layers - 1).bit_length())
        abits = max(1, (config.mem_words - 1).bit_length())
        self.abits = abits
        super().__init__({
            "start": In(1), "busy": Out(1),
            "ext_addr": In(abits), "ext_wdata": In(16), "ext_we": In(1), "ext_rdata": Out(16),
            "cycles": Out(32), "reads": Out(32), "writes": Out(32),
            "cnt_addr": In(cbits), "cnt_rdata": Out(16),
        })

    def lacks(self, program) -> list[str]:
        """What `program` needs that this core was built without (empty: it runs here)."""
        need = program.needs()
        out = []
        if need["acc_bits"] > self.acc_bits:
            out.append(f"a {need['acc_bits']}-bit accumulator (built with {self.acc_bits})")
        out += [f"{m.name} lanes" for m in sorted(need["modes"] - self.modes)]
        out += [f"the {op.name} operation" for op in sorted(need["ops"] - self.ops)]
        lo, hi = need["shifts"]
        if lo < self.shifts[0] or hi > self.shifts[1]:
            out.append(f"shifts {lo}..{hi} (built for {self.shifts[0]}..{self.shifts[1]})")
        if need["folds"] > self.folds:
            out.append(f"{need['folds']} accumulators a PE (built with {self.folds})")
        if need["align"] > self.align:
            out.append(f"add alignment {need['align']} (built for {self.align})")
        out += [f"{bits}-bit field {name!r} (built with {self.fields[name]})"
                for name, bits in need["fields"].items() if bits > self.fields[name]]
        if program.config != self.config:
            out.append(f"the array {program.config} (built as {self.config})")
        return out

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        P = cfg.pes
        F = self.folds  # accumulators per PE: a group is up to F * P channels
        # the memory: one port whose requests (address, enable, write data) are registered
        # before it and whose read data after it, so a read's data comes `MEM_LATENCY` (3)
        # cycles after its address and a write lands a cycle after its request (reads and
        # writes keep their order). On an iCE40 board it is SPRAM (no initial value: the
        # host loads the program), whose pins then see flip-flops alone (`SinglePortRam`'s
        # ``registered``); elsewhere block RAM, initialised with `image`
        rd = _PortView(None)
        wr = _PortView(None)
        if self.family == "ice40" and platform is not None:
            from accelgen.memory.spram import SinglePortRam

            ram = SinglePortRam(cfg.mem_words, 16, "ice40", registered=True)
            m.submodules.mem = ram
            m.d.comb += [ram.addr.eq(Mux(wr.en, wr.addr, rd.addr)), ram.we.eq(wr.en),
                         ram.wdata.eq(wr.data), rd.data.eq(ram.rdata)]
        else:
            mem = Memory(shape=16, depth=cfg.mem_words, init=self.image)
            m.submodules.mem = self.memory = mem
            mrd = mem.read_port()
            mwr = mem.write_port()
            m.d.sync += [mrd.addr.eq(rd.addr), mrd.en.eq(rd.en), mwr.addr.eq(wr.addr),
                         mwr.en.eq(wr.en), mwr.data.eq(wr.data)]
            m.d.sync += rd.data.eq(mrd.data)
        m.d.comb += self.ext_rdata.eq(rd.data)
        L = MEM_LATENCY

        pes = []
        wbufs = []
        for p in range(P):
            pe = MultiModePE(self.acc_bits, self.family, self.modes, F)
            m.submodules[f"pe{p}"] = pe
            pes.append(pe)
            wb = Memory(shape=16, depth=cfg.wbuf_words, init=[])
            m.submodules[f"wbuf{p}"] = wb
            wbufs.append((wb.read_port(), wb.write_port()))
        pbuf = Memory(shape=64, depth=F * P, init=[])
        m.submodules.pbuf = pbuf
        prd, pwr = pbuf.read_port(), pbuf.write_port(granularity=16)

        # per-layer counters: when an instruction is fetched, the run's cycles, reads and
        # writes so far (each 32 bits) go to the previous layer's row of the counter memory;
        # read a 16-bit word at a time through cnt_addr (`counter_address`)/cnt_rdata
        cmem = Memory(shape=16 * COUNTER_WORDS, depth=self.max_layers, init=[])
        m.submodules.counters = cmem
        crd, cwr = cmem.read_port(), cmem.write_port()
        csel = Signal(3)
        m.d.sync += csel.eq(self.cnt_addr[:3])
        m.d.comb += [crd.addr.eq(self.cnt_addr >> 3),
                     self.cnt_rdata.eq(Mux(csel < COUNTER_WORDS, crd.data.word_select(csel, 16),
                                           0))]
        layer = Signal(range(self.max_layers + 1))

        # the instruction's words, each written where it belongs as it is fetched (bits of
        # fields the hardware does not use are no registers at all)
        iwords = [Signal(16, name=f"iword{k}") for k in range(WORDS)]
        ins = _Fields(LAYOUT(Cat(*iwords)[:LAYOUT.size]), self.fields)
        pc = Signal(self.abits)
        # the current step's counter
        cnt = Signal(range(max(WORDS + MEM_LATENCY, PARAM_WORDS * F * P) + 2))

        # ---------------------------------------------------------------- memory access
        # the controller asks for at most one access per cycle: a read (r_en/r_addr) or a
        # write (w_en/w_addr/w_data); the external port is used while idle
        r_en = Signal()
        r_addr = Signal(self.abits)
        w_en = Signal()
        w_addr = Signal(self.abits)
        w_data = Signal(16)
        with m.If(self.busy):
            m.d.comb += [rd.en.eq(r_en), rd.addr.eq(r_addr), wr.en.eq(w_en),
                         wr.addr.eq(w_addr), wr.data.eq(w_data)]
        with m.Else():
            m.d.comb += [rd.en.eq(1), rd.addr.eq(self.ext_addr), wr.en.eq(self.ext_we),
                         wr.addr.eq(self.ext_addr), wr.data.eq(self.ext_wdata)]
        with m.If(self.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(r_en):
                m.d.sync += self.reads.eq(self.reads + 1)
            with m.If(w_en):
                m.d.sync += self.writes.eq(self.writes + 1)

        # ---------------------------------------------------------------- CONV state
        lanes_y = Signal(3)
        modes = sorted(self.modes)
        m.d.comb += lanes_y.eq(by_mode(ins.y_mode, {k: k.lanes for k in modes}))
        fb = self.fields  # (the counters are as wide as the fields they count to)
        # each loop's bound minus one and minus two, and whether it is 1, registered when the
        # instruction is decoded: a last-value flag compares its counter with a register
        # (no subtractor in front of the comparison)
        loop_fields = ("tapw", "xcw", "kw", "kh", "ow", "oh", "k", "fold", "groups", "gsz",
                       "rk")
        bound = {f: getattr(ins, f) for f in loop_fields}
        bound["lanes"] = lanes_y
        minus1 = {f: Signal(signed(len(v) + 2), name=f"{f}_m1") for f, v in bound.items()}
        minus2 = {f: Signal(signed(len(v) + 2), name=f"{f}_m2") for f, v in bound.items()}
        is1 = {f: Signal(name=f"{f}_is1") for f in bound}
        decoded = Signal()  # (the DECODE state)
        with m.If(decoded):
            m.d.sync += [minus1[f].eq(v - 1) for f, v in bound.items()]
            m.d.sync += [minus2[f].eq(v - 2) for f, v in bound.items()]
            m.d.sync += [is1[f].eq(v == 1) for f, v in bound.items()]
        g = Signal(fb["groups"])  # group
        gl = Signal()  # g at its last value
        gw = Signal(max(fb["gwords"], fb["lwords"], 1))  # output words of this group
        wptr = Signal(self.abits)
        pptr = Signal(self.abits)
        # the group's origin: the layer's, plus (depthwise) the group's first channel word
        gorg = Signal(self.abits)
        ybase = Signal(fb["ycw"])  # first output word of the group within a pixel
        lp = Signal(range(P + 1))  # loading: PE / channel
        lk = Signal(range(cfg.wbuf_words + 1))  # loading: word
        # loading: more words to read (registered comparisons, off the memory's address path)
        lmore, pmore = Signal(), Signal()
        lw = Signal(fb["k"])  # loading with folds: kernel word
        lf = Signal(range(F + 1))  # ... and channel of the PE
        kl, lwl, lfl = Signal(), Signal(), Signal()  # lk, lw, lf at their last value
        # CONV issue: the PE's channel the word is issued for, and it at its last value
        fi, fl = (Signal(range(F + 1)), Signal()) if F > 1 else (Const(0, 1), Const(1, 1))
        oy, ox = Signal(fb["oh"]), Signal(fb["ow"])
        oyl, oxl = Signal(), Signal()  # oy, ox at their last value
        r, c = Signal(fb["kh"]), Signal(fb["kw"])
        j = Signal(max(fb["tapw"], fb["xcw"]))
        ph = Signal()
        jl, cl, rl = Signal(), Signal(), Signal()  # CONV: j, c, r at their last value
        # (a window row or column in [-pt, h + kh): two bits beyond the widest of them)
        yx_bits = max(fb["h"], fb["w"], fb["kh"], fb["kw"], fb["pt"], fb["pl"]) + 2
        iy0, ix0 = Signal(signed(yx_bits)), Signal(signed(yx_bits))
        # (addresses wrap at the memory's size: a tap outside the input may have a negative
        # address, never read; one inside is right modulo the size)
        ra = Signal(self.abits)  # address of tap (0, 0) of the current row's first pixel
        pa = Signal(self.abits)  # ... of the current pixel
        ra_n, pa_n = Signal(self.abits), Signal(self.abits)  # ra + srow, pa + scw (kept so)
        tr = Signal(self.abits)  # ... of tap (r, 0)
        tc = Signal(self.abits)  # ... of tap (r, c)
        iy = Signal(signed(yx_bits))
        ix = Signal(signed(yx_bits))
        m.d.comb += [iy.eq(iy0 + r), ix.eq(ix0 + c)]
        inside = Signal()
        m.d.comb += inside.eq((iy >= 0) & (iy < ins.h) & (ix >= 0) & (ix < ins.w))
        sixteen2 = Signal()  # each word takes two cycles (iCE40: 16-bit and 4-bit words)
        if cfg.word16_cycles == 2:
            with m.If(decoded):
                m.d.sync += sixteen2.eq(by_mode(ins.mode, {k: k.lanes != 2 for k in modes}))

        # issue-stage outputs, delayed to the PEs
        iss = Signal()  # a word is issued this cycle
        iss_first = Signal()
        iss_last = Signal()
        iss_in = Signal()
        iss_ph = Signal()
        iss_rep = Signal()  # the word is the one issued before, for the PEs' next channel
        kcount = Signal(range(cfg.wbuf_words + 1))  # the next word's index in the kernel
        iss_kidx = Signal.like(kcount)  # ... and the issued one's
        # the issue register (PIXELS): the next word, its address and flags
        i_v, i_first, i_last, i_in, i_ph, i_rep, i_rd = (
            Signal(name=f"i_{n}") for n in ("v", "first", "last", "in", "ph", "rep", "rd"))
        i_kidx = Signal.like(kcount)
        i_addr = Signal(self.abits)
        cmore = Signal()  # the counters hold a word of the group not yet in the register
        # L stages (L = MEM_LATENCY): the memory's read is under way in the first L - 1 (the
        # PEs' weight buffers are read in stage L - 1, at the word's kernel index), its data
        # arrives in stage L, which feeds the PEs
        stages = [{"v": iss, "first": iss_first, "last": iss_last, "inside": iss_in,
                   "ph": iss_ph, "rep": iss_rep, "kidx": iss_kidx}]
        for k in range(1, L + 1):
            st = {n: Signal.like(v, name=f"{n}{k}") for n, v in stages[-1].items()
                  if n != "kidx" or k < L}
            m.d.sync += [st[n].eq(stages[-1][n]) for n in st]
            stages.append(st)
        sw = stages[L]  # the stage whose word arrives
        abuf = Signal(16)  # the word of phase 0 (and fold 0), held for phase 1 (the folds)
        a_word = Signal(16)
        m.d.comb += a_word.eq(Mux(sw["ph"] | sw["rep"], abuf,
                                  Mux(sw["inside"], rd.data, ins.pad)))
        with m.If(sw["v"] & ~sw["ph"] & ~sw["rep"]):
            m.d.sync += abuf.eq(a_word)
        for p, pe in enumerate(pes):
            rport, _ = wbufs[p]
            m.d.comb += [rport.addr.eq(stages[L - 1]["kidx"]), rport.en.eq(stages[L - 1]["v"])]
            m.d.comb += [pe.a.eq(a_word), pe.w.eq(rport.data), pe.mode.eq(ins.mode),
                         pe.phase.eq(sw["ph"]), pe.valid.eq(sw["v"]),
                         pe.clear.eq(sw["first"] & ~sw["ph"])]
            if F > 1:
                m.d.comb += pe.fold.eq(ins.fold)
        # a pixel's last word in each issue stage
        last_in = [stages[k]["last"] & stages[k]["v"] for k in range(1, L + 1)]
        # the pixel's last word reaches the accumulators LATENCY cycles after it entered
        last_pipe = [Signal(name=f"last_d{k}") for k in range(LATENCY + 1)]
        m.d.sync += last_pipe[0].eq(last_in[-1])
        for k in range(LATENCY):
            m.d.sync += last_pipe[k + 1].eq(last_pipe[k])
        capture = Signal()
        m.d.comb += capture.eq(last_pipe[LATENCY - 1])

        # ---------------------------------------------------------------- requantizer
        # the shadow registers: loaded from the PEs at once, then shifted towards shadow0 a
        # channel a cycle as the requantizer takes them (a shift costs no multiplexer)
        # (with folds: shadow j * P + p is PE p's accumulator j words back, the group's
        # channel j * P + p)
        shadow = [Signal(signed(self.acc_bits), name=f"shadow{p}") for p in range(F * P)]
        slots = [pe.acc for pe in pes]
        for back in range(F - 1):
            slots += [pe.held[back] for pe in pes]
        rq_left = Signal(range(F * P + 1))  # channels still to requantize
        rq_p = Signal(range(F * P + 1))  # the next one (its parameters' address)
        gsz = Signal(8)
        m.d.comb += gsz.eq(ins.gsz)
        with m.If(capture):
            m.d.sync += [rq_left.eq(gsz), rq_p.eq(0)]
            m.d.sync += [s.eq(v) for s, v in zip(shadow, slots, strict=True)]
        with m.Elif(rq_left != 0):
            m.d.sync += [rq_left.eq(rq_left - 1), rq_p.eq(rq_p + 1)]
            m.d.sync += [s.eq(n) for s, n in itertools.pairwise(shadow)]
        # R0: parameter read, shadow selected
        # (the vector operations feed values through vq_valid/vq_value instead: no bias, the
        # instruction's shift)
        vq_valid = Signal()
        vq_value = Signal(signed(self.acc_bits))
        vec = Signal()  # the current instruction is a vector operation
        r0 = Signal()
        m.d.comb += r0.eq((rq_left != 0) | vq_valid)
        m.d.comb += [prd.addr.eq(rq_p), prd.en.eq(1)]
        sacc = Signal(signed(self.acc_bits))
        r1 = Signal()
        m.d.sync += sacc.eq(Mux(vq_valid, vq_value, shadow[0]))
        m.d.sync += r1.eq(r0)
        # R1: bias added
        # (the bias fits the accumulator: the compiler's bound covers products and bias)
        # (a convolution's bias has its rounding folded in by the compiler; a vector
        # operation's rounding is added here, from its instruction's shift)
        left_max, right_max = max(0, -self.shifts[0]), max(0, self.shifts[1])
        vec_round = 0
        if right_max:
            vs = ins.shift
            vec_round = Mux(vs > 0, Const(1, right_max) << (vs - 1)[:right_max.bit_length()]
                            .as_unsigned(), 0)
        bias = Mux(vec, vec_round, prd.data[:min(self.acc_bits, 48)].as_signed())
        shift = Mux(vec, ins.shift, prd.data[48:64].as_signed())
        total = Signal(signed(self.acc_bits + 1))
        sh1 = Signal(signed(16))
        r2 = Signal()
        m.d.sync += [total.eq(sacc + bias), sh1.eq(shift), r2.eq(r1)]
        # R2: shift (right: floor, the rounding already added; or left), within the build's
        # shift range
        shifted = Signal(signed(self.acc_bits + 2 + left_max))
        r3 = Signal()
        right_part = total
        if right_max:
            right_part = total >> sh1[:right_max.bit_length()].as_unsigned()
        if left_max:
            left_part = total << (-sh1)[:left_max.bit_length()].as_unsigned()
            m.d.sync += shifted.eq(Mux(sh1 >= 0, right_part, left_part))
        else:
            m.d.sync += shifted.eq(right_part)
        m.d.sync += r3.eq(r2)
        # R3: clamp, code offset, into the output word
        y = Signal(signed(18))
        m.d.comb += y.eq(Mux(shifted < ins.lo, ins.lo, Mux(shifted > ins.hi, ins.hi, shifted)))
        # the lane's code in the output word: its low bits, the top one flipped for an offset
        # code (y - 2**(bits - 1) modulo 2**bits, no subtractor); lanes enter the word at its
        # top and move down a lane each time (no shifter: after `lanes` of them the first is
        # at bit 0)
        y_off = Signal()
        m.d.comb += y_off.eq((ins.flags & Flag.Y_OFF) != 0)
        outw = Signal(16)
        olane = Signal(3)
        ochan = Signal(range(F * P + 1))  # channels of this pixel requantized so far
        wq = Signal()  # a word waits to be written
        wq_data = Signal(16)
        yaddr = Signal(self.abits)
        owrd = Signal.like(gw)  # words of this pixel written
        placed = Signal(16)  # outw with this lane put in
        m.d.comb += placed.eq(by_mode(ins.y_mode, {
            k: Cat(outw[k.bits:], y.as_unsigned()[:k.bits] ^ Mux(y_off, 1 << (k.bits - 1), 0))
            for k in modes}))
        ystep = Signal(self.abits)  # yaddr's step after a pixel's last word of the group
        word_ready = Signal()
        write_now = Signal()  # the sequencer writes the waiting word this cycle
        wcount = Signal.like(gw)  # words of this pixel written
        # (flags kept with their counters, so no comparison lies on the requantizer's
        # enables: olane == lanes_y - 1, ochan == gsz - 1, owrd < gw, wcount == gw - 1)
        ol, ocl, omore, wcl = Signal(), Signal(), Signal(), Signal()
        gw_m2, gw_is1 = Signal(signed(len(gw) + 2)), Signal()  # gw - 2, gw == 1 (set with gw)
        m.d.comb += word_ready.eq(r3 & ol & (vec | omore))
        with m.If(word_ready):
            m.d.sync += [wq.eq(1), wq_data.eq(placed)]
        with m.Elif(write_now):
            m.d.sync += wq.eq(0)
        with m.If(write_now):
            m.d.comb += [w_en.eq(1), w_addr.eq(yaddr), w_data.eq(wq_data)]
            with m.If(wcl):
                m.d.sync += [wcount.eq(0), wcl.eq(gw_is1), yaddr.eq(yaddr + ystep)]
            with m.Else():
                m.d.sync += [wcount.eq(wcount + 1), wcl.eq(wcount == gw_m2),
                             yaddr.eq(yaddr + 1)]
        with m.If(r3):
            with m.If(ol):
                m.d.sync += [olane.eq(0), ol.eq(is1["lanes"]), outw.eq(0)]
            with m.Else():
                m.d.sync += [olane.eq(olane + 1), ol.eq(olane == minus2["lanes"]),
                             outw.eq(placed)]
            with m.If(ocl):
                m.d.sync += [ochan.eq(0), ocl.eq(is1["gsz"])]
            with m.Else():
                m.d.sync += [ochan.eq(ochan + 1), ocl.eq(ochan == minus2["gsz"])]
            with m.If(ol):
                with m.If(ocl):
                    m.d.sync += [owrd.eq(0), omore.eq(1)]
                with m.Else():
                    m.d.sync += [owrd.eq(owrd + 1), omore.eq(owrd + 1 < gw)]
        in_flight = Signal()  # a pixel's last word on its way to the shadow registers
        m.d.comb += in_flight.eq(Cat(*last_in).any() | last_pipe[0] | capture)
        # rq_wait == (rq_left != 0) | in_flight, kept as a register computed from the next
        # values of its parts, so the issue stage's hold is a few gates deep
        rq_wait = Signal()
        nz_next = Signal()  # rq_left != 0 next cycle
        m.d.comb += nz_next.eq(Mux(capture, gsz != 0, rq_left > 1))
        m.d.sync += rq_wait.eq(nz_next | (iss & iss_last) | Cat(*last_in).any()
                               | last_pipe[LATENCY - 2])
        # rq_idle: nothing in the requantizer or on its way to it (r0 | r1 | r2 | r3 | wq |
        # capture | last_pipe[0] | any stage's v all low), in the states that wait for it (they
        # feed it no lane: vq_valid low), kept the same way: the next values of those parts
        # (capture is last_pipe[LATENCY - 1], LATENCY >= 2)
        rq_idle = Signal()
        m.d.sync += rq_idle.eq(~(nz_next | r0 | r1 | r2 | word_ready | (wq & ~write_now)
                                 | last_pipe[LATENCY - 2] | last_in[-1] | iss
                                 | Cat(*(stages[k]["v"] for k in range(1, L))).any()))

        # ---------------------------------------------------------------- vector unit
        vi = Signal(fb["k"])  # ADD: words whose reads are issued
        va, vb = Signal(16), Signal(16)  # ADD: the lane unit's words
        na, nb = Signal(16), Signal(16)  # ADD: the next pair, read ahead
        # ADD: first input read; second input read (then its data on its way, then arriving)
        # (bq: the second read's L cycles until its data, ad: the first's)
        ax = Signal()
        bq = [Signal(name=f"ax_b{k}") for k in range(L)]
        ad = [Signal(name=f"ax_a{k}") for k in range(L)]
        b_on_way = Cat(*bq).any()
        afull, vact = Signal(), Signal()  # ADD: na/nb hold a pair; the lane unit has one
        vk = Signal(3)  # lane
        vkl = Signal()  # vk == lanes_y - 1
        vdone = Signal()  # ADD: vi == k (every word's reads issued)
        # a pool tap's word read / is the window's first; (2) its data arrives
        # (pv: a tap inside the input was read; its data arrives L - 1 cycles later, when the
        # lane accumulators take it, the window's first such tap as their start: `started`)
        pv = Signal()
        pv_d = [pv] + [Signal(name=f"pv{k}") for k in range(1, L)]
        m.d.sync += [pv_d[k + 1].eq(pv_d[k]) for k in range(L - 1)]
        started = Signal()  # a tap of this window has reached the accumulators
        lanes_max = max(k.lanes for k in modes)
        lane_acc = [Signal(signed(LANE_BITS), name=f"lane_acc{k}") for k in range(lanes_max)]
        mi = Signal(7)
        mil = Signal()  # mi == rk
        mp = Signal(LANE_BITS + 4)  # an average's t * rm >> i (t = 2 * sum + rc >= 0)
        mt = Signal(LANE_BITS + 3)  # t
        rm_bit = Signal()  # bit mi - 1 of rm

        def lane_value(word, k, mode, off):
            """Lane `k` of `word` in `mode`, decoded (offset codes back to values)."""
            vals = {}
            for md in modes:
                v = word.word_select(k[:(md.lanes - 1).bit_length()], md.bits) \
                    if md.lanes > 1 else word
                vals[md] = v.as_signed() + Mux(off, 1 << (md.bits - 1), 0)
            return by_mode(mode, vals)

        x_off, x2_off = Signal(), Signal()
        m.d.comb += [x_off.eq((ins.flags & Flag.X_OFF) != 0),
                     x2_off.eq((ins.flags & Flag.X2_OFF) != 0)]
        has_add = Op.ADD in self.ops
        has_max, has_avg = Op.MAXPOOL in self.ops, Op.AVGPOOL in self.ops
        for k in range(lanes_max if has_max or has_avg else 0):
            val = lane_value(rd.data, Const(k, 3), ins.mode, x_off)
            larger = Mux(val > lane_acc[k], val, lane_acc[k])
            total = lane_acc[k] + val
            with m.If(pv_d[L - 1]):
                with m.If(~started):
                    m.d.sync += lane_acc[k].eq(val)
                with m.Else():
                    m.d.sync += lane_acc[k].eq(
                        Mux(ins.op == Op.MAXPOOL, larger, total) if has_max and has_avg
                        else (larger if has_max else total))
        with m.If(pv_d[L - 1]):  # (POOL_LAST's reset, written later, wins)
            m.d.sync += started.eq(1)
        lane_acc_sel = Signal(signed(LANE_BITS))
        with m.Switch(vk):
            for k in range(lanes_max):
                with m.Case(k):
                    m.d.comb += lane_acc_sel.eq(lane_acc[k])

        def aligned(v, amount):
            """`v` shifted left by `amount` (at most the build's `align`)."""
            if not self.align:
                return v
            return v << amount[:self.align.bit_length()].as_unsigned()

        def next_pixel(after_last: str | None, otherwise: str | None) -> None:
            """Step to the next output pixel (row-major) and its tap addresses; after the last
            pixel go to state `after_last`, else to `otherwise` (None: stay)."""
            with m.If(~oxl):
                m.d.sync += [ox.eq(ox + 1), ix0.eq(ix0 + ins.sw), pa.eq(pa_n),
                             pa_n.eq(pa_n + ins.scw), tr.eq(pa_n), tc.eq(pa_n),
                             oxl.eq(ox == minus2["ow"])]
                if otherwise:
                    m.next = otherwise
            with m.Else():
                m.d.sync += [ox.eq(0), ix0.eq(-ins.pl), oy.eq(oy + 1), iy0.eq(iy0 + ins.sh),
                             ra.eq(ra_n), ra_n.eq(ra_n + ins.srow), pa.eq(ra_n),
                             pa_n.eq(ra_n + ins.scw), tr.eq(ra_n), tc.eq(ra_n),
                             oxl.eq(is1["ow"]),
                             oyl.eq(oy == minus2["oh"])]
                if after_last:
                    with m.If(oyl):
                        m.next = after_last
                if otherwise:
                    with m.Else():
                        m.next = otherwise

        # ---------------------------------------------------------------- sequencer
        with m.FSM():
            with m.State("IDLE"), m.If(self.start):
                m.d.sync += [self.busy.eq(1), pc.eq(0), cnt.eq(0), self.cycles.eq(0),
                             self.reads.eq(0), self.writes.eq(0), layer.eq(0)]
                m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(cnt == 0):
                    with m.If((layer != 0) & (layer <= self.max_layers)):
                        m.d.comb += [cwr.en.eq(1), cwr.addr.eq(layer - 1),
                                     cwr.data.eq(Cat(self.cycles, self.reads, self.writes))]
                    m.d.sync += layer.eq(layer + 1)
                with m.If(cnt < WORDS):  # (pc: the next word to fetch)
                    m.d.comb += [r_en.eq(1), r_addr.eq(pc)]
                    m.d.sync += pc.eq(pc + 1)
                for k in range(WORDS):  # (word k's data comes L cycles after its read)
                    with m.If(cnt == k + L):
                        m.d.sync += iwords[k].eq(rd.data)
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == WORDS + L - 1):
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += decoded.eq(1)
                m.d.sync += cnt.eq(0)
                m.next = "DISPATCH"
            with m.State("DISPATCH"), m.Switch(ins.op):
                with m.Case(Op.CONV):
                    m.d.sync += [g.eq(0), gl.eq(is1["groups"]), wptr.eq(ins.w_addr),
                                 pptr.eq(ins.p_addr), gorg.eq(ins.org), ybase.eq(0)]
                    m.next = "GROUP"
                with m.Case(Op.END):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
                if has_add:
                    with m.Case(Op.ADD):
                        # (tc, tr: the next word of each input)
                        m.d.sync += [tc.eq(ins.x_addr), tr.eq(ins.x2_addr)]
                        m.d.sync += [vec.eq(1), vi.eq(0), vdone.eq(ins.k == 0),
                                     yaddr.eq(ins.y_addr), gw.eq(1), gw_m2.eq(-1),
                                     gw_is1.eq(1), ystep.eq(1),
                                     wcount.eq(0), wcl.eq(1), olane.eq(0),
                                     ol.eq(is1["lanes"]), outw.eq(0), ax.eq(0),
                                     *(b.eq(0) for b in bq), *(a.eq(0) for a in ad),
                                     afull.eq(0), vact.eq(0)]
                        m.next = "ADD_RUN"
                pools = [op for op in (Op.MAXPOOL, Op.AVGPOOL) if op in self.ops]
                if pools:
                    with m.Case(*pools):
                        m.d.sync += [vec.eq(1), yaddr.eq(ins.y_addr), gw.eq(1), gw_m2.eq(-1),
                                     gw_is1.eq(1), ystep.eq(1),
                                     wcount.eq(0), wcl.eq(1), olane.eq(0),
                                     ol.eq(is1["lanes"]), jl.eq(is1["xcw"]),
                                     cl.eq(is1["kw"]), rl.eq(is1["kh"]),
                                     outw.eq(0), oy.eq(0), ox.eq(0), r.eq(0),
                                     c.eq(0), j.eq(0), iy0.eq(-ins.pt), ix0.eq(-ins.pl),
                                     ra.eq(ins.org), pa.eq(ins.org), tr.eq(ins.org),
                                     ra_n.eq(ins.org + ins.srow), pa_n.eq(ins.org + ins.scw),
                                     tc.eq(ins.org), oxl.eq(is1["ow"]),
                                     oyl.eq(is1["oh"])]
                        m.next = "POOL_TAP"
                with m.Default():
                    m.next = "NEXT"
            with m.State("GROUP"):
                # the pixel loop's counters and addresses (unused while the group loads)
                m.d.sync += [jl.eq(is1["tapw"]), cl.eq(is1["kw"]), rl.eq(is1["kh"])]
                if F > 1:
                    m.d.sync += [fi.eq(0), fl.eq(is1["fold"])]
                m.d.sync += [oy.eq(0), ox.eq(0), r.eq(0), c.eq(0), j.eq(0), ph.eq(0),
                             iy0.eq(-ins.pt), ix0.eq(-ins.pl), ra.eq(gorg),
                             pa.eq(gorg), tr.eq(gorg), tc.eq(gorg), ra_n.eq(gorg + ins.srow),
                             pa_n.eq(gorg + ins.scw),
                             oxl.eq(is1["ow"]), oyl.eq(is1["oh"]), i_v.eq(0), cmore.eq(1)]
                words = Mux(gl, ins.lwords, ins.gwords)
                m.d.sync += [lp.eq(0), lk.eq(0), cnt.eq(0), gw.eq(words),
                             gw_m2.eq(words - 2), gw_is1.eq(words == 1),
                             ystep.eq(ins.ycw - words + 1),
                             yaddr.eq(ins.y_addr + ybase), owrd.eq(0), omore.eq(1),
                             olane.eq(0), ol.eq(is1["lanes"]), wcount.eq(0),
                             wcl.eq(words == 1), outw.eq(0), ochan.eq(0), ocl.eq(is1["gsz"]),
                             lmore.eq(1), kl.eq(is1["k"]), lwl.eq(is1["k"]),
                             lfl.eq(is1["fold"])]
                m.next = "LOADW"
            with m.State("LOADW"):
                # read word (lp, lk) of the group's kernels; write it to PE lp's buffer a
                # cycle later
                # (with folds, a PE's k * fold words: lk its buffer's address, lw the kernel
                # word, lf the channel)
                issue = Signal()
                m.d.comb += issue.eq(lmore)
                with m.If(issue):
                    m.d.comb += [r_en.eq(1), r_addr.eq(wptr)]
                    m.d.sync += wptr.eq(wptr + 1)
                    # (kl, lwl, lfl: lk == k - 1, lw == k - 1, lf == fold - 1)
                    pe_done = kl
                    if F > 1:
                        pe_done = lwl & lfl
                        with m.If(lfl):
                            m.d.sync += [lf.eq(0), lfl.eq(is1["fold"]), lw.eq(lw + 1),
                                         lwl.eq(lw == minus2["k"])]
                        with m.Else():
                            m.d.sync += [lf.eq(lf + 1), lfl.eq(lf == minus2["fold"])]
                        with m.If(pe_done):
                            m.d.sync += [lw.eq(0), lwl.eq(is1["k"])]
                    with m.If(pe_done):
                        m.d.sync += [lk.eq(0), kl.eq(is1["k"]), lp.eq(lp + 1),
                                     lmore.eq((lp + 1 < gsz) & (lp + 1 < P) if F > 1
                                              else lp + 1 < gsz)]
                    with m.Else():
                        m.d.sync += [lk.eq(lk + 1), kl.eq(lk == minus2["k"])]
                # (the word's data comes L cycles after its read: its PE and address wait in
                # L stages, the last with the PE's write enable decoded)
                wl_v = [Signal(name=f"wl{k}_v") for k in range(L)]
                wl_p = [Signal(range(P + 1), name=f"wl{k}_p") for k in range(L - 1)]
                wl_k = [Signal.like(lk, name=f"wl{k}_k") for k in range(L)]
                wl_sel = Signal(P)
                m.d.sync += [wl_v[0].eq(issue), wl_p[0].eq(lp), wl_k[0].eq(lk),
                             wl_sel.eq(Cat(wl_v[L - 2] & (wl_p[L - 2] == p) for p in range(P)))]
                for k in range(L - 1):
                    m.d.sync += [wl_v[k + 1].eq(wl_v[k]), wl_k[k + 1].eq(wl_k[k])]
                    if k + 1 < L - 1:
                        m.d.sync += wl_p[k + 1].eq(wl_p[k])
                for p in range(P):
                    _, wport = wbufs[p]
                    m.d.comb += [wport.addr.eq(wl_k[L - 1]), wport.data.eq(rd.data),
                                 wport.en.eq(wl_sel[p])]
                with m.If(~issue & ~Cat(*wl_v).any()):
                    m.d.sync += [cnt.eq(0), lp.eq(0), pmore.eq(1)]
                    m.next = "LOADP"
            with m.State("LOADP"):
                issue = Signal()
                m.d.comb += issue.eq(pmore)
                with m.If(issue):
                    m.d.comb += [r_en.eq(1), r_addr.eq(pptr)]
                    m.d.sync += [pptr.eq(pptr + 1), cnt.eq(cnt + 1),
                                 pmore.eq(cnt + 1 < gsz * PARAM_WORDS)]
                pl_v = [Signal(name=f"pl{k}_v") for k in range(L)]
                pl_n = [Signal.like(cnt, name=f"pl{k}_n") for k in range(L)]
                m.d.sync += [pl_v[0].eq(issue), pl_n[0].eq(cnt)]
                m.d.sync += [pl_v[k + 1].eq(pl_v[k]) for k in range(L - 1)]
                m.d.sync += [pl_n[k + 1].eq(pl_n[k]) for k in range(L - 1)]
                m.d.comb += [pwr.addr.eq(pl_n[L - 1] >> 2), pwr.data.eq(rd.data.replicate(4)),
                             pwr.en.eq(Mux(pl_v[L - 1], Const(1, 4) << pl_n[L - 1][:2], 0))]
                with m.If(~issue & ~Cat(*pl_v).any()):
                    m.next = "PIXELS"
            with m.State("PIXELS"):
                # the counters describe the next word; it waits in the issue register (i_*,
                # loaded the cycle before, its address summed and its flags decided there)
                # until issued, so the hold decision and the memory's request come from
                # registers. A write takes the memory this cycle; a pixel's last word waits
                # until the requantizer has read every shadow register of the pixel before
                last_word = Signal()
                m.d.comb += last_word.eq(jl & cl & rl & (~sixteen2 | ph) & fl)
                first_word = Signal()
                m.d.comb += first_word.eq((j == 0) & (c == 0) & (r == 0) & ~ph)
                hold = Signal()
                m.d.comb += [hold.eq(wq | (i_last & rq_wait)), write_now.eq(wq)]
                issue = Signal()
                m.d.comb += issue.eq(i_v & ~hold)
                m.d.comb += r_addr.eq(i_addr)  # (read only when issued)
                with m.If(issue):
                    m.d.comb += [iss.eq(1), iss_first.eq(i_first), iss_last.eq(i_last),
                                 iss_in.eq(i_in), iss_ph.eq(i_ph), iss_rep.eq(i_rep),
                                 iss_kidx.eq(i_kidx), r_en.eq(i_rd)]
                    m.d.sync += i_v.eq(0)
                    with m.If(~cmore):
                        m.next = "DRAIN"
                with m.If(cmore & (~i_v | ~hold)):  # the counters' word into the register
                    m.d.sync += [i_v.eq(1), i_first.eq(first_word), i_last.eq(last_word),
                                 i_in.eq(inside), i_ph.eq(ph), i_rep.eq(fi != 0),
                                 i_kidx.eq(kcount), i_addr.eq(tc + j),
                                 i_rd.eq(inside & ~ph & (fi == 0))]
                    with m.If(sixteen2 & ~ph):
                        m.d.sync += ph.eq(1)
                    if F > 1:
                        with m.Elif(~fl):  # the same word again, for the PEs' next channel
                            m.d.sync += [kcount.eq(kcount + 1), fi.eq(fi + 1),
                                         fl.eq(fi == minus2["fold"])]
                    with m.Else():
                        m.d.sync += ph.eq(0)
                        m.d.sync += kcount.eq(Mux(last_word, 0, kcount + 1))
                        if F > 1:
                            m.d.sync += [fi.eq(0), fl.eq(is1["fold"])]
                        # (jl, cl, rl: j, c, r at their last value, kept with them so no
                        # comparison lies between the counters and the memory's address)
                        with m.If(~jl):
                            m.d.sync += [j.eq(j + 1), jl.eq(j == minus2["tapw"])]
                        with m.Else():
                            m.d.sync += [j.eq(0), jl.eq(is1["tapw"])]
                            with m.If(~cl):
                                m.d.sync += [c.eq(c + 1), cl.eq(c == minus2["kw"]),
                                             tc.eq(tc + ins.xcw)]
                            with m.Else():
                                m.d.sync += [c.eq(0), cl.eq(is1["kw"])]
                                with m.If(~rl):
                                    m.d.sync += [r.eq(r + 1), rl.eq(r == minus2["kh"]),
                                                 tr.eq(tr + ins.row), tc.eq(tr + ins.row)]
                                with m.Else():
                                    m.d.sync += [r.eq(0), rl.eq(is1["kh"])]
                                    with m.If(oxl & oyl):  # (the group's last word)
                                        m.d.sync += cmore.eq(0)
                                    next_pixel(None, None)
            with m.State("DRAIN"):
                m.d.comb += write_now.eq(wq)
                with m.If(rq_idle):
                    with m.If(gl):
                        m.next = "NEXT"
                    with m.Else():
                        m.d.sync += [g.eq(g + 1), gl.eq(g == minus2["groups"]),
                                     ybase.eq(ybase + ins.gwords),
                                     gorg.eq(gorg + Mux(ins.flags & Flag.DEPTHWISE,
                                                        ins.tapw, 0))]
                        m.next = "GROUP"
            if has_add:
                # ---- ADD: a fetcher reads each word's two inputs (a cycle each, the
                # memory's writes first) into a buffer, from which the lane unit takes the pair
                # when it is on a word's last lane (or idle); it sends the lanes' aligned sums
                # through the requantizer, one a cycle, while the next pair is read. A read of
                # the first input is issued only when the buffer is empty or emptied this
                # cycle and no other pair is on its way
                with m.State("ADD_RUN"):
                    m.d.comb += write_now.eq(wq)
                    m.d.sync += [ad[0].eq(0), bq[0].eq(0)]
                    m.d.sync += [ad[k + 1].eq(ad[k]) for k in range(L - 1)]
                    m.d.sync += [bq[k + 1].eq(bq[k]) for k in range(L - 1)]
                    take = Signal()
                    m.d.comb += take.eq(afull & (~vact | vkl))
                    with m.If(vact):
                        m.d.comb += [
                            vq_valid.eq(1),
                            vq_value.eq(aligned(lane_value(va, vk, ins.mode, x_off), ins.align)
                                        + aligned(lane_value(vb, vk, ins.x2_mode, x2_off),
                                                  ins.align2))]
                        m.d.sync += [vk.eq(vk + 1), vkl.eq(vk == minus2["lanes"])]
                        with m.If(vkl):
                            m.d.sync += vact.eq(0)
                    with m.If(take):
                        m.d.sync += [va.eq(na), vb.eq(nb), vk.eq(0), vkl.eq(is1["lanes"]),
                                     vact.eq(1), afull.eq(0)]
                    with m.If(~wq):
                        with m.If(~vdone & ~ax & ~b_on_way & (~afull | take)):
                            m.d.comb += [r_en.eq(1), r_addr.eq(tc)]
                            m.d.sync += [ax.eq(1), ad[0].eq(1)]
                        with m.Elif(ax):
                            m.d.comb += [r_en.eq(1), r_addr.eq(tr)]
                            m.d.sync += [ax.eq(0), bq[0].eq(1), vi.eq(vi + 1),
                                         vdone.eq(vi == minus1["k"]), tc.eq(tc + 1),
                                         tr.eq(tr + 1)]
                    with m.If(ad[L - 1]):  # the first input's word, read L cycles ago
                        m.d.sync += na.eq(rd.data)
                    with m.If(bq[L - 1]):  # the second's
                        m.d.sync += [nb.eq(rd.data), afull.eq(1)]
                    with m.If(vdone & ~ax & ~b_on_way & ~afull & ~vact):
                        m.next = "ADD_WAIT"
                with m.State("ADD_WAIT"):
                    m.d.comb += write_now.eq(wq)
                    with m.If(rq_idle):
                        m.next = "NEXT"
            if pools:
                # ---- pools: per output pixel and channel word, one cycle per window tap (a read
                # where it is inside), then the lanes (an average divided by the reciprocal, bit
                # by bit) through the requantizer's clamp and code
                with m.State("POOL_TAP"):
                    # (tr, tc: tap (r, 0) and (r, c) of the pixel's channel word j)
                    m.d.comb += r_addr.eq(tc)
                    with m.If(inside):
                        m.d.comb += r_en.eq(1)
                    m.d.sync += pv.eq(inside)
                    with m.If(~cl):
                        m.d.sync += [c.eq(c + 1), cl.eq(c == minus2["kw"]), tc.eq(tc + ins.xcw)]
                    with m.Else():
                        m.d.sync += [c.eq(0), cl.eq(is1["kw"])]
                        with m.If(~rl):
                            m.d.sync += [r.eq(r + 1), rl.eq(r == minus2["kh"]),
                                         tr.eq(tr + ins.row), tc.eq(tr + ins.row)]
                        with m.Else():
                            m.d.sync += [r.eq(0), rl.eq(is1["kh"])]
                            m.d.sync += cnt.eq(0)
                            m.next = "POOL_GAP"
                with m.State("POOL_GAP"):  # the last tap's data on its way (L - 1 cycles)
                    m.d.sync += [pv.eq(0), cnt.eq(cnt + 1)]
                    with m.If(cnt == L - 2):
                        m.next = "POOL_LAST"
                with m.State("POOL_LAST"):
                    m.d.sync += [pv.eq(0), vk.eq(0), vkl.eq(is1["lanes"]), mi.eq(0),
                                 mil.eq(ins.rk == 0), started.eq(0)]
                    if has_avg and has_max:
                        with m.If(ins.op == Op.AVGPOOL):
                            m.next = "POOL_MUL"
                        with m.Else():
                            m.next = "POOL_LANES"
                    else:
                        m.next = "POOL_MUL" if has_avg else "POOL_LANES"
                if has_avg:
                    with m.State("POOL_MUL"):
                        # (t * rm) >> rk, t = 2 * sum + rc (non-negative), least significant
                        # bit of rm first, shifting right each step: mp_(i+1) =
                        # (mp_i + rm[i] * t) >> 1 is floor(t * (rm mod 2**(i+1)) / 2**(i+1)),
                        # and rm < 2**rk (rk steps; a barrel shifter or a full product would
                        # cost hundreds of logic cells for a division that runs once per
                        # pooled value). rm[i] is selected a cycle ahead (off the adder's path)
                        rm = ins.rm
                        m.d.sync += rm_bit.eq(Mux(mi < len(rm), rm.bit_select(
                            mi[:max(1, (len(rm) - 1).bit_length())].as_unsigned(), 1), 0))
                        with m.If(mi == 0):
                            m.d.sync += [mp.eq(0), mt.eq((lane_acc_sel << 1) + ins.rc)]
                        with m.Else():
                            m.d.sync += mp.eq((mp + Mux(rm_bit, mt, 0)) >> 1)
                        m.d.sync += [mi.eq(mi + 1), mil.eq(mi == minus1["rk"])]
                        with m.If(mil):
                            m.d.sync += [mi.eq(0), mil.eq(ins.rk == 0)]
                            m.next = "POOL_DIV"
                    with m.State("POOL_DIV"):
                        m.d.comb += [vq_valid.eq(1), vq_value.eq(mp.as_signed() - ins.rbig)]
                        m.d.sync += [vk.eq(vk + 1), vkl.eq(vk == minus2["lanes"])]
                        with m.If(vkl):
                            m.next = "POOL_WAIT"
                        with m.Else():
                            m.next = "POOL_MUL"
                if has_max:
                    with m.State("POOL_LANES"):
                        m.d.comb += [vq_valid.eq(1), vq_value.eq(lane_acc_sel)]
                        m.d.sync += [vk.eq(vk + 1), vkl.eq(vk == minus2["lanes"])]
                        with m.If(vkl):
                            m.next = "POOL_WAIT"
                with m.State("POOL_WAIT"):
                    m.d.comb += write_now.eq(wq)
                    with m.If(rq_idle):
                        # next channel word, pixel, row
                        with m.If(~jl):
                            m.d.sync += [j.eq(j + 1), jl.eq(j == minus2["xcw"]),
                                         tr.eq(pa + j + 1), tc.eq(pa + j + 1)]
                            m.next = "POOL_TAP"
                        with m.Else():
                            m.d.sync += [j.eq(0), jl.eq(is1["xcw"])]
                            next_pixel("NEXT", "POOL_TAP")
            with m.State("NEXT"):
                m.d.sync += [cnt.eq(0), vec.eq(0)]
                m.next = "FETCH"
        return m


def counter_address(i: int) -> int:
    """The ``cnt_addr`` of word `i` of the per-layer counters, read in order (each layer's
    `COUNTER_WORDS` words at a stride of 8)."""
    return (i // COUNTER_WORDS) * 8 + i % COUNTER_WORDS


def layer_counters(words):
    """Each layer's own (cycles, reads, writes), (..., layers, 3), from the counter memory's
    words (..., layers * COUNTER_WORDS): the hardware keeps the run's totals at each layer's
    end (no subtractors), the differences are taken here."""
    import numpy as np

    w = np.asarray(words, np.int64)
    w = w.reshape(*w.shape[:-1], -1, 3, 2)
    total = w[..., 0] | (w[..., 1] << 16)
    start = np.zeros_like(total)
    start[..., 1:, :] = total[..., :-1, :]
    return (total - start) % (1 << 32)


__all__ = ["COUNTER_WORDS", "LANE_BITS", "ArrayCore", "counter_address", "layer_counters"]
