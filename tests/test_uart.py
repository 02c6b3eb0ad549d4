# amaranth: UnusedElaboratable=no
"""The UART (loopback at several divisors, framing errors, overruns, glitches, bit-time
tolerance) and the CRC-16 (check value, the hardware step equal to the Python one)."""

from __future__ import annotations

import random

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from accelgen.errors import ShapeError
from accelgen.host import uart_levels
from accelgen.link.crc import CHECK, crc16, crc16_next
from accelgen.link.uart import UartRx, UartTx, uart_divisor


class Loopback(wiring.Component):
    """UartTx's pin wired to UartRx's pin."""

    def __init__(self, divisor: int) -> None:
        self.utx = UartTx(divisor)
        self.urx = UartRx(divisor)
        super().__init__({})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.utx, m.submodules.urx = self.utx, self.urx
        m.d.comb += self.urx.rx.eq(self.utx.tx)
        return m


@settings(max_examples=25, deadline=None)
@given(divisor=st.integers(4, 11), payload=st.binary(min_size=1, max_size=6),
       seed=st.integers(0, 1000))
def test_loopback_delivers_every_byte(divisor: int, payload: bytes, seed: int) -> None:
    dut = Loopback(divisor)
    rng = random.Random(seed)
    received: list[int] = []
    errors: list[str] = []

    async def send(ctx) -> None:
        for byte in payload:
            for _ in range(rng.choice([0, 0, 1, 3, 2 * divisor])):  # gaps between bytes
                ctx.set(dut.utx.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.utx.i.payload, byte)
            ctx.set(dut.utx.i.valid, 1)
            await ctx.tick().until(dut.utx.i.ready)
        ctx.set(dut.utx.i.valid, 0)

    async def receive(ctx) -> None:
        ctx.set(dut.urx.o.ready, 1)
        for _ in range(len(payload) * (10 * divisor + 2 * divisor + 4) + 50):
            _, _, valid, data, overrun, framing = await ctx.tick().sample(
                dut.urx.o.valid, dut.urx.o.payload, dut.urx.overrun, dut.urx.framing_error)
            if valid:
                received.append(int(data))
            if overrun or framing:
                errors.append("overrun" if overrun else "framing")
            if len(received) == len(payload):
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(receive)
    sim.run()
    assert bytes(received) == payload
    assert errors == []


async def drive_levels(ctx, pin, levels: list[int], bit_cycles: float) -> None:
    """Put line levels on `pin` with a fractional bit time (a host clock that is off)."""
    t = 0.0
    now = 0
    for level in levels:
        t += bit_cycles
        ctx.set(pin, level)
        while now < round(t):
            await ctx.tick()
            now += 1


def run_rx(divisor: int, levels: list[int], bit_cycles: float,
           tail: int = 40) -> tuple[list[int], int, int]:
    """Line levels into a `UartRx` that is always ready: bytes, overruns, framing errors."""
    dut = UartRx(divisor)
    got: list[int] = []
    counts = {"overrun": 0, "framing": 0}

    async def line(ctx) -> None:
        await drive_levels(ctx, dut.rx, [*levels, 1], bit_cycles)
        for _ in range(tail):
            await ctx.tick()

    async def watch(ctx) -> None:
        ctx.set(dut.o.ready, 1)
        while True:
            _, _, valid, data, overrun, framing = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.overrun, dut.framing_error)
            if valid:
                got.append(int(data))
            counts["overrun"] += int(overrun)
            counts["framing"] += int(framing)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(watch, background=True)
    sim.run()
    return got, counts["overrun"], counts["framing"]


@pytest.mark.parametrize("skew", [0.97, 1.0, 1.03])
def test_receiver_tolerates_a_few_percent_of_bit_time_error(skew: float) -> None:
    data = [0x00, 0xFF, 0x55, 0xA5, 0x3C]
    levels = [lv for b in data for lv in uart_levels(b)]
    got, overruns, framing = run_rx(16, levels, 16 * skew)
    assert got == data and overruns == 0 and framing == 0


