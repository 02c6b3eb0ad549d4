"""The multi-width PE: its accumulator against Python's integers, per mode, per family.

The iCE40 variant runs its real operand routing and 16-bit corrections (the dual 8x8 block
is its behavioural equivalent without a platform; `tests/test_mul.py` proves the cell).
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from accelgen.array.isa import Mode
from accelgen.cores.pe import LATENCY, MultiModePE
from accelgen.errors import ShapeError

CORNERS = {Mode.B16: [-32768, -32767, -257, -256, -129, -128, -1, 0, 1, 127, 128, 255, 256,
                      32639, 32640, 32767],
           Mode.B8: [-128, -127, -1, 0, 1, 127],
           Mode.B4: [-8, -7, -1, 0, 1, 7]}


def _word(lanes: list[int], mode: Mode) -> int:
    bits = mode.bits
    return sum((v & ((1 << bits) - 1)) << (k * bits) for k, v in enumerate(lanes))


def _run(family: str | None, ops: list[tuple[Mode, list[int], list[int], bool, bool]],
         modes=None) -> tuple[list[int], list[int]]:
    """Drive `ops` (mode, a lanes, w lanes, valid, clear) one word each; the accumulator after
    each, and Python's."""
    dut = MultiModePE(acc_bits=48, family=family, modes=modes)

    got: list[int] = []
    want: list[int] = []
    acc = 0
    for _mode, a, w, valid, clear in ops:
        if valid:
            acc = (0 if clear else acc) + sum(x * y for x, y in zip(a, w, strict=True))
        want.append(acc)

    async def bench(ctx):
        for mode, a, w, valid, clear in ops:
            n = dut.word_cycles(mode)
            for phase in range(n):
                ctx.set(dut.mode, mode)
                ctx.set(dut.a, _word(a, mode))
                ctx.set(dut.w, _word(w, mode))
                ctx.set(dut.phase, phase)
                ctx.set(dut.valid, valid)
                ctx.set(dut.clear, clear and phase == 0)
                await ctx.tick()
            ctx.set(dut.valid, 0)
            for _ in range(LATENCY):
                await ctx.tick()
            got.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got, want


def _ops(data, n: int, modes=tuple(Mode)) -> list:
    ops = []
    for i in range(n):
        mode = data.draw(st.sampled_from(sorted(modes)))
        lo, hi = -(1 << (mode.bits - 1)), (1 << (mode.bits - 1)) - 1
        vals = st.one_of(st.integers(lo, hi), st.sampled_from(CORNERS[mode]))
        a = data.draw(st.lists(vals, min_size=mode.lanes, max_size=mode.lanes))
        w = data.draw(st.lists(vals, min_size=mode.lanes, max_size=mode.lanes))
        ops.append((mode, a, w, data.draw(st.booleans()) or i == 0,
                    i == 0 or data.draw(st.integers(0, 4)) == 0))
    return ops


@pytest.mark.parametrize("family", [None, "ice40"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_pe_accumulates_lane_dot_products_in_every_mode(family, data) -> None:
    got, want = _run(family, _ops(data, 12))
    assert got == want


@pytest.mark.parametrize("family", [None, "ice40"])
@pytest.mark.parametrize("mode", list(Mode))
def test_pe_corner_products(family, mode: Mode) -> None:
    """Every pair of corner values (the signed-packing edge cases: -2**(b-1), low bytes with
    their top bit set) as each lane's operands, one product per word."""
    corners = CORNERS[mode]
    ops = []
    for x in corners:
        for y in corners:
            a = [x] + [0] * (mode.lanes - 1)
            w = [y] + [0] * (mode.lanes - 1)
            k = (len(ops) % mode.lanes)
            a[0], a[k] = a[k], a[0]
            w[0], w[k] = w[k], w[0]
            ops.append((mode, a, w, True, True))
    got, want = _run(family, ops)
    assert got == want
    assert want == [x * y for x in corners for y in corners]


@pytest.mark.parametrize("family", [None, "ice40"])
@pytest.mark.parametrize("modes", [(Mode.B8,), (Mode.B4,), (Mode.B16,), (Mode.B8, Mode.B4),
                                   (Mode.B16, Mode.B8)], ids=lambda ms: "+".join(
                                       m.name for m in ms))
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_pe_built_for_some_modes_computes_them(family, modes, data) -> None:
    """A PE left without some widths' datapath (a build for a program that never uses them)
    still computes the widths it has, corners included."""
    ops = _ops(data, 10, modes)
    for mode in modes:
        ops += [(mode, [x] * mode.lanes, [y] * mode.lanes, True, True)
                for x in CORNERS[mode][:3] for y in CORNERS[mode][-3:]]
    got, want = _run(family, ops, modes)
    assert got == want


def test_pe_checks_its_accumulator_width() -> None:
    with pytest.raises(ShapeError, match=r"accumulator of 12 bits"):
        MultiModePE(acc_bits=12)
    with pytest.raises(ShapeError, match=r"no mode"):
        MultiModePE(modes=())


def test_pe_random_long_accumulation_does_not_wrap() -> None:
    rng = np.random.default_rng(1)
    ops = [(Mode.B16, [int(rng.integers(-32768, 32768))], [int(rng.integers(-32768, 32768))],
            True, i == 0) for i in range(64)]
    got, want = _run("ice40", ops)
    assert got == want
