"""The PE array's shape on each device, and its estimate for a model (`accelgen estimate --arch`).

A device gets one PE per DSP block on iCE40 (an SB_MAC16 each), one per two multipliers
elsewhere (ECP5 ``MULT18X18D``, Gowin ``MULT18X18``), at most 16, each computing up to
`FOLDS` output channels per pass off iCE40 (one on iCE40); its main memory is the SPRAM
on the UP5K and block RAM elsewhere (what the PE weight buffers and the parameter and counter
memories leave). The clock is what the array's builds close with a margin (`ARRAY_CLOCK_MHZ`:
33 MHz on the UP5K, 35 MHz on the ECP5; elsewhere the device's planned clock). The
estimate's logic comes from the array's logic model (`accelgen.array.resources`, fitted to
Yosys); an array whose logic the model puts above the device's LUTs does not fit
(`DoesNotFitArray`). The estimate does not place the array (`ArrayEstimate.logic_checked` is
False and the estimate says so: `accelgen build --arch array` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from accelgen.array.compiler import ArrayConfig, DoesNotFitArray, NotOnArray, compile_graph
from accelgen.array.isa import Mode
from accelgen.array.machine import cost, totals
from accelgen.devices import Device

SPRAM_WORDS = 16384  # 16-bit words of one iCE40 SPRAM block
# output channels a PE computes per pass off iCE40 (`ArrayConfig.folds`): two halve the
# input's reads of a layer with more channels than PEs for about 60 logic cells a PE
# (ResNet-8 at 8 bits on the ECP5-85F: 939 LUTs; four would be 2,473, and the parameter
# buffer would leave distributed RAM, for a few more percent of the reads)
FOLDS = 2
RESERVED_BRAM = 8  # blocks for the parameter buffer and the per-layer counters
# the array's clock per family (the device's planned clock, the streaming pipeline's, where
# absent): what its builds close with a margin (the default model on the UP5K: Fmax 35.6 MHz
# at 33 planned, after the timing work of 2026-12; the VWW MobileNet on the ECP5-85F:
# 37.3 MHz; nextpnr)
ARRAY_CLOCK_MHZ = {"ice40": 33.0, "ecp5": 35.0}


@dataclass(frozen=True)
class ArrayTarget:
    config: ArrayConfig
    family: str | None  # the PE implementation ("ice40"; None: multipliers Yosys maps)
    clock_mhz: float


def array_target(dev: Device) -> ArrayTarget:
    """The array for `dev` (module docstring); `NotOnArray` for a device without DSP blocks."""
    if dev.dsp_blocks == 0:
        raise NotOnArray(f"{dev.name} has no DSP blocks for the PE array; use --arch pipeline")
    if dev.family == "ice40":
        pes = dev.dsp_blocks - dev.dsp_blocks % 4
        mem = dev.spram_blocks * SPRAM_WORDS if dev.spram_blocks else 0
        wbuf = 512
        if not mem:
            mem = (dev.bram_blocks - 2 * pes - RESERVED_BRAM) * (dev.bram_bits // 16)
        return ArrayTarget(ArrayConfig(pes=pes, mem_words=mem, wbuf_words=wbuf,
                                       word16_cycles=2), "ice40", _clock(dev))
    pes = min(16, dev.dsp_blocks // 2)
    pes -= pes % 4
    if pes < 4:
        raise NotOnArray(f"{dev.name} has {dev.dsp_blocks} multipliers; the PE array needs 8")
    words_per_block = dev.bram_bits // 18 if dev.bram_bits % 18 == 0 else dev.bram_bits // 16
    mem = (dev.bram_blocks - pes - RESERVED_BRAM) * words_per_block
    return ArrayTarget(ArrayConfig(pes=pes, mem_words=max(mem, 64), wbuf_words=words_per_block,
                                   folds=FOLDS),
                       None, _clock(dev))


def layer_counters_kept(family: str) -> bool:
    """Whether a build keeps the per-layer counters readable over the host link by default:
    not on iCE40 (the counter memory's write path and counters are about 350 logic cells,
    which on the UP5K cost place-and-route time and clock; ``accelgen build
    --layer-counters`` keeps them where they fit)."""
    return family != "ice40"


def _clock(dev: Device) -> float:
    return ARRAY_CLOCK_MHZ.get(dev.family, dev.planned_clock_mhz)


@dataclass(frozen=True)
class ArrayEstimate:
    """What the array does with a model: cycles per image (the exact model of the hardware's
    counters), FPS at the clock, MAC utilisation, memory used, per-layer rows."""

    device: str
    clock_mhz: float
    pes: int
    cycles_per_image: int
    memory_reads: int
    memory_writes: int
    memory_words: int
    memory_available: int
    weight_bytes: int
    mac_utilization: float
    layers: list[dict]
    logic_checked: bool = False
    macs_per_image: int = 0
    resources: dict = field(default_factory=dict)  # planned: the counts known exactly
    program: object = field(default=None, repr=False, compare=False)  # the compiled Program
    layer_counters: bool = False  # the per-layer counters are built (LAYERS over the link)

    @property
    def fps(self) -> float:
        return self.clock_mhz * 1e6 / self.cycles_per_image

    def summary(self) -> dict:
        return {"fits": True, "arch": "array", "device": self.device,
                "clock_mhz": self.clock_mhz, "pes": self.pes,
                "cycles_per_image": self.cycles_per_image, "fps": self.fps,
                "mac_utilization": self.mac_utilization,
                "memory": {"used_words": self.memory_words,
                           "available_words": self.memory_available,
                           "reads_per_image": self.memory_reads,
                           "writes_per_image": self.memory_writes},
                "weight_bytes": self.weight_bytes, "logic_checked": self.logic_checked,
                "macs_per_image": self.macs_per_image, "resources": self.resources,
                "layer_counters": self.layer_counters,
                "layers": self.layers}


def estimate_array(qg, dev: Device, clock_mhz: float | None = None,
                   layer_counters: bool | None = None) -> ArrayEstimate:
    """The array's estimate for `qg` on `dev`, with the per-layer counters or without them
    (`layer_counters`; None: `layer_counters_kept`); `NotOnArray` or `DoesNotFitArray` (both
    name the cause) when it cannot run it."""
    target = array_target(dev)
    cfg = target.config
    program = compile_graph(qg, cfg)
    cycles, reads, writes = totals(program)
    capacity = 0.0
    rows = []
    for lc, c in zip(program.code, cost(program), strict=True):
        mode = Mode(lc.instr.mode)
        slots = cfg.pes * mode.lanes / (cfg.word16_cycles if mode.lanes != 2 else 1)
        capacity += c.cycles * slots  # (a pool's or an add's cycles leave the PEs idle)
        rows.append({"layer": lc.layer, "op": c.op, "bits": mode.bits, "cycles": c.cycles,
                     "reads": c.reads, "writes": c.writes, "macs": c.macs,
                     "mac_utilization": c.macs / (c.cycles * slots) if c.macs else None})
    macs = sum(c.macs for c in cost(program))
    from accelgen.array.resources import array_block_rams, array_resources

    out_t = qg.tensors[qg.outputs[0].tensor]
    kept = layer_counters_kept(dev.family) if layer_counters is None else layer_counters
    needs = program.needs()
    logic = array_resources(dev.family, cfg.pes, needs, kept, out_t.size * out_t.bits)
    if logic.lut > dev.luts:
        raise DoesNotFitArray(
            f"{qg.name}'s array needs about {logic.lut:,.0f} of the {dev.luts:,} LUTs of "
            f"{dev.name} (the array's logic model: its {cfg.pes} PEs for "
            f"{'/'.join(str(Mode(m).bits) for m in sorted(program.modes))}-bit lanes and the "
            "controller): try fewer bits, one width for every layer, or a bigger device")
    resources = {"lut": {"used": round(logic.lut), "available": dev.luts},
                 "ff": {"used": round(logic.ff), "available": dev.ffs}}
    brams = array_block_rams(dev, cfg, needs, kept)
    if brams is not None:
        resources["bram"] = {"used": brams, "available": dev.bram_blocks}
    if target.family == "ice40":  # one SB_MAC16 a PE; the main memory in SPRAM
        resources["dsp"] = {"used": cfg.pes, "available": dev.dsp_blocks}
        if dev.spram_blocks:
            resources["spram"] = {"used": -(-cfg.mem_words // SPRAM_WORDS),
                                  "available": dev.spram_blocks}
    return ArrayEstimate(dev.name, clock_mhz or target.clock_mhz, cfg.pes, cycles, reads,
                         writes, program.words, cfg.mem_words,
                         2 * program.regions["weights and parameters"],
                         macs / capacity if capacity else 0.0, rows, macs_per_image=macs,
                         resources=resources, program=program, layer_counters=kept)


__all__ = ["ArrayEstimate", "ArrayTarget", "DoesNotFitArray", "NotOnArray", "array_target",
           "estimate_array"]
