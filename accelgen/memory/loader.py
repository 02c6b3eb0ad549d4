"""Filling run-time-loaded weight memories (iCE40 SPRAM) from a byte stream.

SPRAM cannot be initialised by the bitstream, so stages whose weights the scheduler placed there
receive them after configuration: the host sends the *weight image* (`WeightLoader.image`) as a
byte stream, and the loader writes one word per completed group of bytes.

Image format: the targets in order; for each, its words in address order; each word
little-endian in ``ceil(word_bits / 8)`` bytes (the stage's own packing, see
`ConvStage.weight_bytes`). The loader takes one byte per cycle (``i.ready`` is always high);
a word's write reaches its memory one cycle after its last byte (the write ports are
registers), and ``done`` rises with the image's last write; further bytes are ignored until
``restart`` (or a reset), which starts the image over (the memories keep their contents until
rewritten).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accelgen.cores.conv import weight_write_signature


@dataclass(frozen=True)
class LoadTarget:
    """One memory to fill: `depth` words of `word_bits` bits."""

    depth: int
    word_bits: int

    @property
    def bytes_per_word(self) -> int:
        return (self.word_bits + 7) // 8

    @property
    def bytes(self) -> int:
        return self.depth * self.bytes_per_word


class WeightLoader(wiring.Component):
    """Byte stream ``i`` -> word writes on ``w[k]`` for each target (module docstring)."""

    def __init__(self, targets: Sequence[LoadTarget]) -> None:
        self.targets = tuple(targets)
        members = {
            "i": In(stream.Signature(8, always_ready=True)),
            "restart": In(1),
            "done": Out(1),
        }
        for k, t in enumerate(self.targets):
            members[f"w{k}"] = Out(weight_write_signature(t.depth, t.word_bits))
        super().__init__(members)

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.targets)

    def port(self, k: int):
        return getattr(self, f"w{k}")

    def elaborate(self, platform) -> Module:
        m = Module()
        if not self.targets:
            m.d.comb += self.done.eq(1)
            return m
        n = len(self.targets)
        max_bytes = max(t.bytes_per_word for t in self.targets)
        target = Signal(range(n))
        addr = Signal(range(max(t.depth for t in self.targets)))
        byte = Signal(range(max(max_bytes, 2)))
        done = Signal()
        # `done` is raised with the last word's write (the writes are registered below)
        m.d.sync += self.done.eq(done & ~self.restart)
        take = self.i.valid & ~done
        # the bytes of a word shift in from the top: after a target's last byte, its word
        # starts `max_bytes - bytes_per_word` bytes up (no byte-position multiplexers)
        held = Signal(8 * (max_bytes - 1))
        full = Cat(held, self.i.payload)
        if max_bytes > 1:
            with m.If(take):
                m.d.sync += held.eq(full[8:])
        last_byte = Signal()
        last_addr = Signal()
        m.d.comb += [
            last_byte.eq(byte == Array([Const(t.bytes_per_word - 1, range(max_bytes))
                                        for t in self.targets])[target]),
            last_addr.eq(addr == Array([Const(t.depth - 1, addr.shape())
                                        for t in self.targets])[target]),
        ]
        for k, t in enumerate(self.targets):
            port = self.port(k)
            start = 8 * (max_bytes - t.bytes_per_word)
            # registered: the write leaves the loader's byte counting and target decode
            # behind a flip-flop on its way to the memories' address multiplexers
            m.d.sync += [
                port.addr.eq(addr),
                port.data.eq(full[start : start + t.word_bits]),
                port.en.eq(take & last_byte & (target == k)),
            ]
        with m.If(take):
            with m.If(last_byte):
                m.d.sync += byte.eq(0)
                with m.If(last_addr):
                    m.d.sync += addr.eq(0)
                    with m.If(target == n - 1):
                        m.d.sync += done.eq(1)
                    with m.Else():
                        m.d.sync += target.eq(target + 1)
                with m.Else():
                    m.d.sync += addr.eq(addr + 1)
            with m.Else():
                m.d.sync += byte.eq(byte + 1)
        with m.If(self.restart):  # last: overrides this cycle's byte
            m.d.sync += [target.eq(0), addr.eq(0), byte.eq(0), done.eq(0)]
        return m
