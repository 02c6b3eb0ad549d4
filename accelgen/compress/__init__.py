"""Compression passes: pure functions from a graph to a new graph (or a `QuantizedGraph`)."""

from accelgen.compress.quantize import QuantConfig, plan_units, quantize

__all__ = ["QuantConfig", "plan_units", "quantize"]
