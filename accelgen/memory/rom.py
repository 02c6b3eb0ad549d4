"""Read-only memory with fixed contents: iCE40 block RAMs, instantiated directly.

Yosys maps a ROM with initial contents to iCE40 block RAMs by deriving its ``brams_map.v``
template once per distinct set of contents, which costs seconds each (as WebAssembly); the
``SB_RAM40_4K`` primitives with their ``INIT_*`` parameters computed here skip that. The block
aspect ratio is the resource model's (`accelgen.scheduler.resources.bram_tiling`), so the ROM
takes exactly the blocks the plan counts: a `width`-bit word spans ``ceil(width / W)`` blocks
side by side, `depth` words ``ceil(depth / D)`` banks of ``D`` words (a registered bank select
picks the read data). Elsewhere, and in simulation, it is an Amaranth `Memory`. Either way:

* ``data`` is the word at the ``addr`` of the last cycle in which ``en`` was high
  (synchronous read) and holds its value while ``en`` is low; ``en`` is high unless driven;
* before the first read ``data`` is zero in simulation and unspecified in the iCE40 blocks.

The ``SB_RAM40_4K`` model (Yosys ``ice40/cells_sim.v``) in read mode ``m`` (``D = 256 << m``
words of ``W = 16 >> m`` bits) stores 256 rows of 16 bits, row ``a`` of ``INIT_x`` being bits
``16 * (a % 16)`` up of ``INIT_{a // 16}``. Address ``A`` selects row ``A % 256``; of that row,
data bit ``g`` is bit ``g * r + A // 256`` (``r = 16 / W`` bits interleaved per group) and
comes out on ``RDATA`` pin ``g * r + PIN_OFFSET[r]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from amaranth import Array, Cat, ClockSignal, Const, Module, Shape, Signal, Value
from amaranth.hdl import Instance, ShapeCastable, ShapeLike
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

BLOCK_BITS = 4096
ROW_BITS = 16  # a block is 256 rows of 16 bits whatever the mode
ROWS = BLOCK_BITS // ROW_BITS
INIT_BITS = 256  # bits per INIT_0 .. INIT_F parameter
READ_MODES = {16: 0, 8: 1, 4: 2, 2: 3}  # port width -> READ_MODE (256x16 .. 2048x2)
# first RDATA pin of a port `W` bits wide, keyed by the interleave 16 / W (cells_sim.v)
PIN_OFFSET = {1: 0, 2: 0, 4: 1, 8: 3}
ADDR_BITS = 11


def block_tiling(depth: int, width: int) -> tuple[int, int]:
    """(block depth, block width) of the iCE40 mode a `depth` x `width` ROM is built from:
    the resource model's choice, so the block count is the one the plan assumes."""
    # imported here: the scheduler package imports the cores, which import this module
    from accelgen.scheduler.resources import bram_tiling

    return bram_tiling("ice40", depth, width)


