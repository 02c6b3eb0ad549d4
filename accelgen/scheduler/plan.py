"""The hardware plan: what the scheduler decided, as typed values the accelerator builder reads.

A `HardwarePlan` names, for every layer of a `QuantizedGraph`, the stage that implements it
(`StagePlan`: parallelism, lanes in and out, where its weights live, its cycle and resource
estimates), the depth of every FIFO that decouples a fan-out (residual skip paths), and the
totals: initiation interval (cycles per image in steady state), latency, FPS at the planned
clock, resources against the device's budget, and the multiply-accumulate utilisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from accelgen.devices import Device
from accelgen.quantized import QConv, QDense, QuantizedGraph

RESOURCE_KINDS = ("lut", "ff", "bram", "spram", "dsp")

LOGIC_FILL = {"ice40": 0.93, "ecp5": 0.92, "gowin": 0.9}
"""Share of a device's LUTs a plan may fill: the placer needs room, and the router more. On
the UP5K the default model placed and routed at 5,097 of 5,280 logic cells (96.5 %) and could
not be placed at 5,280; a plan at 96 % (5,067 estimated) packed into 5,386 cells and could not
be placed, one at 93 % (4,909) packed into 5,186 (98 %) and placed and routed. On the
GW1NR-9 (estimates in nextpnr's LUT4 + ALU, pass-through LUTs included) the default model
placed and routed at 7,596 (88 %; 7,458 estimated); a plan that packed into 8,564 (99 %) kept
nextpnr-himbaechel placing for over 15 minutes without end (`accelgen.build.PLACEABLE`)."""

DSP_FREE = {"ice40": 0, "ecp5": 0, "gowin": 1}
"""DSP blocks a plan leaves unused. nextpnr-himbaechel's analytic placer did not finish (over
30 CPU minutes) on the default model's GW1NR-9 plan with every MULT9X9 (40/40) and every BSRAM
(26/26) in use, at 83 % of the LUT4s (the default model needs all 26 BSRAMs)."""


@dataclass(frozen=True)
class Resources:
    lut: float = 0.0
    ff: float = 0.0
    bram: int = 0
    spram: int = 0
    dsp: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.lut + other.lut, self.ff + other.ff, self.bram + other.bram,
                         self.spram + other.spram, self.dsp + other.dsp)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in RESOURCE_KINDS}

    @staticmethod
    def budget(device: Device) -> Resources:
        return Resources(device.luts, device.ffs, device.bram_blocks, device.spram_blocks,
                         device.dsp_blocks)

    def over(self, budget: Resources) -> list[str]:
        return [k for k in RESOURCE_KINDS if getattr(self, k) > getattr(budget, k)]


@dataclass(frozen=True)
class StagePlan:
    """How one layer becomes hardware."""

    layer: str
    kind: str  # conv, depthwise, dense, maxpool, avgpool, globalavg, globalmax, add, clamp
    pe: int
    simd: int
    lanes_in: int
    lanes_out: int
    cycles: float
    macs: int  # useful multiply-accumulates per image
    multipliers: int
    dsp_blocks: int  # DSP blocks its multipliers use (the rest are LUT multipliers)
    weight_memory: str  # "none", "logic", "bram", "spram"
    resources: Resources
    ring_memory: str = "none"  # the line buffer: "none", "logic", "bram"
    compact_ring: bool = False  # the line buffer holds only the window's rows
    slack_rows: int = 0  # rows its line buffer holds beyond the window's and a stride's
    partial_release: bool = False  # its line buffer frees the oldest row column by column
    aux_memory: str = "none"  # a global pool's running sums
    shared_dsp: int = -1
    """A DSP block (numbered per plan) whose other half belongs to another stage, where one
    more of this stage's products goes (iCE40 dual 8x8 mode); -1: none. Counted in the glue."""
    param_memory: str = "none"  # a MAC stage's requantizer bias table: "logic" or "bram"

    def style(self, placement: str) -> str:
        """The ``ram_style`` synthesis attribute of a placement."""
        return {"logic": "logic", "bram": "block", "spram": "huge"}.get(placement, "logic")

    def describe(self) -> str:
        if self.kind in ("conv", "dense"):
            return f"pe {self.pe} x simd {self.simd}"
        if self.kind == "depthwise":
            return f"pe {self.pe}"
        return f"{self.lanes_in} lanes"


