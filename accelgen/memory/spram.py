"""Single-port RAM for run-time-loaded weights: iCE40 SPRAM, instantiated directly.

Yosys can only infer ``SB_SPRAM256KA`` for a memory without an initial value, and Amaranth 0.5
always gives a memory one (zeros), so on iCE40 the RAM is built from the primitives: a
`width`-bit word spans ``ceil(width / 16)`` SPRAMs side by side, `depth` words
``ceil(depth / 16384)`` banks (a registered bank select picks the read data). Elsewhere, and in
simulation, it is an Amaranth `Memory` with the same behaviour:

* one address ``addr`` for reads and writes; ``we`` writes ``wdata`` at the clock edge;
* ``rdata`` is the word at the address of the previous cycle (synchronous read) and holds its
  value in a cycle that writes (SPRAM's "no change" read-during-write behaviour).
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Module, Mux, Signal
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

SPRAM_WIDTH = 16
SPRAM_DEPTH = 16384


def spram_blocks(depth: int, width: int) -> int:
    """SB_SPRAM256KA blocks a `depth` x `width` RAM takes."""
    return -(-width // SPRAM_WIDTH) * -(-depth // SPRAM_DEPTH)


class SinglePortRam(wiring.Component):
    """`depth` words of `width` bits, one port (module docstring); `family` "ice40" uses
    SPRAM primitives when elaborated for a platform."""

    def __init__(self, depth: int, width: int, family: str | None = None) -> None:
        if depth < 1 or width < 1:
            raise ValueError(f"a RAM needs depth and width >= 1, not {depth!r} x {width!r}")
        self.depth, self.width, self.family = depth, width, family
        super().__init__({
            "addr": In(range(depth)),
            "wdata": In(width),
            "we": In(1),
            "rdata": Out(width),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        if platform is None or self.family != "ice40":
            m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
            rd = mem.read_port()
            wr = mem.write_port()
            m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(~self.we), self.rdata.eq(rd.data),
                         wr.addr.eq(self.addr), wr.data.eq(self.wdata), wr.en.eq(self.we)]
            return m
        lanes = -(-self.width // SPRAM_WIDTH)
        banks = -(-self.depth // SPRAM_DEPTH)
        wdata = Signal(lanes * SPRAM_WIDTH)
        m.d.comb += wdata.eq(self.wdata)
        low = Signal(14)
        m.d.comb += low.eq(self.addr if banks == 1 else self.addr[:14])
        bank = Signal(range(banks)) if banks > 1 else Const(0)
        if banks > 1:
            m.d.comb += bank.eq(self.addr[14:])
        read_bank = Signal.like(bank) if banks > 1 else Const(0)
        if banks > 1:
            with m.If(~self.we):
                m.d.sync += read_bank.eq(bank)
        outs = []
        for b in range(banks):
            lane_outs = []
            for k in range(lanes):
                dout = Signal(SPRAM_WIDTH, name=f"dout_{b}_{k}")
                m.submodules[f"spram_{b}_{k}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=low, i_DATAIN=wdata[k * SPRAM_WIDTH : (k + 1) * SPRAM_WIDTH],
                    i_MASKWREN=Const(0b1111, 4), i_WREN=self.we,
                    i_CHIPSELECT=(bank == b) if banks > 1 else Const(1),
                    i_CLOCK=ClockSignal("sync"), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=dout)
                lane_outs.append(dout)
            outs.append(Cat(*lane_outs))
        data = outs[0]
        for b in range(1, banks):
            data = Mux(read_bank == b, outs[b], data)
        m.d.comb += self.rdata.eq(data[: self.width])
        return m
