"""The resource model: what a stage of a given parallelism costs on a device.

Block memories are counted exactly the way the design asks for them: every memory of the
pipeline carries a placement (`logic`, `bram`, `spram`) that the plan decides and the generated
design honours, and the block count of a (depth x width) memory is the cheapest tiling of the
device's block-RAM aspect ratios.

Logic is modelled per hardware block from the widths the block is built with (the same
parameters the cores elaborate from): flip-flops are counted register by register (`*_ff`),
LUTs as a weighted sum of *features* — counter bits, adder bits, multiplexer bits, ROM bits,
LUT-multiplier bit products (`*_features`) — with per-family weights (`LogicModel`), in the
units of the family's LUT budget: iCE40 ``SB_LUT4`` (its carries ride in the LUT's cell), ECP5
LUT positions (``LUT4`` + 2 per ``CCU2C``: a carry cell takes its slice's two LUTs; ``PFUMX`` /
``L6MUX21`` are the slice's own muxes), Gowin LUT positions (``LUT1``..``LUT4`` + ``ALU``; the
``MUX2_LUT5``.. muxes are the slice's own) — what `accelgen.build.synthesized_logic` counts.
Each family's weights are fitted to its own Yosys flow (``synth_ice40`` / ``synth_ecp5`` /
``synth_gowin``, Yosys 0.70) on the stages of several plans, and `tests/test_resource_model.py`
checks a whole accelerator of each family against synthesis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from accelgen.devices import Device

BRAM_SHAPES = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
    "gowin": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
}
SPRAM_SHAPE = (16384, 16)
LOGIC_MEMORY_BITS = 256  # memories this small stay in flip-flops
ROMS = ("weights", "params")  # memories the design only reads (LUTs when in logic)


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


def bram_tiling(family: str, depth: int, width: int) -> tuple[int, int]:
    """The block-RAM aspect ratio (block depth, block width) of `family` that holds a
    `depth` x `width` memory in the fewest blocks; of equally cheap ones, the one with the
    fewest blocks in depth (the smallest read multiplexer). The generated design tiles its
    block memories with it (`accelgen.memory.rom`)."""
    def cost(shape: tuple[int, int]) -> tuple[int, int]:
        d, w = shape
        return math.ceil(width / w) * math.ceil(depth / d), math.ceil(depth / d)

    return min(BRAM_SHAPES[family], key=cost)


def bram_blocks(device: Device, depth: int, width: int) -> int:
    d, w = bram_tiling(device.family, depth, width)
    return math.ceil(width / w) * math.ceil(depth / d)


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
    """LUT weights of one FPGA family: LUTs per unit of each feature (`*_features`), and what
    the family's flip-flop count adds to the registers the cores declare."""

    weights: Mapping[str, float] = field(default_factory=dict)
    ff_cell_share: float = 0.0
    """Logic positions per flip-flop beyond the LUT count: the flip-flops that cannot share a
    cell with the LUT driving them. iCE40 (its budget counts logic cells): 0.413. Gowin: a
    DFF takes its D input only from the LUT or ALU beside it, so nextpnr-himbaechel packs a
    pass-through LUT4 for every other one: placed LUT4 + ALU minus synthesized LUT1-4 + ALU was
    0.45 per DFF on the default model's build and 0.57-0.63 on 7 small-model builds."""
    product_ff: float = 0.0
    """Flip-flops per product bit of each of a MAC stage's products, for a family whose DSP
    blocks leave the product register in the fabric (ECP5, Gowin: Yosys maps ``a * b`` to a
    combinational ``MULT18X18D`` / ``MULT9X9`` and the stage's registered product stays in
    flip-flops; the iCE40 ``SB_MAC16`` holds it). Counted for every product, since the plan
    places multipliers after costing the stage: a LUT multiplier's product register is then
    counted twice (the scheduler adds it too), about 15 flip-flops too many per LUT
    multiplier."""
    small_rings: bool = False
    """Whether `window_logic` counts a line buffer small enough to stay in flip-flops
    (`LOGIC_MEMORY_BITS`) when it is given none: the scheduler costs the window without its
    ring and adds only rings it later moves out of block RAM, so a ring that is in logic from
    the start is otherwise never counted. The iCE40 weights were fitted without it (False)."""

    def luts(self, features: Mapping[str, float]) -> float:
        return sum(self.weights.get(k, 0.0) * v for k, v in features.items())


