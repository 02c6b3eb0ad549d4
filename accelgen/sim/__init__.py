"""Simulating generated accelerators: Amaranth's Python simulator (``pysim``) and compiled RTL
through Yosys' CXXRTL (``cxxrtl``) or Verilator (``verilator``), behind one entry point with
one contract."""

from __future__ import annotations

import numpy as np

from accelgen.errors import UsageError
from accelgen.sim.pysim import SimResult, SimulationError

BACKENDS = ("pysim", "cxxrtl", "verilator")

__all__ = ["BACKENDS", "SimResult", "SimulationError", "simulate"]


def simulate(acc, x_ir: np.ndarray, *, backend: str = "pysim", **options) -> SimResult:
    """Stream integer IR images (N, H, W, C) through `acc`: logits, classes and cycles per
    image, identical for every backend (see `accelgen.sim.pysim.simulate` for the options)."""
    if backend == "pysim":
        from accelgen.sim import pysim

        return pysim.simulate(acc, x_ir, **options)
    if backend == "cxxrtl":
        from accelgen.sim import cxxrtl

        return cxxrtl.simulate(acc, x_ir, **options)
    if backend == "verilator":
        from accelgen.sim import verilator

        return verilator.simulate(acc, x_ir, **options)
    raise UsageError(f"simulation backend {backend!r} (one of {', '.join(BACKENDS)})")