def block_init(words: Sequence[int], block_depth: int) -> list[int]:
    """The 16 ``INIT_*`` values (``INIT_0`` first) of a block in mode `block_depth` x
    ``4096 / block_depth`` holding `words` (at most `block_depth` of them, each at most the
    block width) from address 0; the rest of the block is zero."""
    width = BLOCK_BITS // block_depth
    interleave = ROW_BITS // width
    if len(words) > block_depth:
        raise ValueError(f"{len(words)} words do not fit a block of {block_depth}")
    bits = 0
    for address, word in enumerate(words):
        if word >> width:
            raise ValueError(f"word {word:#x} at {address} is wider than {width} bits")
        row, group = address % ROWS, address // ROWS
        for g in range(width):
            if word >> g & 1:
                bits |= 1 << (row * ROW_BITS + g * interleave + group)
    mask = (1 << INIT_BITS) - 1
    return [bits >> (INIT_BITS * k) & mask for k in range(BLOCK_BITS // INIT_BITS)]


def _raw(shape: ShapeLike, value: Any) -> int:
    """`value` of `shape` as the unsigned integer of its bits."""
    if isinstance(shape, ShapeCastable):
        const = Const.cast(shape.const(value))
    else:
        const = Const(0 if value is None else value, Shape.cast(shape))
    return const.value & ((1 << len(const)) - 1)


class BlockRom(wiring.Component):
    """`depth` words of `shape` with contents `init` (missing words are the shape's default
    value), one read port (module docstring); `family` "ice40" instantiates the block RAMs
    when elaborated for a platform.

    Ports: ``addr`` (``In(range(depth))``), ``en`` (``In(1, init=1)``), ``data``
    (``Out(shape)``: a view when `shape` is a layout) — those of a `Memory` read port."""

    def __init__(self, *, shape: ShapeLike, depth: int, init: Sequence[Any],
                 family: str | None = None) -> None:
        if depth < 1:
            raise ValueError(f"a ROM needs depth >= 1, not {depth!r}")
        if len(init) > depth:
            raise ValueError(f"{len(init)} initial words for a ROM of depth {depth}")
        self.shape, self.depth, self.init, self.family = shape, depth, list(init), family
        self.width = Shape.cast(shape).width
        super().__init__({
            "addr": In(range(depth)),
            "en": In(1, init=1),
            "data": Out(shape),
        })

    def words(self) -> list[int]:
        """The contents as unsigned integers, `depth` of them."""
        pad = [None] * (self.depth - len(self.init))
        return [_raw(self.shape, v) for v in self.init + pad]

    def elaborate(self, platform) -> Module:
        m = Module()
        data = Value.cast(self.data)
        if platform is None or self.family != "ice40" or self.width == 0:
            m.submodules.mem = mem = Memory(shape=self.shape, depth=self.depth,
                                            init=self.init, attrs={"ram_style": "block"})
            port = mem.read_port()
            m.d.comb += [port.addr.eq(self.addr), port.en.eq(self.en),
                         data.eq(Value.cast(port.data))]
            return m

        block_depth, block_width = block_tiling(self.depth, self.width)
        interleave = ROW_BITS // block_width
        pins = [g * interleave + PIN_OFFSET[interleave] for g in range(block_width)]
        low_bits = block_depth.bit_length() - 1
        banks = -(-self.depth // block_depth)
        lanes = -(-self.width // block_width)
        raddr = Signal(ADDR_BITS)
        m.d.comb += raddr.eq(self.addr[:low_bits])
        words = self.words()
        bank_data = []
        for b in range(banks):
            rows = words[b * block_depth : (b + 1) * block_depth]
            lane_data = []
            for k in range(lanes):
                lane_words = [w >> (k * block_width) & ((1 << block_width) - 1) for w in rows]
                rdata = Signal(ROW_BITS, name=f"rdata_{b}_{k}")
                init = {f"p_INIT_{i:X}": Const(v, INIT_BITS)
                        for i, v in enumerate(block_init(lane_words, block_depth))}
                m.submodules[f"bram_{b}_{k}"] = Instance(
                    "SB_RAM40_4K",
                    p_READ_MODE=READ_MODES[block_width], p_WRITE_MODE=READ_MODES[block_width],
                    **init,
                    o_RDATA=rdata, i_RCLK=ClockSignal("sync"), i_RCLKE=Const(1), i_RE=self.en,
                    i_RADDR=raddr,
                    i_WCLK=ClockSignal("sync"), i_WCLKE=Const(0), i_WE=Const(0),
                    i_WADDR=Const(0, ADDR_BITS), i_MASK=Const(0, ROW_BITS),
                    i_WDATA=Const(0, ROW_BITS))
                lane_data.append(Cat(*(rdata[p] for p in pins)))
            bank_data.append(Cat(*lane_data))
        if banks == 1:
            m.d.comb += data.eq(bank_data[0])
        else:
            # the bank of the word in the blocks' output registers
            read_bank = Signal(range(banks))
            with m.If(self.en):
                m.d.sync += read_bank.eq(self.addr[low_bits:])
            m.d.comb += data.eq(Array(bank_data)[read_bank])
        return m
