"""The resource model: what a stage of a given parallelism costs on a device.

Block memories are counted exactly the way the design asks for them: every memory of the
pipeline carries a placement (`logic`, `bram`, `spram`) that the plan decides and the generated
design honours, and the block count of a (depth x width) memory is the cheapest tiling of the
device's block-RAM aspect ratios. Logic (LUTs, flip-flops) is estimated from the datapath
widths with per-family coefficients calibrated against Yosys + nextpnr on stage-sized designs
(`benchmarks/resource_calibration.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from accelgen.devices import Device

BRAM_SHAPES = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
    "gowin": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
}
SPRAM_SHAPE = (16384, 16)
LOGIC_MEMORY_BITS = 256  # memories this small stay in flip-flops


@dataclass(frozen=True)
class Memory:
    """A memory the plan places: its purpose, depth x width, and where it lives."""

    purpose: str
    depth: int
    width: int
    placement: str  # "logic", "bram", "spram"
    blocks: int

    @property
    def bits(self) -> int:
        return self.depth * self.width


def bram_blocks(device: Device, depth: int, width: int) -> int:
    shapes = BRAM_SHAPES[device.family]
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in shapes)


def spram_blocks(depth: int, width: int) -> int:
    d, w = SPRAM_SHAPE
    return math.ceil(width / w) * math.ceil(depth / d)


def place(device: Device, purpose: str, depth: int, width: int, *,
          allow_spram: bool = False) -> Memory:
    """The default placement: flip-flops when tiny, block RAM otherwise (SPRAM if asked)."""
    if depth * width <= LOGIC_MEMORY_BITS:
        return Memory(purpose, depth, width, "logic", 0)
    if allow_spram and device.spram_blocks:
        return Memory(purpose, depth, width, "spram", spram_blocks(depth, width))
    return Memory(purpose, depth, width, "bram", bram_blocks(device, depth, width))


@dataclass(frozen=True)
class LogicModel:
    """LUT / FF coefficients of one FPGA family."""

    lut_per_adder_bit: float
    lut_per_mux_bit: float
    lut_per_compare_bit: float
    lut_mult_per_bit2: float  # a LUT multiplier of a x b bits costs ~ this x a x b
    window_control_lut: float
    window_control_ff: float
    stage_control_lut: float
    stage_control_ff: float
    logic_memory_lut_per_bit: float


MODELS = {
    "ice40": LogicModel(1.0, 1.0, 0.5, 3.0, 140, 90, 40, 30, 0.6),
    "ecp5": LogicModel(1.0, 0.5, 0.5, 2.2, 120, 90, 35, 30, 0.3),
    "gowin": LogicModel(1.0, 0.5, 0.5, 2.5, 120, 90, 35, 30, 0.4),
}


def lut_multiplier(model: LogicModel, a_bits: int, b_bits: int) -> float:
    return model.lut_mult_per_bit2 * a_bits * b_bits + 10


def logic_memory(model: LogicModel, mem: Memory) -> tuple[float, float]:
    """(LUT, FF) of a memory kept in flip-flops: the bits, and the read multiplexer."""
    if mem.placement != "logic":
        return 0.0, 0.0
    return model.logic_memory_lut_per_bit * mem.bits, float(mem.bits)
