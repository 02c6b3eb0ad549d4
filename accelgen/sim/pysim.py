"""Simulating a generated accelerator in Amaranth's Python simulator.

`simulate` first loads the run-time weights (SPRAM) through ``load``, then streams images into
an `Accelerator`, collects the logits and classes, and measures
cycles: each image's *latency* (its first input beat to its last logit beat, images sent one
after another with no overlap) or, with ``back_to_back``, the steady-state *interval* between
consecutive images' last logit beats. Optional seeded random backpressure (input gaps, output
stalls) exercises the flow control; the hardware's own latency counter is read back too.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.errors import AccelgenError


class SimulationError(AccelgenError):
    """The simulated design stalled or produced the wrong number of beats."""


@dataclass(frozen=True)
class SimResult:
    logits: np.ndarray  # (N, K) integer codes in the model's output order
    classes: np.ndarray  # (N,)
    cycles: np.ndarray  # per image: latency, or the interval to the previous image
    counter_latency: int  # the hardware latency counter after the last image
    total_cycles: int
    run_seconds: float = 0.0  # wall time of the simulation itself (no elaboration, no compile)


def pixel_beats(x: np.ndarray, lanes: int) -> list[dict]:
    """Integer (N, H, W, C) images as pixel beats of `lanes` codes."""
    n, h, w, c = x.shape
    return [
        {"data": [int(v) for v in x[img, yy, xx, cf * lanes : (cf + 1) * lanes]],
         "last": int(yy == h - 1 and xx == w - 1 and cf == c // lanes - 1)}
        for img in range(n) for yy in range(h) for xx in range(w) for cf in range(c // lanes)
    ]


def image_beats(acc: Accelerator, x_ir: np.ndarray) -> list[list[dict]]:
    """Integer IR images (N, H, W, C) as the input stream's beats, one list per image."""
    return [pixel_beats(x_ir[k : k + 1], acc.in_fmt.lanes) for k in range(x_ir.shape[0])]


def simulate(acc: Accelerator, x_ir: np.ndarray, *, back_to_back: bool = False,
             seed: int | None = None, idle: float = 0.0, busy: float = 0.0,
             deadline: int = 50_000_000, vcd: str | None = None,
             stop: threading.Event | None = None) -> SimResult:
    """Run integer IR images through the accelerator (see the module docstring). Setting
    `stop` (from another thread) ends the simulation with a `SimulationError`."""
    qg = acc.plan.qgraph
    out_t = qg.tensors[qg.outputs[0].tensor]
    per_image = out_t.size // acc.out_fmt.lanes
    n = x_ir.shape[0]
    images = image_beats(acc, x_ir)
    rng_in = random.Random(seed)
    rng_out = random.Random(None if seed is None else seed + 1)
    logits: list[list[int]] = []
    classes: list[int] = []
    in_start: list[int] = []
    out_end: list[int] = []
    state = {"cycle": 0, "done_images": 0, "counter": 0}

    sim = Simulator(acc)
    sim.add_clock(1e-8)

    async def clock(ctx) -> None:
        while True:
            await ctx.tick()
            state["cycle"] += 1
            if stop is not None and state["cycle"] % 1024 == 0 and stop.is_set():
                raise SimulationError("the simulation was cancelled")
            if state["cycle"] > deadline:
                raise SimulationError(
                    f"simulation made no progress within {deadline:,} cycles "
                    f"({len(out_end)} of {n} images done)"
                )

    async def feeder(ctx) -> None:
        image = acc.weight_image()
        for byte in image:  # run-time-loaded weights first, as the host link does
            ctx.set(acc.load.payload, byte)
            ctx.set(acc.load.valid, 1)
            await ctx.tick()
        ctx.set(acc.load.valid, 0)
        if image:
            await ctx.tick()  # the loader's last write is registered; `loaded` rises with it
        if image and not ctx.get(acc.loaded):
            raise SimulationError(f"the loader took {len(image)} bytes but is not done")
        state["load_cycles"] = state["cycle"]
        for k, beats in enumerate(images):
            if not back_to_back:
                while len(out_end) < k:
                    await ctx.tick()
            for j, beat in enumerate(beats):
                while idle and rng_in.random() < idle:
                    ctx.set(acc.i.valid, 0)
                    await ctx.tick()
                ctx.set(acc.i.payload, beat)
                ctx.set(acc.i.valid, 1)
                if j == 0:
                    in_start.append(state["cycle"])
                await ctx.tick().until(acc.i.ready)
            ctx.set(acc.i.valid, 0)

    async def drain(ctx) -> None:
        current: list[int] = []
        while len(out_end) < n:
            ctx.set(acc.o.ready, int(not busy or rng_out.random() >= busy))
            _, _, valid, ready, payload = await ctx.tick().sample(acc.o.valid, acc.o.ready,
                                                                  acc.o.payload)
            if valid and ready:
                current.extend(int(v) for v in payload.data)
                if payload.last:
                    logits.append(current)
                    current = []
                    out_end.append(state["cycle"])  # the edge that moved it
        state["counter"] = ctx.get(acc.latency)

    async def classes_sink(ctx) -> None:
        ctx.set(acc.cls.ready, 1)
        while len(classes) < n:
            _, _, valid, value = await ctx.tick().sample(acc.cls.valid, acc.cls.payload)
            if valid:
                classes.append(int(value))

    sim.add_testbench(clock, background=True)
    sim.add_testbench(feeder)
    sim.add_testbench(drain)
    sim.add_testbench(classes_sink)
    failure = None
    started = time.perf_counter()
    try:
        if vcd:
            with sim.write_vcd(vcd):
                sim.run()
        else:
            sim.run()
    except SimulationError as e:
        failure = SimulationError(str(e))
    if failure is not None:
        sim = None
        _drop_suspended_testbenches()
        raise failure
    if len(logits) != n or any(len(v) != per_image * acc.out_fmt.lanes for v in logits):
        raise SimulationError(f"expected {n} images of {out_t.size} logits")
    order = qg.outputs[0].layout.reshape(-1)
    arr = np.array(logits, dtype=np.int64)[:, order]
    if back_to_back:
        cycles = np.diff(np.array([in_start[0], *out_end]))
    else:
        cycles = np.array(out_end) - np.array(in_start)
    return SimResult(arr, np.array(classes[:n]), cycles, state["counter"], state["cycle"],
                     time.perf_counter() - started)


def _drop_suspended_testbenches() -> None:
    """Collect the testbenches a `SimulationError` left suspended, without the "Exception
    ignored ... aclose()" noise Python prints when it finalizes them (a cancelled self-check
    of a failing build would otherwise print a traceback under the build's one-line error)."""
    previous = sys.unraisablehook

    def hook(info) -> None:
        if not isinstance(info.exc_value, (RuntimeError, GeneratorExit)):
            previous(info)

    sys.unraisablehook = hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def run_model(acc: Accelerator, feeds) -> SimResult:
    """Model-layout inputs -> quantized by the host rule -> simulated."""
    qg = acc.plan.qgraph
    x_ir = golden.quantize_inputs(qg, feeds)[qg.inputs[0].tensor]
    return simulate(acc, x_ir)