# iCE40 weights: fitted to synth_ice40 (Yosys 0.70) on the stages of the default model's and the
# residual test network's plans
_ICE40 = {
    # line buffer + window reader
    "window.base": 11.0,
    "window.counter_bit": 2.0,  # counters and accounting registers: increment, wrap, compare
    "window.addr_bit": 0.0,  # the ring address adder (folds into the counters' LUTs)
    "window.column_bit": 3.0,  # a stepped column register: its adder and step multiplexer
    "window.pad_bit": 0.9,  # padding checks on the tap's row / column
    "window.mask_bit": 1.05,  # padded taps read as zeros
    "window.bram_mux_bit": 0.45,  # block RAMs cascaded in depth: the read multiplexer
    "ram_bit": 0.75,  # a RAM kept in flip-flops: its read multiplexer
    # MAC stage
    "mac.base": 28.0,
    "mac.counter_bit": 1.4,
    "mac.acc_bit": 1.6,  # accumulators (and their output queue)
    "mac.adder_bit": 1.0,  # adder trees over input lanes, the bias adders
    "mac.mux_bit": 0.3,  # the drain of a fold wider than the output lanes
    "mac.shift_bit": 0.95,  # the shift selection: per output bit and extra shift candidate
    "mac.lane": 4.0,  # per output lane: overflow flags, clamp
    "mac.queue_bit": 0.3,
    "rom_bit": 0.14,  # a ROM in LUTs (weights, requantizer tables)
    "lut_mult_bit2": 2.33,  # a LUT multiplier of a x b bits
    "lut_mult": 0.0,
    # small stages and glue
    "stage.base": 5.0,
    "pool.lane_bit": 3.0,
    "avgpool.lane_bit": 12.0,
    "globalpool.base": 30.0,
    "globalpool.lane_bit": 2.0,
    "add.lane_bit": 2.5,
    "clamp.lane_bit": 2.0,
    "converter.base": 3.0,
    "converter_bit": 0.2,
    "fifo.base": 20.0,
    "argmax.base": 16.0,
    "argmax.bit": 2.0,
    "counters.base": 95.0,  # the accelerator's latency and image counters
    "loader.base": 15.0,
    "loader.target": 6.0,
    # the host link, UART and board top (`host_resources`): measured on the default model's
    # iCEBreaker build (Yosys 0.70), 950 SB_LUT4 with 16-bit link counters and 80 logit bits
    "link.base": 762.0,
    "link.logit_bit": 0.75,  # the result buffer's read multiplexer
    "link.counter_bit": 2.0,  # a link counter's incrementer and its response multiplexer
}


# the iCE40 features in groups, each scaled by one factor per family (`_family`)
_GROUPS = {
    "window": ("window.base", "window.counter_bit", "window.addr_bit", "window.column_bit",
               "window.pad_bit", "window.mask_bit", "window.bram_mux_bit"),
    "mac_control": ("mac.base", "mac.counter_bit", "mac.lane", "mac.queue_bit"),
    "accumulator": ("mac.acc_bit",),
    "adder": ("mac.adder_bit",),
    "mux": ("ram_bit", "mac.mux_bit", "mac.shift_bit"),
    "rom": ("rom_bit",),
    "small_stages": ("stage.base", "pool.lane_bit", "avgpool.lane_bit", "globalpool.base",
                     "globalpool.lane_bit", "add.lane_bit", "clamp.lane_bit"),
    "glue": ("converter.base", "converter_bit", "fifo.base", "argmax.base", "argmax.bit",
             "counters.base", "loader.base", "loader.target"),
}


