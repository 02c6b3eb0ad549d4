"""A UART, 8N1: one start bit (low), eight data bits least significant first, one stop bit
(high); the line idles high.

``divisor`` is the number of clock cycles per bit (at least 4, so the receiver can find the
middle of a bit); `uart_divisor` derives it from the clock and baud rate and refuses a pair
whose rounding error would exceed 2 % (a frame of ten bits then drifts by less than a fifth of
a bit).

`UartRx` passes the pin through a two-flop synchroniser, takes a falling edge as a possible start
bit, checks half a bit later that the line is still low (a shorter glitch is ignored), then
samples each data bit and the stop bit in the middle. A byte with a good stop bit is held on
``o`` until the consumer takes it; if the next byte completes first, the held byte is replaced
and ``overrun`` pulses for a cycle. A low stop bit drops the byte, pulses ``framing_error``, and
the receiver waits for the line to go high again before looking for the next start bit (a break
is one error, not a stream of them).

`UartTx` takes a byte from ``i`` whenever it is idle (``i.ready`` high) and shifts it out on
``tx``; it accepts the next byte in the last cycle of the stop bit, so back-to-back bytes go out
with no gap.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accelgen.errors import ShapeError

MIN_DIVISOR = 4
MAX_BAUD_ERROR = 0.02


def check_divisor(divisor: int) -> int:
    """`divisor` if it is an integer of at least `MIN_DIVISOR` cycles per bit."""
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        raise ShapeError(
            f"UART divisor {divisor!r}: need an integer of at least {MIN_DIVISOR} clock cycles "
            f"per bit"
        )
    return divisor


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for `baud` at `clock_hz`, rounded; the rounding error must stay
    within 2 %."""
    if baud <= 0 or clock_hz <= 0:
        raise ShapeError(f"baud rate {baud!r} at clock {clock_hz!r} Hz: both must be positive")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ShapeError(
            f"baud rate {baud!r} is too fast for a {clock_hz / 1e6:g} MHz clock: "
            f"{clock_hz / baud:.2f} cycles per bit, the UART needs at least {MIN_DIVISOR}"
        )
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ShapeError(
            f"baud rate {baud!r} at {clock_hz / 1e6:g} MHz: the nearest divisor {divisor} is "
            f"{100 * error:.1f} % off (more than {100 * MAX_BAUD_ERROR:g} %); pick another rate"
        )
    return divisor


class UartRx(wiring.Component):
    """Serial pin ``rx`` -> bytes on ``o`` (module docstring).

    Ports: ``rx`` (the pin, idle high), ``o`` (bytes), ``overrun`` (a held byte was lost),
    ``framing_error`` (a byte had a low stop bit and was dropped).
    """

    def __init__(self, divisor: int) -> None:
        self.divisor = check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "overrun": Out(1),
            "framing_error": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        div = self.divisor
        sync = Signal(2, init=0b11)
        m.d.sync += sync.eq(Cat(self.rx, sync[0]))
        line = sync[1]
        count = Signal(range(div))
        bit = Signal(range(8))
        shreg = Signal(8)
        held = Signal(8)
        full = Signal()
        m.d.comb += [self.o.payload.eq(held), self.o.valid.eq(full)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(count != 0):
            m.d.sync += count.eq(count - 1)
        with m.FSM():
            with m.State("idle"), m.If(~line):
                m.d.sync += count.eq(div // 2 - 1)
                m.next = "start"
            with m.State("start"), m.If(count == 0):
                with m.If(~line):
                    m.d.sync += [count.eq(div - 1), bit.eq(0)]
                    m.next = "data"
                with m.Else():
                    m.next = "idle"  # a glitch, not a start bit
            with m.State("data"), m.If(count == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], line)), count.eq(div - 1),
                             bit.eq(bit + 1)]
                with m.If(bit == 7):
                    m.next = "stop"
            with m.State("stop"), m.If(count == 0):
                with m.If(line):
                    m.d.sync += [held.eq(shreg), full.eq(1)]
                    m.d.comb += self.overrun.eq(full & ~self.o.ready)
                    m.next = "idle"
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                    m.next = "break"
            with m.State("break"), m.If(line):
                m.next = "idle"
        return m


class UartTx(wiring.Component):
    """Bytes on ``i`` -> serial pin ``tx`` (idle high; module docstring)."""

    def __init__(self, divisor: int) -> None:
        self.divisor = check_divisor(divisor)
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        div = self.divisor
        line = Signal(init=1)
        busy = Signal()
        count = Signal(range(div))
        left = Signal(range(10))  # bits still to put on the line after the current one
        shreg = Signal(9)  # data bits then the stop bit
        bit_done = count == 0
        m.d.comb += [self.tx.eq(line), self.i.ready.eq(~busy | (bit_done & (left == 0)))]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [line.eq(0), shreg.eq(Cat(self.i.payload, 1)), left.eq(9),
                         count.eq(div - 1), busy.eq(1)]
        with m.Elif(busy):
            with m.If(~bit_done):
                m.d.sync += count.eq(count - 1)
            with m.Elif(left != 0):
                m.d.sync += [line.eq(shreg[0]), shreg.eq(shreg[1:]), left.eq(left - 1),
                             count.eq(div - 1)]
            with m.Else():
                m.d.sync += busy.eq(0)
        return m
