"""Simulating generated accelerators: Amaranth's simulator now, a compiled backend later."""

from accelgen.sim.pysim import SimResult, SimulationError, simulate

__all__ = ["SimResult", "SimulationError", "simulate"]