def _family(scales: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
    """The iCE40 weights with each group of `_GROUPS` scaled by ``scales[group]`` (1 when not
    given), then `weights` set as given (features only this family prices, refitted ones)."""
    unknown = set(scales) - set(_GROUPS)
    if unknown:
        raise KeyError(f"no feature group {sorted(unknown)}")
    w = dict(_ICE40)
    for group, keys in _GROUPS.items():
        for k in keys:
            w[k] = _ICE40[k] * scales.get(group, 1.0)
    return {**w, **weights}


# ECP5 and Gowin: fitted to synth_ecp5 / synth_gowin (Yosys 0.70) on 73 stages, each synthesized
# alone, of 13 plans: the default model's (at the fastest rate, at 2,000 / 1,000 FPS, on the
# LFE5U-12F, and without DSP blocks), the residual and the small test networks' (with and
# without DSP blocks); least squares on the relative error, group factors of the iCE40 weights
# (rms 11 % per stage). Then every weight x 0.95: Yosys maps a whole flattened accelerator into
# 3-14 % fewer LUTs than its stages alone (6 accelerators). What the iCE40 model misses:
# * a sum of three or more operands (a dense stage's adder tree) is a carry-save tree in LUTs,
#   ``mac.tree_bit`` per product bit beyond the second operand (the iCE40 flow gets it cheaper:
#   its carries are free);
# * a carry chain takes LUT positions (CCU2C, ALU): counters, accumulators and comparators
#   cost more (the window, mac_control and accumulator factors);
# * a LUT multiplier costs more: 8x8 about 190 LUT positions (iCE40 150).
# The host link (`host_resources`): its netlist varies with what it is synthesized with (Gowin:
# board minus accelerator 540-1,930 LUT positions over 6 designs, 1,730-1,910 with the
# accelerator a black box; ECP5: 1,010-1,500 and 1,370-1,560); ``link.base`` is set so the
# whole board builds come out within the tolerance of the model's check (table in the report).
_ECP5 = _family(
    {"window": 1.17, "mac_control": 0.76, "accumulator": 1.54, "adder": 0.95, "mux": 1.11,
     "rom": 0.72, "small_stages": 1.04, "glue": 0.95},
    {"mac.tree_bit": 1.9, "lut_mult_bit2": 2.88,
     # 40 logit bits and 32-bit counters: 1,300 LUT positions
     "link.base": 954.0, "link.logit_bit": 2.25},
)
_GOWIN = _family(
    {"window": 1.36, "mac_control": 0.76, "accumulator": 1.4, "adder": 0.95, "mux": 1.01,
     "rom": 0.73, "small_stages": 1.04, "glue": 0.95},
    {"mac.tree_bit": 2.39, "lut_mult_bit2": 2.94,
     # 80 logit bits and 32-bit counters: 1,450 LUT positions
     "link.base": 1134.0},
)

MODELS = {
    # 0.413: the default model's iCEBreaker build, 4,110 SB_LUT4 + 2,383 FF -> 5,094 cells
    "ice40": LogicModel(_ICE40, ff_cell_share=0.413),
    # product_ff: 14 of a 17-bit product's register bits survive synthesis (the stages above:
    # 13.5-15.8 flip-flops per DSP product)
    "ecp5": LogicModel(_ECP5, product_ff=0.85, small_rings=True),
    # ff_cell_share 0.5: the default model's Tang Nano 9K build, 5,797 LUT positions planned,
    # 3,321 FFs -> 7,458 against nextpnr's 7,596 LUT4 + ALU
    "gowin": LogicModel(_GOWIN, ff_cell_share=0.5, product_ff=0.85, small_rings=True),
}


def bits_for(n: int) -> int:
    """Width of a counter over `n` values (0 for a single value)."""
    return (n - 1).bit_length() if n > 1 else 0


def signed_range_bits(lo: int, hi: int) -> int:
    return max(int(hi).bit_length(), (-int(lo) - 1).bit_length() if lo < 0 else 0) + 1


def lut_multiplier(model: LogicModel, a_bits: int, b_bits: int) -> float:
    return model.luts({"lut_mult_bit2": a_bits * b_bits, "lut_mult": 1})


def logic_memory(model: LogicModel, mem: Memory) -> tuple[float, float]:
    """(LUT, FF) of a memory kept in logic: a RAM in flip-flops with its read multiplexer, or a
    ROM as LUTs behind its registered read."""
    if mem.placement != "logic":
        return 0.0, 0.0
    if mem.purpose in ROMS:
        return model.luts({"rom_bit": mem.bits}), float(mem.width)
    return model.luts({"ram_bit": mem.bits}), float(mem.bits)


# ------------------------------------------------------------------------------------------
# the line buffer (`accelgen.memory.linebuffer.SlidingWindow`)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowShape:
    """What the window reader's logic depends on (from a `WindowGeometry` and its repeats)."""

    height: int
    width: int
    beats_per_pixel: int
    lanes: int
    bits: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]  # top, left
    out_hw: tuple[int, int]
    ring_rows: int
    repeats: int
    partial: bool = False  # the oldest row freed column by column

    @staticmethod
    def of(g, repeats: int) -> WindowShape:
        return WindowShape(g.fmt.height, g.fmt.width, g.fmt.beats_per_pixel, g.fmt.lanes,
                           g.fmt.bits, g.kernel, g.stride, (g.padding[0], g.padding[1]),
                           g.out_hw, g.ring_rows, repeats, g.partial)

    @property
    def row_words(self) -> int:
        return self.width * self.beats_per_pixel

    @property
    def words(self) -> int:
        return self.ring_rows * self.row_words

    def counters(self) -> list[int]:
        """Widths of the reader's and writer's counters and accounting registers."""
        (kh, kw), (sh, sw), (pt, pl) = self.kernel, self.stride, self.padding
        oh, ow = self.out_hw
        h, r = self.height, self.ring_rows
        span = h + r + 2
        y_bits = signed_range_bits(-pt, (oh - 1) * sh - pt) if oh > 1 else 0
        x_bits = signed_range_bits(-pl, (ow - 1) * sw - pl) if ow > 1 else 0
        widths = [y_bits, x_bits, bits_for(kh), bits_for(kw), bits_for(self.beats_per_pixel),
                  bits_for(self.repeats), bits_for(r), bits_for(self.words),
                  bits_for(self.row_words), signed_range_bits(-span - r, span),
                  signed_range_bits(-span - 1, 2 * span)]
        if self.partial:  # the oldest row's freed words (compared with the writer's column)
            widths.append(signed_range_bits(-pl * self.beats_per_pixel - 1,
                                            (ow * sw + 1) * self.beats_per_pixel))
        return widths


    def padded(self) -> tuple[bool, bool, bool, bool]:
        """Whether any tap falls above, below, left of, right of the image."""
        (kh, kw), (sh, sw), (pt, pl) = self.kernel, self.stride, self.padding
        oh, ow = self.out_hw
        return (pt > 0, (oh - 1) * sh - pt + kh > self.height, pl > 0,
                (ow - 1) * sw - pl + kw > self.width)


    @property
    def stepped_column(self) -> bool:
        """The tap's column is a register stepping by constants (not ``x * CL + cf``)."""
        return self.width > 1 and self.beats_per_pixel > 1


