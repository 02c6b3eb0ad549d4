"""Simulation helpers for hardware tests: stream drivers with seeded random backpressure, and
software models of the stream orders the stages use."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import numpy as np
from amaranth.sim import Simulator

from accelgen.cores.streams import Format
from accelgen.memory.linebuffer import WindowGeometry
from accelgen.sim.pysim import pixel_beats

__all__ = ["pixel_beats"]


class Deadlock(AssertionError):
    """No progress within the cycle budget of a simulation."""


async def put(ctx, port, beats: Sequence[dict], rng: random.Random, idle: float = 0.3,
              deadline: int = 2_000_000) -> None:
    """Drive `beats` into a stream, holding valid low for random cycles between beats."""
    cycles = 0
    for k, beat in enumerate(beats):
        while rng.random() < idle:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.payload, beat)
        ctx.set(port.valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(port.ready)
            cycles += 1
            if ready:
                break
            if cycles > deadline:
                raise Deadlock(f"input stalled for {deadline} cycles at beat {k} of {len(beats)}")
    ctx.set(port.valid, 0)


async def get(ctx, port, n: int, out: list, rng: random.Random, busy: float = 0.3,
              stamps: list | None = None, deadline: int = 2_000_000) -> None:
    """Take `n` beats from a stream, dropping ready at random; records cycle stamps."""
    cycle = 0
    while len(out) < n:
        if cycle > deadline:
            raise Deadlock(f"only {len(out)} of {n} output beats after {deadline} cycles")
        ctx.set(port.ready, int(rng.random() >= busy))
        _, _, valid, ready, payload = await ctx.tick().sample(port.valid, port.ready, port.payload)
        cycle += 1
        if valid and ready:
            out.append(payload)
            if stamps is not None:
                stamps.append(cycle)
    ctx.set(port.ready, 0)


def run(dut, inputs: dict, outputs: dict, seed: int = 0, idle: float = 0.3,
        busy: float = 0.3, deadline: int = 2_000_000, setup=None) -> dict[str, list]:
    """Simulate `dut`: `inputs` maps port name -> beats, `outputs` maps port name -> count.

    Returns the received payloads per output port, plus "_cycles": the cycle of each output's
    last beat. A deadlock shows as a timeout (AssertionError), never as a hang. `setup(ctx)`,
    if given, runs to completion before any input beat (e.g. loading weights).
    """
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    received: dict[str, list] = {name: [] for name in outputs}
    stamps: dict[str, list] = {name: [] for name in outputs}
    if setup is not None and len(inputs) != 1:
        raise ValueError("setup needs exactly one input stream")
    for k, (name, beats) in enumerate(inputs.items()):
        port = getattr(dut, name) if isinstance(name, str) else name

        async def driver(ctx, port=port, beats=beats, k=k) -> None:
            if setup is not None:
                await setup(ctx)
            await put(ctx, port, beats, random.Random(seed * 101 + k), idle, deadline)

        sim.add_testbench(driver)
    for k, (name, n) in enumerate(outputs.items()):
        port = getattr(dut, name)

        async def monitor(ctx, port=port, n=n, name=name, k=k) -> None:
            await get(ctx, port, n, received[name], random.Random(seed * 211 + k + 50), busy,
                      stamps[name], deadline)

        sim.add_testbench(monitor)
    sim.run()
    for name, n in outputs.items():
        assert len(received[name]) == n, (
            f"{name}: {len(received[name])} of {n} beats before the deadline (deadlock?)"
        )
    return {**received, "_stamps": stamps}


# ---------------------------------------------------------------------------------------------
# software models of the stream orders
# ---------------------------------------------------------------------------------------------


def beats_to_images(beats: Iterable, n: int, h: int, w: int, c: int) -> np.ndarray:
    values = [int(v) for b in beats for v in b.data]
    return np.array(values, dtype=np.int64).reshape(n, h, w, c)


def window_beats(x: np.ndarray, g: WindowGeometry, order: str, repeats: int = 1) -> list[dict]:
    """The window stream a `SlidingWindow` must produce for (N, H, W, C) images `x`."""
    n, h, w, c = x.shape
    lanes = g.fmt.lanes
    cl = c // lanes
    oh, ow = g.out_hw
    kh, kw = g.kernel
    out = []
    for img in range(n):
        for oy in range(oh):
            for ox in range(ow):
                if order == "dense":
                    groups = [(r, ky, kx, cf) for r in range(repeats) for ky in range(kh)
                              for kx in range(kw) for cf in range(cl)]
                else:
                    groups = [(0, ky, kx, cf) for cf in range(cl) for ky in range(kh)
                              for kx in range(kw)]
                for idx, (_, ky, kx, cf) in enumerate(groups):
                    yy = oy * g.stride[0] - g.padding[0] + ky
                    xx = ox * g.stride[1] - g.padding[1] + kx
                    inside = 0 <= yy < h and 0 <= xx < w
                    vals = ([int(v) for v in x[img, yy, xx, cf * lanes : (cf + 1) * lanes]]
                            if inside else [0] * lanes)
                    if order == "dense":
                        first = ky == 0 and kx == 0 and cf == 0
                        end = ky == kh - 1 and kx == kw - 1 and cf == cl - 1
                    else:
                        first = ky == 0 and kx == 0
                        end = ky == kh - 1 and kx == kw - 1
                    last = (oy == oh - 1 and ox == ow - 1 and idx == len(groups) - 1)
                    out.append({"data": vals, "pad": int(not inside), "first": int(first),
                                "end": int(end), "last": int(last)})
    return out


def as_dict(payload, keys: Sequence[str]) -> dict:
    d = {}
    for k in keys:
        v = getattr(payload, k)
        d[k] = [int(e) for e in v] if k == "data" else int(v)
    return d


def random_codes(rng: np.random.Generator, shape: tuple, fmt: Format) -> np.ndarray:
    lo, hi = (-(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1) if fmt.signed else (
        0, (1 << fmt.bits) - 1)
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64)
