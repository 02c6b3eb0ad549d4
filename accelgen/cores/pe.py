"""The PE array's processing element: a multiply-accumulate unit of run-time width 16, 8 or 4.

One PE takes one activation word ``a`` and one weight word ``w`` (16 bits each, lanes as in
`accelgen.array.isa`: one 16-bit, two 8-bit or four 4-bit signed values, chosen by ``mode``)
and adds the dot product of their lanes to its accumulator:

    ``acc <- (clear ? 0 : acc) + sum_k a[k] * w[k]``        when ``valid``

With ``folds > 1`` the PE has that many accumulators in a ring, for as many output channels
(``fold`` of them in use, a run-time input): each valid word adds to the accumulator of the
word ``fold`` words back and the ring turns by one (``held[j]`` is the accumulator ``j + 1``
words back, ``acc`` the newest), so a word issued ``fold`` times with the weights of ``fold``
channels accumulates each channel's dot product in its own slot.

Timing: operands at cycle ``t``, registered products at ``t + 1``, the accumulator holds the
sum after the clock edge ending ``t + 1`` (`LATENCY` = 2 cycles from operands to ``acc``).
``clear`` and ``valid`` travel with their operands.

Implementations (`family`):

* **iCE40** (``"ice40"``): one ``SB_MAC16`` fixed in its dual signed 8x8 mode (Yosys never
  infers that mode; the block's 16x16 and 8x8 modes are bitstream parameters, so a run-time
  16-bit mode must be built from 8x8 products):

  - 8-bit: the two halves multiply the two lanes;
  - 4-bit: two cycles per word (``word_cycles(Mode.B4) == 2``): the halves multiply lanes 0
    and 1 (sign-extended) in the first, lanes 2 and 3 in the second (``phase``). LUT
    multipliers for lanes 2 and 3 would make it one cycle, at about 100 logic cells per PE
    the UP5K does not have;
  - 16-bit: four signed 8x8 partial products over two cycles (``word16_cycles = 2``: the
    controller holds the word and raises ``phase`` in the second). With ``x = 256 xh + xl``
    (``xl`` the unsigned low byte, ``xl_s`` it read as signed, ``xl7`` its top bit)::

        x*y = 65536 xh*yh + xl_s*yl_s                     (phase 0, the DSP)
            + 256 (xh*yl_s + xl_s*yh)                      (phase 1, the DSP)
            + 65536 (yl7 xh + xl7 yh + xl7 yl7) + 256 (xl7 yl_s + yl7 xl_s)   (phase 0, LUTs)

    the last line correcting the signed reading of the low bytes (exact: expand
    ``xl = xl_s + 256 xl7``).

  In simulation without a platform the dual 8x8 block is its behavioural equivalent (two
  registered signed 8x8 products), so the routing and corrections above are what pysim runs;
  `tests/test_mul.py` proves the instantiated cell equal to those products.
* **elsewhere** (ECP5, Gowin, behavioural): every lane product written ``a * w`` (Yosys maps
  them to ``MULT18X18D``/``MULT9X9``), one 16-bit product per cycle.

`modes` is the set of widths the PE is built for (all three by default): a build for one program
leaves out the datapath of the widths the program never uses (on iCE40 the 16-bit corrections
and the 4-bit operand selection are most of a PE's logic). A word in a mode left out gives an
undefined result; `accelgen.cores.pe_array.ArrayCore` is built with the program's modes.
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from accelgen.array.isa import Mode
from accelgen.cores.mul import _ice40_pair
from accelgen.errors import ShapeError

LATENCY = 2


class MultiModePE(wiring.Component):
    """A multiply-accumulate unit over one word of 1, 2 or 4 lanes (module docstring).

    `acc_bits` is the accumulator's width (the compiler's bound for the program it runs);
    `family` selects the implementation. Ports: ``a``, ``w`` (16-bit words), ``mode`` (`Mode`),
    ``phase`` (16-bit mode on iCE40: the word's second cycle), ``valid``, ``clear``, ``acc``.
    """

    def __init__(self, acc_bits: int = 40, family: str | None = None,
                 modes=None, folds: int = 1) -> None:
        self.modes = frozenset(Mode) if modes is None else frozenset(Mode(v) for v in modes)
        if not self.modes:
            raise ShapeError("a PE built for no mode (modes is empty)")
        if not 18 <= acc_bits <= 64:
            raise ShapeError(f"accumulator of {acc_bits!r} bits; the PE takes 18..64 (the "
                             "compiler's bound for the program, `Program.acc_bits`)")
        if not 1 <= folds <= 8 or (folds > 1 and family == "ice40"):
            raise ShapeError(f"a PE of {folds!r} accumulators (1..8; 1 on iCE40, whose PE "
                             "takes two cycles for some words)")
        self.acc_bits = acc_bits
        self.family = family
        self.folds = folds
        ports = {
            "a": In(16), "w": In(16), "mode": In(2), "phase": In(1), "valid": In(1),
            "clear": In(1), "acc": Out(signed(acc_bits)),
        }
        if folds > 1:
            ports["fold"] = In(range(folds + 1))
            ports["held"] = Out(data.ArrayLayout(signed(acc_bits), folds - 1))
        super().__init__(ports)

    @property
    def word16_cycles(self) -> int:
        return 2 if self.family == "ice40" else 1

    def word_cycles(self, mode: Mode) -> int:
        """Cycles the PE takes per word in `mode` (the controller holds the word meanwhile and
        raises ``phase`` in the second)."""
        return 2 if self.family == "ice40" and mode in (Mode.B16, Mode.B4) else 1

    def elaborate(self, platform) -> Module:
        m = Module()
        a, w, mode = self.a, self.w, self.mode
        # the products' sum, registered (cycle t + 1)
        dot = Signal(signed(34 if Mode.B16 in self.modes else 17))
        valid1 = Signal()
        clear1 = Signal()
        m.d.sync += [valid1.eq(self.valid), clear1.eq(self.clear)]

        def lane(v, k: int, bits: int):
            return v[k * bits:(k + 1) * bits].as_signed()

        if self.family == "ice40":
            self._ice40(m, platform, dot)
        else:
            sums = {}
            if Mode.B16 in self.modes:
                p16 = Signal(signed(32))
                m.d.sync += p16.eq(lane(a, 0, 16) * lane(w, 0, 16))
                sums[Mode.B16] = p16
            if Mode.B8 in self.modes:
                p8 = [Signal(signed(16), name=f"p8_{k}") for k in range(2)]
                m.d.sync += [p.eq(lane(a, k, 8) * lane(w, k, 8)) for k, p in enumerate(p8)]
                sums[Mode.B8] = p8[0] + p8[1]
            if Mode.B4 in self.modes:
                p4 = [Signal(signed(8), name=f"p4_{k}") for k in range(4)]
                m.d.sync += [p.eq(lane(a, k, 4) * lane(w, k, 4)) for k, p in enumerate(p4)]
                sums[Mode.B4] = p4[0] + p4[1] + p4[2] + p4[3]
            mode1 = Signal(2)
            m.d.sync += mode1.eq(mode)
            m.d.comb += dot.eq(by_mode(mode1, sums))
        if self.folds == 1:
            with m.If(valid1):
                m.d.sync += self.acc.eq(Mux(clear1, 0, self.acc) + dot)
            return m
        # `fold` accumulators in a ring: each valid word adds to the one `fold` words back
        # and shifts the ring by one
        slots = [self.acc, *(self.held[j] for j in range(self.folds - 1))]
        back = slots[0]
        for f in range(2, self.folds + 1):
            back = Mux(self.fold == f, slots[f - 1], back)
        with m.If(valid1):
            m.d.sync += self.acc.eq(Mux(clear1, 0, back) + dot)
            m.d.sync += [slots[j].eq(slots[j - 1]) for j in range(1, self.folds)]
        return m

    def _ice40(self, m: Module, platform, dot: Signal) -> None:
        a, w, mode, phase = self.a, self.w, self.mode, self.phase
        xh, xl = a[8:16].as_signed(), a[0:8].as_signed()
        yh, yl = w[8:16].as_signed(), w[0:8].as_signed()
        xl7, yl7 = a[7], w[7]
        four = (mode == Mode.B4) if Mode.B4 in self.modes else False
        sixteen = (mode == Mode.B16) if Mode.B16 in self.modes else False
        if Mode.B8 not in self.modes and Mode.B16 not in self.modes:
            four = True

        def sext4(v):
            return Cat(v[0:4], v[3].replicate(4)).as_signed()

        # the two halves' operands by mode and phase (4-bit: lanes 0, 1 then 2, 3)
        a0, a1 = xl, xh
        b0 = Mux(sixteen & phase, yh, yl) if Mode.B16 in self.modes else yl
        b1 = Mux(sixteen & phase, yl, yh) if Mode.B16 in self.modes else yh
        if Mode.B4 in self.modes:
            a0 = Mux(four, sext4(Mux(phase, a[8:12], a[0:4])), a0)
            b0 = Mux(four, sext4(Mux(phase, w[8:12], w[0:4])), b0)
            a1 = Mux(four, sext4(Mux(phase, a[12:16], a[4:8])), a1)
            b1 = Mux(four, sext4(Mux(phase, w[12:16], w[4:8])), b1)
        a0s, b0s, a1s, b1s = (Signal(signed(8), name=n) for n in ("a0", "b0", "a1", "b1"))
        m.d.comb += [a0s.eq(a0), b0s.eq(b0), a1s.eq(a1), b1s.eq(b1)]
        p0, p1 = Signal(signed(16)), Signal(signed(16))
        if platform is not None:
            q0, q1 = _ice40_pair(m, a0s, b0s, a1s, b1s, True, True, ClockSignal("sync"), "mac")
            m.d.comb += [p0.eq(q0), p1.eq(q1)]
        else:  # the block's behaviour: two registered signed 8x8 products
            m.d.sync += [p0.eq(a0s * b0s), p1.eq(a1s * b1s)]
        if Mode.B16 not in self.modes:  # 8-bit, and each half of a 4-bit word
            m.d.comb += dot.eq(p0 + p1)
            return
        # 16-bit corrections for the low bytes read as signed (phase 0 only)
        hi_c = Signal(signed(10))
        lo_c = Signal(signed(10))
        m.d.sync += [
            hi_c.eq(Mux(yl7, xh, 0) + Mux(xl7, yh, 0) + (xl7 & yl7)),
            lo_c.eq(Mux(xl7, yl, 0) + Mux(yl7, xl, 0)),
        ]
        mode1, phase1 = Signal(2), Signal()
        m.d.sync += [mode1.eq(mode), phase1.eq(phase)]
        with m.Switch(mode1):
            with m.Case(Mode.B16):
                with m.If(phase1):
                    m.d.comb += dot.eq((p0 + p1) << 8)
                with m.Else():
                    # p0 = xl_s*yl_s, p1 = xh*yh
                    m.d.comb += dot.eq((p1 << 16) + p0 + (hi_c << 16) + (lo_c << 8))
            with m.Default():  # 8-bit, and each half of a 4-bit word
                m.d.comb += dot.eq(p0 + p1)


def by_mode(mode, values: dict):
    """`values[mode]` for the modes present (a mode left out selects an undefined one)."""
    items = sorted(values.items())
    out = items[-1][1]
    for k, v in reversed(items[:-1]):
        out = Mux(mode == k, v, out)
    return out


__all__ = ["LATENCY", "MultiModePE", "by_mode"]