def window_features(w: WindowShape, ring: Memory | None) -> dict[str, float]:
    addr = bits_for(w.words)
    counters = w.counters()
    top, bottom, left, right = w.padded()
    f = {
        "window.base": 1,
        "window.counter_bit": sum(counters),
        "window.addr_bit": addr,
        "window.column_bit": addr if w.stepped_column else 0,
        "window.pad_bit": (top + bottom) * counters[0] + (left + right) * counters[1],
        "window.mask_bit": w.lanes * w.bits if any(w.padded()) else 0,
    }
    if ring is not None and ring.placement == "logic":
        f["ram_bit"] = ring.bits
    elif ring is not None and ring.placement == "bram":
        width = w.lanes * w.bits  # blocks cascaded in depth: a read multiplexer
        f["window.bram_mux_bit"] = width * (math.ceil(w.words / (4096 // min(16, width))) - 1)
    return f


def window_ff(w: WindowShape, ring: Memory | None) -> float:
    sh = w.stride[0]
    release = bits_for(max(sh, w.height) + 1)
    ff = (sum(w.counters()) + 9 + 2 * w.partial
          + bits_for(w.words) * (2 if w.stepped_column else 1) + release)
    if ring is not None and ring.placement == "logic":
        ff += ring.bits + w.lanes * w.bits
    return float(ff)


def window_logic(model: LogicModel, w: WindowShape, ring: Memory | None
                 ) -> tuple[float, float]:
    """(LUT, FF) of the line buffer's control and, when `ring` is in logic, its ring; with no
    `ring`, a model that counts `LogicModel.small_rings` adds a ring that `place` keeps in
    flip-flops (nothing else places it)."""
    if ring is None and model.small_rings and w.words * w.lanes * w.bits <= LOGIC_MEMORY_BITS:
        ring = Memory("line buffer", w.words, w.lanes * w.bits, "logic", 0)
    return model.luts(window_features(w, ring)), window_ff(w, ring)


# ------------------------------------------------------------------------------------------
# the MAC + requantize stage (`accelgen.cores.conv.ConvStage`)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacShape:
    """What a MAC stage's logic depends on."""

    mode: str  # "dense" or "depthwise"
    pe: int
    simd: int  # input lanes per beat
    ol: int
    in_bits: int
    w_bits: int
    sum_bits: int  # accumulator width
    biased_bits: int  # accumulator plus bias
    bias_bits: int
    shifts: int  # distinct requantizer shifts
    t_bits: int  # the output range as a signed width
    groups: int  # output beats per pixel x folds: requantizer table depth
    weight_words: int
    products: int

    @property
    def steps(self) -> int:
        return self.pe // self.ol

    @property
    def sel_bits(self) -> int:
        return bits_for(self.shifts) if self.shifts > 1 else 0

    @property
    def prod_bits(self) -> int:
        return self.in_bits + self.w_bits + 1


def mac_features(s: MacShape, weights: Memory | None, params: Memory | None,
                 loadable: bool) -> dict[str, float]:
    adds = s.pe * (s.simd - 1) * s.prod_bits if s.mode == "dense" else 0
    drain = (s.pe - s.ol) * s.sum_bits + (s.ol * s.sum_bits if s.steps > 1 else 0)
    rom = s.groups * s.ol * s.sel_bits
    if params is None or params.placement == "logic":
        rom += s.groups * s.ol * s.bias_bits
    if weights is not None and weights.placement == "logic":
        rom += weights.bits
    # a dense accumulation adds `simd` products and the sum: operands beyond the second make a
    # carry-save tree (priced on the families whose flows build it in LUTs)
    tree = s.pe * max(0, s.simd - 2) * s.prod_bits if s.mode == "dense" else 0
    counters = (bits_for(s.weight_words) + bits_for(s.groups) + bits_for(s.steps)
                + (bits_for(s.weight_words) if loadable else 0))
    return {
        "mac.base": 1,
        "mac.counter_bit": counters,
        "mac.acc_bit": s.pe * s.sum_bits,
        "mac.adder_bit": adds + s.ol * s.biased_bits,
        "mac.tree_bit": tree,
        "mac.mux_bit": drain,
        "mac.shift_bit": s.ol * s.t_bits * (s.shifts - 1),
        "mac.lane": s.ol,
        "mac.queue_bit": s.ol * (s.t_bits + 2),
        "rom_bit": rom,
    }


def mac_ff(s: MacShape, weights: Memory | None, params: Memory | None, lut_products: int
           ) -> float:
    entry = s.ol * (s.t_bits + 2) + 1
    ff = (s.simd * s.in_bits + 10 + lut_products * s.prod_bits + s.pe * s.sum_bits
          + (s.pe - s.ol) * s.sum_bits + s.ol * (s.biased_bits + s.sel_bits) + 2 * entry
          + bits_for(s.weight_words) + bits_for(s.groups) + bits_for(s.steps) + 6)
    if params is None or params.placement == "logic":
        ff += s.ol * s.bias_bits  # the LUT table's read register
    ff += s.ol * s.sel_bits
    if weights is not None and weights.placement == "logic":
        ff += weights.width
    return float(ff)


def mac_logic(model: LogicModel, s: MacShape, weights: Memory | None, params: Memory | None,
              loadable: bool = False) -> tuple[float, float]:
    """(LUT, FF) of a MAC stage without its LUT multipliers (`lut_multiplier`, placed later);
    its flip-flops include the product registers the family keeps in the fabric
    (`LogicModel.product_ff`)."""
    ff = mac_ff(s, weights, params, 0) + model.product_ff * s.products * s.prod_bits
    return model.luts(mac_features(s, weights, params, loadable)), ff


def link_counter_bits(family: str) -> int:
    """Width of the host link's own counters: 16 on the iCE40, where every logic cell counts
    (still sent as u32), 32 elsewhere."""
    return 16 if family == "ice40" else 32


def host_resources(model: LogicModel, family: str, logit_bits: int) -> tuple[float, float]:
    """(LUTs, FFs) of the host link, UART and board top around an accelerator whose logits
    take `logit_bits` bits: four link counters, the result buffer (registers), the protocol
    engine and UART (a fixed part)."""
    cb = link_counter_bits(family)
    lut = model.luts({"link.base": 1, "link.logit_bit": logit_bits, "link.counter_bit": 4 * cb})
    ff = 358.0 + logit_bits + 4 * cb
    return lut, ff
