"""The hardware requantizer against `accelgen.golden.requantize`, exhaustively on small widths.

Every input code of a 6-bit accumulator (signed and unsigned), every shift in -5..6 (left shifts
included: a residual add may scale up), clamp ranges that are and are not full signed/unsigned
ranges, and the per-channel form with a select between several shifts.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from amaranth import Elaboratable, Module, Shape, Signal, signed, unsigned
from amaranth.sim import Simulator

from accelgen import golden
from accelgen.cores.requant import requantize, select_width, shift_clamp

RANGES = [(-2, 1), (0, 1), (-8, 7), (0, 15), (0, 6), (-3, 5), (-128, 127), (0, 255)]


class _Requant(Elaboratable):
    def __init__(self, in_shape: Shape, shifts: list[int], lo: int, hi: int) -> None:
        self.shifts, self.lo, self.hi = shifts, lo, hi
        self.out_shape = signed(max(hi.bit_length(), (-lo - 1).bit_length() if lo < 0 else 0)
                                + 1) if lo < 0 else unsigned(max(1, hi.bit_length()))
        self.x = Signal(in_shape)
        self.sel = Signal(select_width(shifts))
        self.y = Signal(self.out_shape)

    def elaborate(self, platform) -> Module:
        m = Module()
        if len(self.shifts) == 1:
            m.d.comb += self.y.eq(requantize(self.x, self.shifts, None, self.lo, self.hi,
                                             self.out_shape))
        else:
            u = self.x if self.x.shape().signed else self.x.as_signed()
            m.d.comb += self.y.eq(shift_clamp(u, self.shifts, self.sel, self.lo, self.hi,
                                              self.out_shape))
        return m


def _simulate(dut: _Requant, codes: list[int], selects: list[int]) -> dict[tuple[int, int], int]:
    got: dict[tuple[int, int], int] = {}

    async def bench(ctx) -> None:
        for sel in selects:
            for x in codes:
                ctx.set(dut.x, x)
                ctx.set(dut.sel, sel)
                got[(sel, x)] = ctx.get(dut.y)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("in_shape", [signed(6), unsigned(6)], ids=["signed", "unsigned"])
@pytest.mark.parametrize(("lo", "hi"), RANGES)
def test_requantize_every_code_every_shift(in_shape: Shape, lo: int, hi: int) -> None:
    codes = list(range(-32, 32)) if in_shape.signed else list(range(64))
    for s in range(-5, 7):
        dut = _Requant(in_shape, [s], lo, hi)
        got = _simulate(dut, codes, [0])
        want = golden.requantize(np.array(codes), s, lo, hi)
        assert [got[(0, x)] for x in codes] == want.tolist(), f"shift {s}"


@pytest.mark.parametrize(("lo", "hi"), RANGES[:4])
def test_shift_clamp_per_channel_select(lo: int, hi: int) -> None:
    """Several shifts behind one select (per-channel requantize), rounding term pre-added."""
    codes = list(range(-32, 32))
    for shifts in itertools.islice(itertools.combinations(range(-3, 5), 3), 0, None, 7):
        dut = _Requant(signed(6), list(shifts), lo, hi)
        got = _simulate(dut, codes, list(range(len(shifts))))
        for sel, s in enumerate(shifts):
            # shift_clamp expects the round-half-up term already in the value
            rounding = (1 << (s - 1)) if s > 0 else 0
            want = golden.requantize(np.array(codes) - rounding, s, lo, hi)
            # codes whose pre-rounded value wrapped out of 6 bits are not comparable
            ok = [(x - rounding) >= -32 for x in codes]
            got_ok = [got[(sel, x)] for x, k in zip(codes, ok, strict=True) if k]
            want_ok = [w for w, k in zip(want.tolist(), ok, strict=True) if k]
            assert got_ok == want_ok, f"shifts {shifts} sel {sel}"
