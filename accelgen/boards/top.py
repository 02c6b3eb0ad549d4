"""The top level of a board build: clocking, reset, the UART pins and a status LED around a core.

The core is anything with ports ``rx`` (In(1), the UART line from the host), ``tx`` (Out(1))
and ``status`` (Out(n), n >= 1: bit 0 lights the LED) — in a build, the accelerator behind its
host link (`accelgen.link.hostlink.LinkedAccelerator`). The ``sync`` domain runs from the PLL at
the planned clock and is held in reset until the PLL locks. The LED shows ``status[0]``, with a
slow heartbeat blended in so a configured board is visibly alive.
"""

from __future__ import annotations

from amaranth import ClockDomain, Module, Signal, Value
from amaranth.hdl import Elaboratable
from amaranth.lib import io

from accelgen.boards import Board
from accelgen.boards.clocking import PllClock, PllSettings


class BoardTop(Elaboratable):
    """`core` on `board`, clocked at `pll.f_out_mhz` (or the board clock when `pll` is None)."""

    def __init__(self, core, board: Board, pll: PllSettings | None) -> None:
        self.core = core
        self.board = board
        self.pll = pll

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.sync = ClockDomain("sync")
        b = self.board
        if self.pll is not None and self.pll.family == "ice40" and b.pll_pad:
            clk_port = platform.request(b.clock, 0, dir="-")
            clk_in = clk_port.io
        else:
            m.submodules.clk_buffer = clk_buffer = io.Buffer("i", platform.request(b.clock, 0,
                                                                                  dir="-"))
            clk_in = clk_buffer.i
        m.submodules.clocking = PllClock(clk_in, self.pll, pad=b.pll_pad,
                                         device=platform.family if b.family == "gowin" else "")
        m.submodules.core = core = self.core

        uart = platform.request(b.uart_resource, 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [core.rx.eq(rx.i), tx.o.eq(core.tx)]

        heartbeat = Signal(range(1 << 26))
        m.d.sync += heartbeat.eq(heartbeat + 1)
        lit = Signal()
        # status[0] steady; otherwise a short blink every 2**26 cycles (about 1.5 s)
        m.d.comb += lit.eq(Value.cast(core.status)[0] | (heartbeat[-4:] == 0b1111))
        led = platform.request(b.led, 0, dir="-")
        m.submodules.led = led_buffer = io.Buffer("o", led.g if b.led == "rgb_led" else led)
        m.d.comb += led_buffer.o.eq(lit)
        return m
