"""Stream blocks: FIFOs (registers and block RAM), width converters, broadcast — order and
contents preserved under seeded random backpressure."""

from __future__ import annotations

import itertools
import random

import pytest
from amaranth import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelgen.accelerator import converter_chain, converter_lanes
from accelgen.cores.streams import Broadcast, StreamFifo, WidthConverter, pixel_layout
from accelgen.errors import ShapeError
from tests.hw import get, put, run

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(depth=st.integers(1, 12), style=st.sampled_from(["logic", "block"]),
       seed=st.integers(0, 1000), n=st.integers(1, 60))
def test_fifo_preserves_order(depth: int, style: str, seed: int, n: int) -> None:
    rng = random.Random(seed)
    beats = [{"data": [rng.randrange(-8, 8)], "last": rng.random() < 0.2} for _ in range(n)]
    dut = StreamFifo(pixel_layout(signed(4), 1), depth, style)
    got = run(dut, {"i": beats}, {"o": n}, seed=seed, idle=0.4, busy=0.5)
    assert [([int(v) for v in b.data], bool(b.last)) for b in got["o"]] == [
        (b["data"], bool(b["last"])) for b in beats]


@pytest.mark.parametrize("style", ["logic", "block"])
def test_fifo_full_rate(style: str) -> None:
    """An eager producer and consumer move a beat every cycle through either kind."""
    beats = [{"data": [k % 8], "last": 0} for k in range(40)]
    dut = StreamFifo(pixel_layout(signed(4), 1), 4, style)
    got = run(dut, {"i": beats}, {"o": 40}, idle=0.0, busy=0.0)
    stamps = got["_stamps"]["o"]
    assert stamps[-1] - stamps[0] == 39


@SETTINGS
@given(lanes=st.sampled_from([(1, 2), (2, 1), (1, 4), (4, 1), (2, 4), (4, 2), (3, 6), (6, 3)]),
       seed=st.integers(0, 1000), beats_out=st.integers(1, 8))
def test_width_converter(lanes: tuple[int, int], seed: int, beats_out: int) -> None:
    li, lo = lanes
    rng = random.Random(seed)
    values = [rng.randrange(-8, 8) for _ in range(li * lo * beats_out)]
    ins = [{"data": values[k : k + li], "last": int(k + li == len(values))}
           for k in range(0, len(values), li)]
    dut = WidthConverter(signed(4), li, lo)
    got = run(dut, {"i": ins}, {"o": len(values) // lo}, seed=seed)
    assert [int(v) for b in got["o"] for v in b.data] == values
    assert [int(b.last) for b in got["o"]] == [0] * (len(values) // lo - 1) + [1]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_width_converter_rejects_unrelated_lanes() -> None:
    with pytest.raises(ShapeError, match="cannot convert 4 lanes to 6"):
        WidthConverter(signed(4), 4, 6)


@SETTINGS
@given(n=st.integers(2, 3), seed=st.integers(0, 1000))
def test_broadcast_delivers_every_beat_to_every_consumer(n: int, seed: int) -> None:
    rng = random.Random(seed)
    beats = [{"data": [rng.randrange(-8, 8)], "last": 0} for _ in range(30)]
    layout = pixel_layout(signed(4), 1)
    dut = Broadcast(layout, n)
    received = [[] for _ in range(n)]
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def driver(ctx) -> None:
        await put(ctx, dut.i, beats, random.Random(seed), 0.3)

    sim.add_testbench(driver)
    for k in range(n):
        async def monitor(ctx, k=k) -> None:
            await get(ctx, dut.o[k], len(beats), received[k], random.Random(seed + 7 * k), 0.5)

        sim.add_testbench(monitor)
    sim.run()
    for k in range(n):
        assert [int(b.data[0]) for b in received[k]] == [b["data"][0] for b in beats]


class _Chain(wiring.Component):
    """The converters between a producer of `a` lanes and a consumer of `b` lanes."""

    def __init__(self, a: int, b: int) -> None:
        self.parts = converter_chain(signed(6), a, b)
        super().__init__({"i": In(stream.Signature(pixel_layout(signed(6), a))),
                          "o": Out(stream.Signature(pixel_layout(signed(6), b)))})

    def elaborate(self, platform) -> Module:
        m = Module()
        for k, part in enumerate(self.parts):
            m.submodules[f"c{k}"] = part
        wiring.connect(m, wiring.flipped(self.i), self.parts[0].i)
        for x, y in itertools.pairwise(self.parts):
            wiring.connect(m, x.o, y.i)
        wiring.connect(m, self.parts[-1].o, wiring.flipped(self.o))
        return m


def test_converter_chain_through_the_common_multiple_at_full_rate() -> None:
    """4 -> 6 lanes goes through 12 (`converter_lanes`): every stream in the chain has at most
    either side's beats, so 30 four-lane beats (one a cycle) leave as 20 six-lane beats within
    the same 30 cycles — through 2 lanes the middle stream alone would need 60 — and in order."""
    assert converter_lanes(4, 6) == [4, 12, 6]
    assert converter_lanes(6, 3) == [6, 3] and converter_lanes(5, 5) == [5]
    values = [k % 61 - 30 for k in range(120)]
    beats = [{"data": values[4 * k:4 * k + 4], "last": k == 29} for k in range(30)]
    got = run(_Chain(4, 6), {"i": beats}, {"o": 20}, idle=0.0, busy=0.0)
    assert [int(v) for b in got["o"] for v in b.data] == values
    assert [bool(b.last) for b in got["o"]] == [False] * 19 + [True]
    stamps = got["_stamps"]["o"]
    assert stamps[-1] - stamps[0] <= 30, stamps
