"""The weight loader: a byte stream becomes word writes into run-time-loaded memories."""

from __future__ import annotations

import random

from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from accelgen.memory.loader import LoadTarget, WeightLoader


@settings(max_examples=50, deadline=None)
@given(targets=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 40)), min_size=1,
                        max_size=4),
       seed=st.integers(0, 10_000))
def test_loader_writes_every_word_once_in_order(targets: list, seed: int) -> None:
    rng = random.Random(seed)
    dut = WeightLoader([LoadTarget(d, b) for d, b in targets])
    words = [[rng.getrandbits(b) for _ in range(d)] for d, b in targets]
    image = b"".join(w.to_bytes((b + 7) // 8, "little")
                     for (_, b), ws in zip(targets, words, strict=True) for w in ws)
    assert len(image) == dut.total_bytes
    stream = image + bytes(rng.getrandbits(8) for _ in range(5))  # extra bytes are ignored
    writes: list[list[tuple[int, int]]] = [[] for _ in targets]
    done_at: list[int] = []  # the first cycle `done` is seen high
    write_cycles: list[int] = []

    async def feed(ctx) -> None:
        for byte in stream:
            while rng.random() < 0.3:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, byte)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(3):
            await ctx.tick()

    async def watch(ctx) -> None:
        cycle = 0
        while True:
            cycle += 1
            sampled = await ctx.tick().sample(
                dut.i.valid, dut.done,
                *(getattr(dut, f"w{k}").en for k in range(len(targets))),
                *(getattr(dut, f"w{k}").addr for k in range(len(targets))),
                *(getattr(dut, f"w{k}").data for k in range(len(targets))))
            _valid, done, *rest = sampled[2:]
            n = len(targets)
            ens, addrs, datas = rest[:n], rest[n : 2 * n], rest[2 * n :]
            for k in range(n):
                if ens[k]:
                    writes[k].append((int(addrs[k]), int(datas[k])))
                    write_cycles.append(cycle)
            if done and not done_at:
                done_at.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(feed)
    sim.add_testbench(watch, background=True)
    sim.run()
    for k, ws in enumerate(words):
        assert writes[k] == list(enumerate(ws)), f"target {k}"
    # `done` rises with the last write (the write ports are registers): high from the cycle
    # after the last write's enable, and no write follows it
    assert done_at == [write_cycles[-1] + 1]


def test_nothing_to_load_is_done_at_once() -> None:
    dut = WeightLoader([])
    seen = []

    async def bench(ctx) -> None:
        seen.append(ctx.get(dut.done))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1] and dut.total_bytes == 0


def test_restart_starts_the_image_over() -> None:
    """A load interrupted part-way (a bad frame on the link) is restarted from its first byte:
    every word ends up written with the second pass's value, and done rises only then."""
    targets = [LoadTarget(3, 12), LoadTarget(2, 8)]
    dut = WeightLoader(targets)
    image = bytes(range(1, dut.total_bytes + 1))
    partial = bytes([0xEE] * 5)
    memory: dict[tuple[int, int], int] = {}
    done_trace: list[int] = []

    async def bench(ctx) -> None:
        async def send(byte: int) -> None:
            ctx.set(dut.i.payload, byte)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
            ctx.set(dut.i.valid, 0)

        for b in partial:
            await send(b)
        ctx.set(dut.restart, 1)
        await ctx.tick()
        ctx.set(dut.restart, 0)
        done_trace.append(ctx.get(dut.done))
        for b in image:
            done_trace.append(ctx.get(dut.done))
            await send(b)
        done_trace.append(ctx.get(dut.done))  # the last word's write is still registered
        await ctx.tick()
        done_trace.append(ctx.get(dut.done))

    async def watch(ctx) -> None:
        while True:
            _, _, *vals = await ctx.tick().sample(dut.w0.en, dut.w0.addr, dut.w0.data,
                                                   dut.w1.en, dut.w1.addr, dut.w1.data)
            for k in range(2):
                en, addr, data = vals[3 * k : 3 * k + 3]
                if en:
                    memory[(k, int(addr))] = int(data)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_testbench(watch, background=True)
    sim.run()
    expect = {(0, a): int.from_bytes(image[2 * a : 2 * a + 2], "little") & 0xFFF for a in range(3)}
    expect |= {(1, a): image[6 + a] for a in range(2)}
    assert memory == expect
    assert done_trace[:-1] == [0] * (len(image) + 2) and done_trace[-1] == 1