def test_bad_stop_bit_is_a_framing_error_and_the_byte_is_dropped() -> None:
    levels = uart_levels(0x42, stop=0) + [0] * 12 + [1, 1] + uart_levels(0x99)
    got, overruns, framing = run_rx(6, levels, 6)
    assert got == [0x99]  # the break is one error; the next byte is received
    assert framing == 1 and overruns == 0


def test_short_glitch_is_not_a_start_bit() -> None:
    dut = UartRx(8)
    seen: list[int] = []

    async def line(ctx) -> None:
        for _ in range(5):
            await ctx.tick()
        ctx.set(dut.rx, 0)  # one cycle low: shorter than half a bit
        await ctx.tick()
        ctx.set(dut.rx, 1)
        for _ in range(200):
            await ctx.tick()

    async def watch(ctx) -> None:
        ctx.set(dut.o.ready, 1)
        while True:
            _, _, valid, framing = await ctx.tick().sample(dut.o.valid, dut.framing_error)
            seen.append(int(valid) | int(framing))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert not any(seen)


def test_unread_byte_is_held_until_the_next_one_overruns_it() -> None:
    dut = UartRx(4)
    record: dict[str, list] = {"overrun": [], "held": []}

    async def line(ctx) -> None:
        await drive_levels(ctx, dut.rx, [*uart_levels(0x11), 1, *uart_levels(0x22), 1], 4)
        for _ in range(20):
            await ctx.tick()
        record["held"].append((ctx.get(dut.o.valid), ctx.get(dut.o.payload)))
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        record["held"].append((ctx.get(dut.o.valid), ctx.get(dut.o.payload)))

    async def watch(ctx) -> None:
        while True:
            _, _, overrun = await ctx.tick().sample(dut.overrun)
            if overrun:
                record["overrun"].append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(line)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert record["overrun"] == [1]
    assert record["held"][0] == (1, 0x22)  # the second byte replaced the unread first one
    assert record["held"][1][0] == 0  # taken: valid drops


@pytest.mark.parametrize("bad", [3, 0, -1, 4.5, True])
def test_divisor_below_four_is_refused_with_its_value(bad) -> None:
    with pytest.raises(ShapeError, match=repr(bad).replace(".", r"\.")):
        UartRx(bad)
    with pytest.raises(ShapeError, match="divisor"):
        UartTx(bad)


def test_uart_divisor_from_clock_and_baud() -> None:
    assert uart_divisor(12_000_000, 115_200) == 104
    assert uart_divisor(48_000_000, 3_000_000) == 16
    with pytest.raises(ShapeError, match="5000000"):
        uart_divisor(12_000_000, 5_000_000)  # 2.4 cycles per bit
    with pytest.raises(ShapeError, match=r"2300000.*% off"):
        uart_divisor(10_000_000, 2_300_000)  # divisor 4 is 8.7 % fast


# -- CRC -------------------------------------------------------------------------------------


def test_crc16_check_value_and_chaining() -> None:
    assert crc16(b"123456789") == CHECK == 0x29B1
    assert crc16(b"") == 0xFFFF
    assert crc16(b"6789", crc16(b"12345")) == CHECK
    with pytest.raises(ValueError, match="65536"):
        crc16(b"x", 0x10000)


class CrcStep(wiring.Component):
    def __init__(self) -> None:
        super().__init__({"crc": In(16), "byte": In(8), "next": Out(16)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += self.next.eq(crc16_next(self.crc, self.byte))
        return m


@settings(max_examples=20, deadline=None)
@given(data=st.binary(min_size=0, max_size=40), start=st.integers(0, 0xFFFF))
def test_hardware_crc_step_equals_python(data: bytes, start: int) -> None:
    dut = CrcStep()
    result: list[int] = []

    async def bench(ctx) -> None:
        state = start
        for byte in data:
            ctx.set(dut.crc, state)
            ctx.set(dut.byte, byte)
            state = ctx.get(dut.next)
        result.append(state)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert result == [crc16(data, start)]


def test_crc16_next_checks_its_operand_widths() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        crc16_next(Signal(8), Signal(8))
