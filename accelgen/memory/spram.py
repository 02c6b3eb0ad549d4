"""Single-port RAM for run-time-loaded weights: iCE40 SPRAM, instantiated directly.

Yosys can only infer ``SB_SPRAM256KA`` for a memory without an initial value, and Amaranth 0.5
always gives a memory one (zeros), so on iCE40 the RAM is built from the primitives: a
`width`-bit word spans ``ceil(width / 16)`` SPRAMs side by side, `depth` words
``ceil(depth / 16384)`` banks (a registered bank select picks the read data). Elsewhere, and in
simulation, it is an Amaranth `Memory` with the same behaviour:

* one address ``addr`` for reads and writes; ``we`` writes ``wdata`` at the clock edge;
* ``rdata`` is the word at the address of the previous cycle (synchronous read) and holds its
  value in a cycle that writes (SPRAM's "no change" read-during-write behaviour).

With ``registered``, ``addr``/``we``/``wdata`` are registered first (and each SPRAM's chip
select decoded into a register of its own) and the read data (after the bank multiplexer) too,
so nothing but a wire lies between a flip-flop and the SPRAM's pins, which sit in the die's
corners (on the UP5K those routes alone take 5 to 7 ns): a write lands a cycle after ``we``,
and ``rdata`` is the word at the address of three cycles before.
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

    def __init__(self, depth: int, width: int, family: str | None = None, *,
                 registered: bool = False) -> None:
        if depth < 1 or width < 1:
            raise ValueError(f"a RAM needs depth and width >= 1, not {depth!r} x {width!r}")
        self.depth, self.width, self.family = depth, width, family
        self.registered = registered
        super().__init__({
            "addr": In(range(depth)),
            "wdata": In(width),
            "we": In(1),
            "rdata": Out(width),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        addr, we, wdata_in = self.addr, self.we, self.wdata
        if self.registered:
            addr, we, wdata_in = Signal.like(self.addr), Signal(), Signal.like(self.wdata)
            m.d.sync += [addr.eq(self.addr), we.eq(self.we), wdata_in.eq(self.wdata)]
        if platform is None or self.family != "ice40":
            m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
            rd = mem.read_port()
            wr = mem.write_port()
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(~we), wr.addr.eq(addr),
                         wr.data.eq(wdata_in), wr.en.eq(we)]
            if self.registered:
                m.d.sync += self.rdata.eq(rd.data)
            else:
                m.d.comb += self.rdata.eq(rd.data)
            return m
        lanes = -(-self.width // SPRAM_WIDTH)
        banks = -(-self.depth // SPRAM_DEPTH)
        wdata = Signal(lanes * SPRAM_WIDTH)
        m.d.comb += wdata.eq(wdata_in)
        low = Signal(14)
        m.d.comb += low.eq(addr if banks == 1 else addr[:14])
        bank = Signal(range(banks)) if banks > 1 else Const(0)
        if banks > 1:
            m.d.comb += bank.eq(addr[14:])
        # each bank's chip select: decoded from the address, or (registered) a flip-flop of
        # its own decoded from the unregistered address
        selects = [(bank == b) if banks > 1 else Const(1) for b in range(banks)]
        if self.registered and banks > 1:
            selects = [Signal(name=f"cs_{b}") for b in range(banks)]
            m.d.sync += [cs.eq(self.addr[14:] == b) for b, cs in enumerate(selects)]
        read_bank = Signal.like(bank) if banks > 1 else Const(0)
        if banks > 1:
            with m.If(~we):
                m.d.sync += read_bank.eq(bank)
        outs = []
        for b in range(banks):
            lane_outs = []
            for k in range(lanes):
                dout = Signal(SPRAM_WIDTH, name=f"dout_{b}_{k}")
                m.submodules[f"spram_{b}_{k}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=low, i_DATAIN=wdata[k * SPRAM_WIDTH : (k + 1) * SPRAM_WIDTH],
                    i_MASKWREN=Const(0b1111, 4), i_WREN=we, i_CHIPSELECT=selects[b],
                    i_CLOCK=ClockSignal("sync"), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=dout)
                lane_outs.append(dout)
            outs.append(Cat(*lane_outs))
        data = outs[0]
        for b in range(1, banks):
            data = Mux(read_bank == b, outs[b], data)
        if self.registered:
            m.d.sync += self.rdata.eq(data[: self.width])
        else:
            m.d.comb += self.rdata.eq(data[: self.width])
        return m
