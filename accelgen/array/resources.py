"""The PE array's logic model: LUTs and flip-flops of an `ArrayAccelerator` built for a
program (`Program.needs`), before any synthesis, so that `estimate`, `build --arch auto` and
the build's fit check know whether the array fits the device's fabric, not only its memory.

The model has two parts, both fitted to Yosys' synthesis of the accelerator alone (no host
link; ``synth_ice40 -spram`` / ``synth_ecp5``, 2026-11-22):

* **PEs**: `PE_LOGIC`, each `MultiModePE` as synthesized for its set of lane modes at 24- and
  40-bit accumulators, interpolated linearly in the accumulator width (on iCE40 the
  ``SB_MAC16`` does the products: the LUTs are the lane corrections and the accumulator; on
  ECP5 Yosys maps the products to ``MULT18X18D`` and the lanes' packing stays in LUTs);
* **accumulators beyond one a PE** (`ArrayConfig.folds`): `FOLD_LOGIC` per accumulator bit;
* **the rest** (controller, requantizer, pools, add, counters, ArgMax, the input packer and
  output reader): `REST_LOGIC`, a least-squares fit over 8 programs on iCE40's 8-PE array
  (the default DS-CNN at 4, 8 and 16 bits, MLPerf Tiny ResNet-8 at 4 and 8 bits and mixed,
  KWS) and 7 on ECP5's 16-PE array (DS-CNN, ResNet-8 at 4, 8, 16 bits and mixed, VWW, a
  residual block with a max pool), in four features: a constant, the requantizer's shifter
  (accumulator bits x bits of the largest shift), whether the program adds (`Op.ADD`: the
  aligners and the add states) and whether the per-layer counters are kept
  (``layer_counters``: the counter memory's write path and the read and write counters).
  Every fitted program lies within 3 % of Yosys' LUTs and flip-flops; a residual block with a
  max pool, not in iCE40's fit, within 3 % (LUTs) and 8 % (flip-flops). iCE40's constant and
  add terms were moved on 2026-12-07 by the residuals of the core after its timing registers
  (memory latency 3, the pixel issue register, registered loop bounds: the default model,
  ResNet-8 and KWS at 8 bits, each then within 0.1 % of Yosys' LUTs and flip-flops); the
  other programs were not synthesized again.

`array_logic` returns LUTs in the family's LUT-budget units (`accelgen.build.synthesized_logic`:
ECP5 counts a carry cell as two LUTs) and flip-flops; `array_resources` adds the host link
(`accelgen.scheduler.resources.host_resources`, as the pipeline's plans do) and, on iCE40, the
logic cells flip-flops take beyond the LUTs (the pipeline's ``ff_cell_share``), which is what
nextpnr's logic-cell count is compared with. Gowin has no fit of its own: it uses ECP5's
(both map the products to hard multipliers and keep the rest in LUT4s).
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.array.isa import Op

# family -> sorted mode values -> ((LUTs, FFs) at a 24-bit accumulator, at a 40-bit one)
PE_LOGIC: dict[str, dict[tuple[int, ...], tuple[tuple[int, int], tuple[int, int]]]] = {
    "ice40": {(0,): ((228, 46), (303, 64)), (1,): ((71, 26), (119, 42)),
              (2,): ((87, 26), (135, 42)), (0, 1): ((228, 46), (303, 64)),
              (0, 2): ((268, 46), (343, 64)), (1, 2): ((114, 26), (162, 42)),
              (0, 1, 2): ((268, 46), (343, 64))},
    # LUT4 + 2 x CCU2C, TRELLIS_FF
    "ecp5": {(0,): ((48, 50), (80, 74)), (1,): ((71, 58), (119, 74)),
             (2,): ((149, 58), (197, 74)), (0, 1): ((90, 84), (130, 108)),
             (0, 2): ((138, 84), (178, 108)), (1, 2): ((149, 92), (181, 108)),
             (0, 1, 2): ((180, 116), (227, 140))},
}
# family -> (LUT, FF) coefficients of (1, shifter, adds, layer counters)
REST_LOGIC: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "ice40": ((2071.7, 2.955, 362.9, 247.0), (1339.0, 1.925, 150.5, 236.0)),
    # (the ECP5 programs kept their counters; their share is the default model's difference)
    "ecp5": ((2699.0, 5.883, 190.0, 319.0), (1110.1, 3.878, 85.4, 274.0)),
}


# (LUTs, FFs) per accumulator bit beyond one accumulator a PE (`ArrayConfig.folds`): the
# PE's ring slot and its selection, the shadow register and its load-or-shift multiplexer.
# ECP5, ResNet-8 at 8 bits (24-bit accumulators) on 16 PEs: folds 2 adds 939 LUTs and 815
# flip-flops to 4,999 and 2,833, folds 4 adds 2,473 and 2,379
FOLD_LOGIC = (2.4, 2.1)


@dataclass(frozen=True)
class ArrayLogic:
    """LUTs (the family's LUT-budget units) and flip-flops."""

    lut: float
    ff: float


def _fit(family: str) -> str:
    return family if family in REST_LOGIC else "ecp5"


def pe_logic(family: str, modes, acc_bits: int) -> ArrayLogic:
    """One PE's LUTs and flip-flops (`PE_LOGIC`, interpolated in `acc_bits`)."""
    key = tuple(sorted(int(m) for m in modes))
    (l24, f24), (l40, f40) = PE_LOGIC[_fit(family)][key]
    t = (acc_bits - 24) / 16
    return ArrayLogic(l24 + t * (l40 - l24), f24 + t * (f40 - f24))


def array_logic(family: str, pes: int, needs: dict, layer_counters: bool) -> ArrayLogic:
    """An `ArrayAccelerator`'s logic without the host link, for a core built with `needs`
    (`Program.needs`: its ``folds`` accumulators a PE among them) on `family` (module
    docstring)."""
    pe = pe_logic(family, needs["modes"], needs["acc_bits"])
    lo, hi = needs["shifts"]
    shifter = needs["acc_bits"] * max(-lo, hi).bit_length()
    features = (1.0, shifter, float(Op.ADD in needs["ops"]), float(layer_counters))
    lut_c, ff_c = REST_LOGIC[_fit(family)]
    rest_lut = sum(c * f for c, f in zip(lut_c, features, strict=True))
    rest_ff = sum(c * f for c, f in zip(ff_c, features, strict=True))
    # accumulator bits beyond one a PE
    extra = (needs.get("folds", 1) - 1) * pes * needs["acc_bits"]
    return ArrayLogic(pes * pe.lut + rest_lut + FOLD_LOGIC[0] * extra,
                      pes * pe.ff + rest_ff + FOLD_LOGIC[1] * extra)


def array_resources(family: str, pes: int, needs: dict, layer_counters: bool,
                    logit_bits: int) -> ArrayLogic:
    """The whole design's logic as the device's budget counts it: the array
    (`array_logic`), the host link, UART and board top, and on iCE40 the logic cells its
    flip-flops take beyond the LUTs."""
    from accelgen.scheduler.resources import MODELS, host_resources

    model = MODELS[family]
    core = array_logic(family, pes, needs, layer_counters)
    link_lut, link_ff = host_resources(model, family, logit_bits)
    ff = core.ff + link_ff
    return ArrayLogic(core.lut + link_lut + model.ff_cell_share * ff, ff)


def array_block_rams(dev, config, needs: dict, layer_counters: bool,
                     max_layers: int = 64) -> int | None:
    """Block RAMs of an `ArrayAccelerator` as Yosys maps its memories (None where no build
    has checked the rule: Gowin): the PE weight buffers; on iCE40 a block for each 16-bit
    word of the parameter buffer the core reads (the bias words its accumulator needs and the
    shift; the main memory is SPRAM); on ECP5 the main memory (the parameter buffer is
    distributed RAM); and the per-layer counter memory where it is kept."""
    from accelgen.cores.pe_array import COUNTER_WORDS
    from accelgen.scheduler.resources import bram_blocks

    if dev.family not in ("ice40", "ecp5"):
        return None
    n = config.pes * bram_blocks(dev, config.wbuf_words, 16)
    if dev.family == "ice40":
        n += -(-min(needs["acc_bits"], 48) // 16) + 1
    else:
        n += bram_blocks(dev, config.mem_words, 16)
    if layer_counters:
        n += bram_blocks(dev, max_layers, 16 * COUNTER_WORDS)
    return n


__all__ = ["FOLD_LOGIC", "PE_LOGIC", "REST_LOGIC", "ArrayLogic", "array_block_rams", "array_logic",
           "array_resources", "pe_logic"]
