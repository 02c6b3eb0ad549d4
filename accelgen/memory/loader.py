"""Filling run-time-loaded weight memories (iCE40 SPRAM) from a byte stream.

SPRAM cannot be initialised by the bitstream, so stages whose weights the scheduler placed there
receive them after configuration: the host sends the *weight image* (`WeightLoader.image`) as a
byte stream, and the loader writes one word per completed group of bytes.

Image format: the targets in order; for each, its words in address order; each word
little-endian in ``ceil(word_bits / 8)`` bytes (the stage's own packing, see
`ConvStage.weight_bytes`). The loader takes one byte per cycle (``i.ready`` is always high) and
raises ``done`` after the image's last byte; further bytes are ignored until ``restart`` (or a
reset), which starts the image over (the memories keep their contents until rewritten).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from amaranth import Module, Signal
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
        max_bytes = max(t.bytes_per_word for t in self.targets)
        target = Signal(range(len(self.targets) + 1))
        addr = Signal(range(max(t.depth for t in self.targets) + 1))
        byte = Signal(range(max_bytes + 1))
        word = Signal(8 * max_bytes)
        done = Signal()
        m.d.comb += self.done.eq(done)
        take = self.i.valid & ~done
        # the word with this cycle's byte in place
        full = Signal.like(word)
        m.d.comb += full.eq(word)
        with m.Switch(byte):
            for b in range(max_bytes):
                with m.Case(b):
                    m.d.comb += full[8 * b : 8 * b + 8].eq(self.i.payload)
        for k, t in enumerate(self.targets):
            port = self.port(k)
            m.d.comb += [port.addr.eq(addr), port.data.eq(full[: t.word_bits])]
            last_byte = byte == t.bytes_per_word - 1
            with m.If(take & (target == k)):
                with m.If(last_byte):
                    m.d.comb += port.en.eq(1)
                    m.d.sync += [byte.eq(0), word.eq(0)]
                    with m.If(addr == t.depth - 1):
                        m.d.sync += [addr.eq(0), target.eq(k + 1)]
                        if k == len(self.targets) - 1:
                            m.d.sync += done.eq(1)
                    with m.Else():
                        m.d.sync += addr.eq(addr + 1)
                with m.Else():
                    m.d.sync += [byte.eq(byte + 1), word.eq(full)]
        with m.If(self.restart):  # last: overrides this cycle's byte
            m.d.sync += [target.eq(0), addr.eq(0), byte.eq(0), word.eq(0), done.eq(0)]
        return m