@dataclass(frozen=True, eq=False)
class HardwarePlan:
    qgraph: QuantizedGraph
    device: Device
    clock_mhz: float
    stages: tuple[StagePlan, ...]
    input_lanes: int
    fifo_depths: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Depth of the FIFO from a fanned-out tensor to a consumer: (tensor, consumer layer)."""
    glue: Resources = Resources()
    """Width converters, fan-out FIFOs and the output arg-max."""
    host: Resources = Resources()
    """What every build adds around the accelerator: the host link (UART, protocol engine,
    result buffer, counters) and the board top (PLL, reset, status LED)."""
    interval: float = 0.0
    """The coupled pipeline's cycles per image (`accelgen.scheduler.flow`); 0: not computed
    (then the slowest stage's)."""

    def stage(self, layer: str) -> StagePlan:
        for s in self.stages:
            if s.layer == layer:
                return s
        raise KeyError(layer)

    @property
    def stage_interval(self) -> float:
        """The slowest stage's cycles per image, alone (fed and drained as fast as it likes)."""
        return max(s.cycles for s in self.stages)

    @property
    def ii_cycles(self) -> float:
        """Initiation interval: cycles per image in steady state — the coupled pipeline's
        (`interval`), at least the slowest stage's."""
        return max(self.interval, self.stage_interval)

    @property
    def bottleneck(self) -> str:
        return max(self.stages, key=lambda s: s.cycles).layer

    @property
    def fps(self) -> float:
        return self.clock_mhz * 1e6 / self.ii_cycles

    @property
    def accelerator_resources(self) -> Resources:
        """The accelerator alone: its stages and glue."""
        total = self.glue
        for s in self.stages:
            total = total + s.resources
        return total

    @property
    def resources(self) -> Resources:
        """The whole design a build places: the accelerator and the `host` part, in the units
        of the device's budget and of nextpnr's report — on the iCE40 ``lut`` counts logic
        cells (a cell holds a LUT4, a carry and a flip-flop; flip-flops that cannot share a
        cell with their LUT take one of their own: `LogicModel.ff_cell_share`)."""
        from accelgen.scheduler.resources import MODELS

        total = self.accelerator_resources + self.host
        share = MODELS[self.device.family].ff_cell_share
        if share:
            total = replace(total, lut=total.lut + share * total.ff)
        return total

    @property
    def budget(self) -> Resources:
        return Resources.budget(self.device)

    @property
    def placeable(self) -> Resources:
        """The budget a plan may use: the device's, with `LOGIC_FILL` of its LUTs and
        `DSP_FREE` of its DSP blocks left unused."""
        b = self.budget
        return replace(b, lut=b.lut * LOGIC_FILL[self.device.family],
                       dsp=max(0, b.dsp - DSP_FREE[self.device.family]))

    @property
    def fits(self) -> bool:
        return not self.resources.over(self.placeable)

    @property
    def multipliers(self) -> int:
        return sum(s.multipliers for s in self.stages)

    @property
    def dsp_products(self) -> int:
        """Products computed on DSP blocks: the multiplier cells a Gowin netlist has (one
        MULT9X9 or MULT18X18 each; nextpnr counts those, not blocks)."""
        total = 0
        for s in self.stages:
            layer = self.qgraph.layer(s.layer)
            if s.dsp_blocks and isinstance(layer, (QConv, QDense)):
                x = self.qgraph.tensors[layer.inputs[0]]
                per_block = self.device.dsp_products(x.bits, layer.w_bits)
                total += min(s.multipliers, s.dsp_blocks * per_block)
        return total

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.stages)

    @property
    def mac_utilization(self) -> float:
        """Useful MACs per image / (multipliers x cycles per image)."""
        return self.macs / (self.multipliers * self.ii_cycles) if self.multipliers else 0.0

    def summary(self) -> dict:
        used, avail = self.resources, self.budget
        return {
            "fits": self.fits,
            "device": self.device.name,
            "clock_mhz": self.clock_mhz,
            "cycles_per_image": round(self.ii_cycles),
            "slowest_stage_cycles": round(self.stage_interval),
            "fps": self.fps,
            "mac_utilization": self.mac_utilization,
            "multipliers": self.multipliers,
            "macs_per_image": self.macs,
            "bottleneck": self.bottleneck,
            "resources": {k: {"used": round(getattr(used, k), 1), "available": getattr(avail, k)}
                          for k in ("lut", "ff", "bram", "spram", "dsp")},
            "stages": [
                {"layer": s.layer, "kind": s.kind, "parallelism": s.describe(), "pe": s.pe,
                 "simd": s.simd, "lanes_in": s.lanes_in, "lanes_out": s.lanes_out,
                 "cycles": round(s.cycles), "macs": s.macs, "multipliers": s.multipliers,
                 "dsp_blocks": s.dsp_blocks, "shared_dsp": s.shared_dsp,
                 "partial_release": s.partial_release,
                 "weights": s.weight_memory,
                 "resources": {k: round(v, 1) for k, v in s.resources.as_dict().items()}}
                for s in self.stages
            ],
        }
