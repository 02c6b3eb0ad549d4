"""The scheduler: QuantizedGraph + device + target -> HardwarePlan (or DoesNotFit).

1. **Options.** Every layer gets its candidate parallelisms — output channels ``pe`` x input
   channels ``simd`` for full/pointwise convolutions and dense layers, ``pe`` channels for
   depthwise convolutions, lanes for pools and adds — each with its cycles per image (the same
   analytic model the stages expose: the line buffer's row protocol, MAC folds, requantizer
   drain) and its resources (`accelgen.scheduler.resources`).
2. **Balancing.** FINN-style folding: for a target initiation interval (cycles per image of the
   slowest stage) each layer takes its cheapest option that meets it; the scheduler searches the
   smallest interval whose total fits the device (``--fps``: the interval of that rate).
3. **Placement.** Multipliers go to DSP blocks while there are blocks (the widest first, where a
   LUT multiplier would cost most) and to LUTs after; memories go to flip-flops when tiny, block
   RAM otherwise, and on the UP5K the largest weight memories move to SPRAM when block RAM runs
   out and their bandwidth allows.
4. **FIFOs.** A tensor read by two branches that meet again (a residual block) gets a FIFO on
   the branch that needs fewer of its rows before producing output, deep enough for the other
   branch's head start plus two rows: analytic, so no simulation is needed and no deadlock is
   possible.

5. **Coupling.** Stages that each meet the interval alone can still hold each other up: a
   stage whose line buffer holds only its window's rows (compact, picked for a stage with
   time to spare) stops its producer while it reads, and every stage of a balanced pipeline
   passes such waits on. The coupled pipeline's interval comes from an event model of every
   stage's rows (`accelgen.scheduler.flow`); while it exceeds the slowest stage's, the
   line buffer its producers wait on most gets rows more (`StagePlan.slack_rows`), or, where
   that does not fit, frees its oldest row column by column (`StagePlan.partial_release`: a
   counter and a comparison), and a global pool a FIFO for what arrives while it divides, as
   long as the plan still fits. The plan's interval, FPS and MAC utilisation are the coupled
   pipeline's.

A model that cannot fit even at the least parallelism raises `DoesNotFit` with the per-layer
needs and what would make it fit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from accelgen.cores.conv import FOLD_DRAIN
from accelgen.cores.pool import global_pool_cycles, global_pool_value_bits
from accelgen.cores.requant import rounded_bias, signed_bits
from accelgen.cores.streams import Format
from accelgen.devices import Device
from accelgen.errors import AccelgenError, UnsupportedError, UsageError
from accelgen.memory.linebuffer import ROW_OVERHEAD, WindowGeometry
from accelgen.quantized import (
    QAdd,
    QAvgPool,
    QClamp,
    QConv,
    QDense,
    QGlobalAvgPool,
    QGlobalMaxPool,
    QLayer,
    QMaxPool,
    QTensor,
    QuantizedGraph,
)
from accelgen.scheduler import resources as rmodel
from accelgen.scheduler.flow import pipeline_flow
from accelgen.scheduler.plan import LOGIC_FILL, HardwarePlan, Resources, StagePlan


class DoesNotFit(AccelgenError):
    """The model cannot fit the device; `table` has the per-layer needs."""

    def __init__(self, message: str, table: list[dict], budget: Resources,
                 suggestions: list[str]) -> None:
        super().__init__(message)
        self.table = table
        self.budget = budget
        self.suggestions = suggestions


SLACK_GOAL = 1.01  # stop adding line-buffer rows once the pipeline is this close to its stages
MAX_SLACK_ROWS = 4  # rows added to one line buffer at most (1, 2, 4) ...
MAX_SLACK_PIXELS = 64  # ... or pixels, to a pointwise stage's (1, 2, 4, ... 64)
MAX_RETRIES = 3  # slower stage designs tried when the fastest cannot be made to flow ...
RETRY_ABOVE = 1.05  # ... this much slower than its slowest stage
BRAM_COST = 200  # LUT-equivalent cost of a block RAM when comparing options
MAX_LOGIC_MOVE_BITS = 4096  # block memories up to this size may move to LUTs/FFs when BRAM is short


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Option:
    """One candidate implementation of a layer."""

    pe: int
    simd: int
    lanes_in: int
    lanes_out: int
    cycles: float
    macs: int
    multipliers: int
    mult_bits: tuple[int, int]  # operand widths of its multipliers
    weights: rmodel.Memory | None
    fixed: Resources  # everything but multipliers and the weight memory
    ring: rmodel.Memory | None = None
    aux: rmodel.Memory | None = None
    compact: bool = False
    mult_signed: bool = False  # its multipliers' activation operands are signed
    params: rmodel.Memory | None = None  # a MAC stage's requantizer biases (LUTs by default)
    slack: int = 0  # line-buffer rows beyond the window's and a stride's (`_slacked`)
    partial: bool = False  # the line buffer frees its oldest row column by column


def _fmt(t: QTensor, lanes: int) -> Format:
    h, w, c = t.shape
    return Format(h, w, c, t.bits, t.signed, lanes)


def _window_costs(dev: Device, g: WindowGeometry, repeats: int = 1
                  ) -> tuple[Resources, rmodel.Memory]:
    model = rmodel.MODELS[dev.family]
    ring = rmodel.place(dev, "line buffer", g.words, g.fmt.lanes * g.fmt.bits)
    # a ring in logic is counted where the placement is final (`_assemble`)
    lut, ff = rmodel.window_logic(model, rmodel.WindowShape.of(g, repeats), None)
    return Resources(lut, ff, ring.blocks if ring.placement == "bram" else 0), ring


def _conv_options(dev: Device, layer: QConv | QDense, x: QTensor, y: QTensor) -> list[Option]:
    from accelgen.cores.conv import sum_range
    from accelgen.cores.layers import conv_geometry, conv_mode, conv_weight

    model = rmodel.MODELS[dev.family]
    mode = conv_mode(layer, x)
    weight = conv_weight(layer, x)
    c_out, kh, kw, per_group = weight.shape
    c_in = x.shape[2]
    oh, ow = y.shape[:2]
    n_shifts = len(set(layer.shift))
    biases = [rounded_bias(b, sh) for b, sh in zip(layer.bias, layer.shift, strict=True)]
    bias_bits = signed_bits(min(biases), max(biases))
    t_bits = signed_bits(layer.lo, layer.hi)
    options = []
    if mode == "depthwise":
        mult = c_out // c_in
        choices = [(lanes * mult, lanes) for lanes in divisors(c_in)]
    else:
        choices = [(pe, simd) for pe in divisors(c_out) for simd in divisors(c_in)]
    sums = sum_range(weight, _fmt(x, 1))
    sum_bits = signed_bits(*sums)
    biased_bits = signed_bits(sums[0] + min(biases), sums[1] + max(biases))
    for (pe, simd), compact in itertools.product(choices, (False, True)):
        lanes = simd
        g = conv_geometry(layer, x, lanes, compact)
        if compact and g.ring_rows == conv_geometry(layer, x, lanes).ring_rows:
            continue
        if mode == "depthwise":
            beats_per_fold, folds, products = kh * kw, c_in // lanes, pe
        else:
            beats_per_fold, folds, products = kh * kw * c_in // simd, c_out // pe, pe * simd
        ol = next((o for o in divisors(pe) if pe // o + FOLD_DRAIN <= beats_per_fold), pe)
        per_pixel = folds * max(beats_per_fold, pe // ol + FOLD_DRAIN)
        repeats = folds if mode == "dense" else 1
        cycles = g.steady_cycles(g.row_read_cycles(per_pixel, repeats), g.row_words)
        macs = oh * ow * c_out * kh * kw * per_group
        words = folds * beats_per_fold
        # fixed logic: the window and the MAC stage (its memories are counted once placed)
        res, ring = _window_costs(dev, g, repeats)
        shape = rmodel.MacShape(mode, pe, simd, ol, x.bits, layer.w_bits, max(2, sum_bits),
                                biased_bits, bias_bits, n_shifts, t_bits, c_out // ol, words,
                                products)
        on_bram = rmodel.Memory("params", c_out // ol, ol * bias_bits, "bram", 0)
        lut, ff = rmodel.mac_logic(model, shape, None, on_bram)
        weights = rmodel.place(dev, "weights", words, products * layer.w_bits)
        params = rmodel.Memory("params", c_out // ol, ol * bias_bits, "logic", 0)
        options.append(Option(pe, simd, lanes, ol, cycles, macs, products,
                              (x.bits, layer.w_bits), weights, res + Resources(lut, ff), ring,
                              compact=compact, mult_signed=x.signed, params=params))
    return options


def _lane_options(dev: Device, layer: QLayer, qg: QuantizedGraph) -> list[Option]:
    model = rmodel.MODELS[dev.family]
    x = qg.tensors[layer.inputs[0]]
    y = qg.tensors[layer.output]
    c = x.shape[2]
    options = []
    windowed = isinstance(layer, (QMaxPool, QAvgPool))
    for lanes, compact in itertools.product(divisors(c), (False, True) if windowed else (False,)):
        fmt = _fmt(x, lanes)
        ring = aux = None
        if windowed:
            g = WindowGeometry(fmt, layer.kernel, layer.stride, layer.padding, layer.ceil_mode,
                               compact)
            res, ring = _window_costs(dev, g)
            cycles = g.steady_cycles(g.row_read_cycles(), g.row_words)
            kind = "pool.lane_bit" if isinstance(layer, QMaxPool) else "avgpool.lane_bit"
            res = res + Resources(model.luts({"stage.base": 1, kind: lanes * x.bits}),
                                  lanes * 2 * x.bits + 10)
        elif isinstance(layer, (QGlobalAvgPool, QGlobalMaxPool)):
            mode = "avg" if isinstance(layer, QGlobalAvgPool) else "max"
            cycles = global_pool_cycles(mode, fmt)
            vb = global_pool_value_bits(mode, fmt)
            rem = (2 * fmt.height * fmt.width - 1).bit_length() if mode == "avg" else 0
            lane_bits = vb + (x.bits + rem if mode == "avg" else 0)
            sums = aux = rmodel.place(dev, "sums", fmt.beats_per_pixel, lanes * vb)
            lut, ff = rmodel.logic_memory(model, sums)
            res = Resources(lut + model.luts({"globalpool.base": 1,
                                              "globalpool.lane_bit": lanes * lane_bits}),
                            ff + lanes * (x.bits + vb + x.bits + rem) + 20,
                            sums.blocks if sums.placement == "bram" else 0)
        elif isinstance(layer, QAdd):
            cycles = fmt.beats + 1
            res = Resources(model.luts({"stage.base": 1, "add.lane_bit": lanes * y.bits}),
                            lanes * y.bits + 2)
        elif isinstance(layer, QClamp):
            cycles = fmt.beats + 1
            res = Resources(model.luts({"stage.base": 1, "clamp.lane_bit": lanes * y.bits}),
                            lanes * y.bits + 2)
        else:
            raise UnsupportedError(
                f"{layer.op} {layer.name!r} has no stage in the streaming pipeline template "
                f"(supported: conv, depthwise, pointwise, dense, pools, residual add, clamp)"
            )
        options.append(Option(lanes, 1, lanes, lanes, cycles, 0, 0, (0, 0), None, res, ring, aux,
                              compact))
    return options


def layer_options(dev: Device, layer: QLayer, qg: QuantizedGraph) -> list[Option]:
    if isinstance(layer, (QConv, QDense)):
        return _conv_options(dev, layer, qg.tensors[layer.inputs[0]], qg.tensors[layer.output])
    return _lane_options(dev, layer, qg)


def _kind(layer: QLayer, qg: QuantizedGraph) -> str:
    from accelgen.cores.layers import conv_mode

    if isinstance(layer, QDense):
        return "dense"
    if isinstance(layer, QConv):
        return "depthwise" if conv_mode(layer, qg.tensors[layer.inputs[0]]) == "depthwise" \
            else "conv"
    return {QMaxPool: "maxpool", QAvgPool: "avgpool", QGlobalAvgPool: "globalavg",
            QGlobalMaxPool: "globalmax", QAdd: "add", QClamp: "clamp"}[type(layer)]


# ------------------------------------------------------------------------------------------------
# placement of multipliers and weight memories for one choice of options
# ------------------------------------------------------------------------------------------------


def _option_window(layer: QLayer, qg: QuantizedGraph, opt: Option
                   ) -> tuple[WindowGeometry, int] | None:
    """The line buffer an option reads through and how often it repeats each window; None
    for a stage without one."""
    from accelgen.cores.layers import conv_geometry, conv_mode

    x = qg.tensors[layer.inputs[0]]
    if isinstance(layer, (QConv, QDense)):
        g = conv_geometry(layer, x, opt.lanes_in, opt.compact, opt.slack, opt.partial)
        folds = qg.tensors[layer.output].shape[2] // opt.pe
        return g, folds if conv_mode(layer, x) == "dense" else 1
    if isinstance(layer, (QMaxPool, QAvgPool)):
        return WindowGeometry(_fmt(x, opt.lanes_in), layer.kernel, layer.stride, layer.padding,
                              layer.ceil_mode, opt.compact, opt.slack, opt.partial), 1
    return None


def _slacked(dev: Device, layer: QLayer, qg: QuantizedGraph, opt: Option, slack: int,
             partial: bool = False) -> Option:
    """The option with `slack` more rows in its line buffer (a bigger ring), its oldest row
    freed column by column where `partial`: costed."""
    found = _option_window(layer, qg, opt)
    if found is None or (slack, partial) == (opt.slack, opt.partial):
        return opt
    g, repeats = found
    old, _ = _window_costs(dev, g, repeats)
    new, ring = _window_costs(dev, replace(g, slack_rows=slack, partial=partial), repeats)
    delta = Resources(new.lut - old.lut, new.ff - old.ff, new.bram - old.bram)
    return replace(opt, fixed=opt.fixed + delta, ring=ring, slack=slack, partial=partial)


def _stall_fifos(qg: QuantizedGraph, stages: list[StagePlan],
                 depths: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """`depths` plus a FIFO before each global pool, which takes no input while it finishes an
    image (its final division): deep enough for what the producer sends meanwhile at the
    pipeline's rate, plus one output burst of the producer."""
    by_layer = {s.layer: s for s in stages}
    interval = max(s.cycles for s in stages)
    out = dict(depths)
    for layer in qg.layers:
        if not isinstance(layer, (QGlobalAvgPool, QGlobalMaxPool)):
            continue
        sp = by_layer[layer.name]
        x = qg.tensors[layer.inputs[0]]
        fmt = _fmt(x, sp.lanes_in)
        stall = sp.cycles - fmt.beats  # cycles beyond a beat per cycle
        prod = qg.producer(layer.inputs[0])
        if prod is None or stall <= 0:
            continue
        ps = by_layer[prod.name]
        rate = x.size / ps.lanes_out / interval  # producer beats per cycle
        if stall * rate < 1:
            continue
        depth = math.ceil(stall * rate) + max(1, ps.pe // ps.lanes_out) + 2
        key = (layer.inputs[0], layer.name)
        out[key] = max(out.get(key, 0), depth)
    return out


def _assemble(dev: Device, layers: list[QLayer], chosen: list[Option],
              qg: QuantizedGraph) -> list[StagePlan]:
    model = rmodel.MODELS[dev.family]
    # multipliers: DSP blocks to the layers whose LUT multipliers would cost most. On iCE40 a
    # block computes two 8x8 products for any two stages (its halves share the operands'
    # signedness): a stage's odd product takes half of a block shared with another stage
    dsp_left = dev.dsp_blocks
    dsp_blocks = [0] * len(chosen)
    shared = [-1] * len(chosen)
    open_half: dict[bool, int] = {}  # operand signedness -> a shared block with a free half
    n_shared = 0
    order = sorted(range(len(chosen)),
                   key=lambda i: -lut_multiplier_cost(model, chosen[i]) * chosen[i].multipliers)
    for i in order:
        opt = chosen[i]
        per_block = dev.dsp_products(*opt.mult_bits)
        if not opt.multipliers or not per_block:
            continue
        if per_block == 2 and dev.family == "ice40":
            take = min(opt.multipliers // 2, dsp_left)
            dsp_blocks[i] = take
            dsp_left -= take
            if opt.multipliers > 2 * take:
                if opt.mult_signed in open_half:
                    shared[i] = open_half.pop(opt.mult_signed)
                elif dsp_left:
                    dsp_left -= 1
                    shared[i] = open_half[opt.mult_signed] = n_shared
                    n_shared += 1
            continue
        need = math.ceil(opt.multipliers / per_block)
        take = min(need, dsp_left)
        dsp_blocks[i] = take
        dsp_left -= take
    # weight memories: block RAM, then SPRAM for the largest when block RAM runs out
    placements = [opt.weights for opt in chosen]
    bram_used = sum(o.fixed.bram for o in chosen) + sum(
        m.blocks for m in placements if m is not None and m.placement == "bram")
    if bram_used > dev.bram_blocks and dev.spram_blocks:
        spram_left = dev.spram_blocks
        candidates = sorted((i for i, mem in enumerate(placements)
                             if mem is not None and mem.placement == "bram"),
                            key=lambda i: -placements[i].blocks)
        for i in candidates:
            mem = placements[i]
            blocks = rmodel.spram_blocks(mem.depth, mem.width)
            if blocks <= spram_left and bram_used > dev.bram_blocks:
                placements[i] = replace(mem, placement="spram", blocks=blocks)
                spram_left -= blocks
                bram_used -= mem.blocks
    # still over: the smallest block memories (weights, then line buffers) move to logic
    rings = [opt.ring for opt in chosen]
    if bram_used > dev.bram_blocks:
        movable = [("weights", i, m) for i, m in enumerate(placements)
                   if m is not None and m.placement == "bram"]
        movable += [("ring", i, m) for i, m in enumerate(rings)
                    if m is not None and m.placement == "bram"]
        movable.sort(key=lambda t: (t[2].bits, t[0] != "weights"))
        for kind, i, mem in movable:
            if bram_used <= dev.bram_blocks:
                break
            if mem.bits > MAX_LOGIC_MOVE_BITS:
                continue
            moved = replace(mem, placement="logic", blocks=0)
            if kind == "weights":
                placements[i] = moved
            else:
                rings[i] = moved
            bram_used -= mem.blocks
    # block RAM left over: the requantizer bias tables that cost most LUTs move there
    params = [opt.params for opt in chosen]
    for i in sorted((i for i, mem in enumerate(params) if mem is not None),
                    key=lambda i: -params[i].bits):
        mem = params[i]
        blocks = rmodel.bram_blocks(dev, mem.depth, mem.width)
        if bram_used + blocks <= dev.bram_blocks:
            params[i] = replace(mem, placement="bram", blocks=blocks)
            bram_used += blocks
    stages = []
    for layer, opt, dsps, half, mem, ring, pmem in zip(layers, chosen, dsp_blocks, shared,
                                                       placements, rings, params, strict=True):
        per_block = dev.dsp_products(*opt.mult_bits) or 1
        lut_mults = max(0, opt.multipliers - dsps * per_block - (half >= 0))
        res = opt.fixed + Resources(lut=lut_mults * lut_multiplier_cost(model, opt),
                                    ff=lut_mults * (sum(opt.mult_bits) + 1), dsp=dsps)
        if mem is not None:
            lut, ff = rmodel.logic_memory(model, mem)
            if mem.placement == "spram":  # loaded at run time: the loader's address multiplexer
                lut += model.luts({"mac.counter_bit": rmodel.bits_for(mem.depth)})
            res = res + Resources(lut, ff, mem.blocks if mem.placement == "bram" else 0,
                                  mem.blocks if mem.placement == "spram" else 0)
        if ring is not None and opt.ring is not None and ring.placement != opt.ring.placement:
            lut, ff = rmodel.logic_memory(model, ring)
            res = res + Resources(lut, ff, -opt.ring.blocks)
        if pmem is not None:
            lut, ff = rmodel.logic_memory(model, pmem)
            res = res + Resources(lut, ff, pmem.blocks)
        stages.append(StagePlan(
            layer=layer.name, kind=_kind(layer, qg), pe=opt.pe, simd=opt.simd,
            lanes_in=opt.lanes_in, lanes_out=opt.lanes_out, cycles=opt.cycles, macs=opt.macs,
            multipliers=opt.multipliers, dsp_blocks=dsps,
            weight_memory="none" if mem is None else mem.placement, resources=res,
            ring_memory="none" if ring is None else ring.placement,
            compact_ring=opt.compact, slack_rows=opt.slack, partial_release=opt.partial,
            aux_memory="none" if opt.aux is None else opt.aux.placement,
            shared_dsp=half,
            param_memory="none" if pmem is None else pmem.placement,
        ))
    return stages


def lut_multiplier_cost(model: rmodel.LogicModel, opt: Option) -> float:
    return rmodel.lut_multiplier(model, *opt.mult_bits) if opt.multipliers else 0.0


def _glue(dev: Device, qg: QuantizedGraph, stages: list[StagePlan],
          fifo_depths: dict[tuple[str, str], int]) -> Resources:
    """Width converters, FIFOs, DSP blocks shared by two stages, the arg-max, the weight loader
    and the accelerator's counters."""
    from accelgen.accelerator import converter_lanes

    model = rmodel.MODELS[dev.family]
    lanes_out = {s.layer: s.lanes_out for s in stages}
    by_layer = {s.layer: s for s in stages}
    total = Resources(dsp=len({s.shared_dsp for s in stages if s.shared_dsp >= 0}))
    for layer in qg.layers:
        for t in layer.inputs:
            prod = qg.producer(t)
            src = lanes_out[prod.name] if prod else by_layer[layer.name].lanes_in
            dst = by_layer[layer.name].lanes_in
            for a, b in itertools.pairwise(converter_lanes(src, dst)):
                bits = qg.tensors[t].bits * max(a, b)
                held = bits if b > a else 0  # a widening converter gathers into a register
                total = total + Resources(model.luts({"converter.base": 1, "converter_bit": bits}),
                                          held + 3)
    from accelgen.accelerator import edge_fifo_depth, fifo_style

    out_t = qg.outputs[0].tensor
    edges = [(t, layer.name, by_layer[layer.name].lanes_in) for layer in qg.layers
             for t in layer.inputs]
    edges.append((out_t, "<argmax>", lanes_out[qg.producer(out_t).name]))
    for t, user, want in edges:
        prod = qg.producer(t)
        lanes = lanes_out[prod.name] if prod else stages[0].lanes_in
        depth = edge_fifo_depth(fifo_depths, by_layer[prod.name] if prod else None, t, user,
                                lanes, want)
        if depth == 0:
            continue
        width = lanes * qg.tensors[t].bits + 1
        spill = 0  # bits Yosys keeps in flip-flops beside the block RAM
        if fifo_style(depth, width) == "logic":
            mem = rmodel.Memory("fifo", depth, width, "logic", 0)
        else:
            # a word one bit wider than the block's port (a 16-bit pixel and its `last`) is
            # mapped as the block RAM and one bit of flip-flops (synth_ice40, Yosys 0.70)
            if (width - 1) % dev.bram_width == 0 and dev.family == "ice40":
                spill = 1
            mem = rmodel.Memory("fifo", depth, width, "bram",
                                rmodel.bram_blocks(dev, depth, width - spill))
        lut, ff = rmodel.logic_memory(model, mem)
        ff += spill * depth
        total = total + Resources(lut + model.luts({"fifo.base": 1}),
                                  ff + 3 * rmodel.bits_for(depth + 1) + width,
                                  mem.blocks if mem.placement == "bram" else 0)
    out = qg.tensors[qg.outputs[0].tensor]
    total = total + Resources(model.luts({"argmax.base": 1, "argmax.bit": out.bits}),
                              3 * out.bits + 12)
    loaded = [(s, qg.layer(s.layer)) for s in stages if s.weight_memory == "spram"]
    if loaded:
        word_bytes = max((s.multipliers * la.w_bits + 7) // 8 for s, la in loaded)
        total = total + Resources(model.luts({"loader.base": 1, "loader.target": len(loaded)}),
                                  8 * (word_bytes - 1) + 20)
    total = total + Resources(model.luts({"counters.base": 1}), 105)  # latency, images
    return total


# ------------------------------------------------------------------------------------------------
# FIFO depths on fan-out branches
# ------------------------------------------------------------------------------------------------


def _rows_needed(layer: QLayer, qg: QuantizedGraph, out_rows: int) -> int:
    """Input rows `layer` must have read to produce its first `out_rows` output rows."""
    x = qg.tensors[layer.inputs[0]]
    h = x.shape[0]
    if out_rows <= 0:
        return 0
    if isinstance(layer, (QConv, QMaxPool, QAvgPool)):
        kh, sh, pt = layer.kernel[0], layer.stride[0], layer.padding[0]
        return min(h, max(0, (out_rows - 1) * sh - pt + kh))
    if isinstance(layer, (QDense, QGlobalAvgPool, QGlobalMaxPool)):
        return h
    return min(h, out_rows)


def fifo_depths(qg: QuantizedGraph, lanes_out: dict[str, int], input_lanes: int
                ) -> dict[tuple[str, str], int]:
    """FIFOs for tensors read by several branches (see the module docstring).

    Each branch is followed through single-input, single-reader layers to where it ends (a
    join such as a residual add, or another fan-out); its *prefix* is the number of rows of the
    fanned-out tensor it must read before it delivers its first row there. A branch with a
    shorter prefix than the longest gets a FIFO of the difference plus two rows, in beats of
    the tensor's producer (`lanes_out`; `input_lanes` for the graph input): the FIFO sits
    before the branch's width converter (ResNet-8 on the ECP5-85F deadlocked when it was sized
    in the consumer's wider beats).
    """
    consumers: dict[str, list[QLayer]] = {}
    for layer in qg.layers:
        for t in layer.inputs:
            consumers.setdefault(t, []).append(layer)
    depths: dict[tuple[str, str], int] = {}
    for tensor, users in consumers.items():
        if len(users) < 2:
            continue
        prefixes = []
        for user in users:
            chain = []
            node = user
            while len(node.inputs) == 1:
                chain.append(node)
                readers = consumers.get(node.output, [])
                if len(readers) != 1:
                    break
                node = readers[0]
            rows = 1
            for layer in reversed(chain):
                rows = _rows_needed(layer, qg, rows)
            prefixes.append(rows if chain else 0)
        longest = max(prefixes)
        t = qg.tensors[tensor]
        for user, prefix in zip(users, prefixes, strict=True):
            if prefix == longest and prefix > 0:
                continue
            producer = qg.producer(tensor)
            lanes = max(1, lanes_out[producer.name] if producer is not None else input_lanes)
            row_beats = t.shape[1] * t.shape[2] // lanes
            depths[(tensor, user.name)] = max(4, (longest - prefix + 2) * row_beats)
    return depths


# ------------------------------------------------------------------------------------------------
# balancing
# ------------------------------------------------------------------------------------------------


def _cheapest(options: list[Option], ii: float, dev: Device, dsp_scarce: bool = False
              ) -> Option | None:
    """The option meeting `ii` at the least cost; a multiplier a DSP block can take costs
    little, unless DSP blocks are `dsp_scarce` (then it costs what a LUT multiplier would)."""
    model = rmodel.MODELS[dev.family]
    ok = [o for o in options if o.cycles <= ii]
    if not ok:
        return None

    def cost(o: Option) -> float:
        mem = o.weights
        mem_cost = 0.0 if mem is None else (mem.blocks * BRAM_COST if mem.placement != "logic"
                                            else rmodel.logic_memory(model, mem)[0])
        dsp_share = dev.dsp_products(*o.mult_bits) if o.multipliers else 0
        cheap = dsp_share and not dsp_scarce
        mult = o.multipliers * (40 if cheap else lut_multiplier_cost(model, o))
        return o.fixed.lut + mult + mem_cost + 0.2 * o.fixed.ff + BRAM_COST * o.fixed.bram

    return min(ok, key=cost)


def _lut_multipliers(dev: Device, stages: Iterable[StagePlan], qg: QuantizedGraph) -> int:
    """Multipliers the plan leaves to LUTs."""
    count = 0
    for s in stages:
        layer = qg.layer(s.layer)
        if not s.multipliers:
            continue
        per_block = dev.dsp_products(qg.tensors[layer.inputs[0]].bits, layer.w_bits) or 1
        count += max(0, s.multipliers - s.dsp_blocks * per_block - (s.shared_dsp >= 0))
    return count


def plan(qg: QuantizedGraph, dev: Device, *, fps: float | None = None,
         clock_mhz: float | None = None) -> HardwarePlan:
    """The fastest plan that fits (or the cheapest meeting `fps`); DoesNotFit otherwise."""
    clock = clock_mhz or dev.planned_clock_mhz
    if clock <= 0:
        raise UsageError(f"clock {clock!r} MHz must be positive")
    layers = list(qg.layers)
    options = [layer_options(dev, la, qg) for la in layers]
    candidates = sorted({o.cycles for opts in options for o in opts})
    floor = max(min(o.cycles for o in opts) for opts in options)
    if fps is not None:
        if fps <= 0:
            raise UsageError(f"--fps {fps!r} must be positive")
        target = clock * 1e6 / fps
        if target < floor:
            raise UsageError(
                f"--fps {fps:g} needs {target:,.0f} cycles per image at {clock:g} MHz; this "
                f"model's fastest stage design takes {floor:,.0f} ({clock * 1e6 / floor:,.0f} FPS)"
            )
        candidates = [target]
    else:
        candidates = [c for c in candidates if c >= floor]
    out_t = qg.tensors[qg.outputs[0].tensor]
    host_lut, host_ff = rmodel.host_resources(rmodel.MODELS[dev.family], dev.family,
                                              out_t.size * out_t.bits)
    host = Resources(host_lut, host_ff)

    def build(chosen: list[Option], slack: dict[str, int], stall: bool = False,
              partial: frozenset[str] = frozenset()) -> HardwarePlan:
        chosen = [_slacked(dev, la, qg, o, slack.get(la.name, 0), la.name in partial)
                  for la, o in zip(layers, chosen, strict=True)]
        stages = _assemble(dev, layers, chosen, qg)
        depths = fifo_depths(qg, {s.layer: s.lanes_out for s in stages}, stages[0].lanes_in)
        if stall:
            depths = _stall_fifos(qg, stages, depths)
        glue = _glue(dev, qg, stages, depths)
        return HardwarePlan(qg, dev, clock, tuple(stages), stages[0].lanes_in, depths, glue,
                            host)

    chosen_for: dict[int, list[Option]] = {}

    def attempt(ii: float) -> HardwarePlan | None:
        # each layer's cheapest option, multipliers on DSP blocks counted as cheap; if that
        # leaves LUT multipliers, also with every multiplier at its LUT price (fewer of them),
        # and the cheaper of the two
        best = None
        for dsp_scarce in (False, True):
            chosen = [_cheapest(opts, ii, dev, dsp_scarce) for opts in options]
            if any(c is None for c in chosen):
                return None
            p = build(chosen, {})  # type: ignore[arg-type]
            if best is None or (p.fits, -p.resources.lut) > (best.fits, -best.resources.lut):
                best = p
                chosen_for[id(p)] = chosen  # type: ignore[assignment]
            if not _lut_multipliers(dev, list(p.stages), qg):
                break
        return best

    def couple(p: HardwarePlan) -> HardwarePlan:
        """`p` with its coupled interval, and line-buffer rows, or line buffers that free their
        oldest row column by column, added where producers wait for room (the stage they wait
        on most first) while that shortens the interval and fits."""
        chosen = chosen_for[id(p)]
        flow = pipeline_flow(p)
        p = replace(p, interval=flow.interval)
        stall = False
        q = build(chosen, {}, stall=True)
        if q.fifo_depths != p.fifo_depths and q.fits:
            q_flow = pipeline_flow(q)
            if q_flow.interval < 0.995 * p.ii_cycles:
                stall, p, flow = True, replace(q, interval=q_flow.interval), q_flow
        slack: dict[str, int] = {}
        partial: frozenset[str] = frozenset()
        tried: set[str] = set()
        tried_partial: set[str] = set()
        # the most rows each line buffer may get: a pointwise stage's "rows" are pixels
        most = {}
        for la, o in zip(layers, chosen, strict=True):
            found = _option_window(la, qg, o)
            if found is not None:
                pixel_rows = found[0].fmt.width == 1 and found[0].kernel == (1, 1)
                most[la.name] = MAX_SLACK_PIXELS if pixel_rows else MAX_SLACK_ROWS
        while p.ii_cycles > SLACK_GOAL * p.stage_interval:
            if not stall:  # (once the slack is in, the stall FIFO may pay off)
                q = build(chosen, slack, stall=True, partial=partial)
                if q.fifo_depths != p.fifo_depths and q.fits:
                    q_flow = pipeline_flow(q)
                    if q_flow.interval < 0.995 * p.ii_cycles:
                        stall, p, flow = True, replace(q, interval=q_flow.interval), q_flow
                        continue
            # rows first (what the builds were verified with), then, where no row can be added
            # (no block RAM left), the oldest row freed column by column (a few LUTs)
            waits = [(w, name) for name, w in flow.waits.items()
                     if w > 0 and name in most and (
                         (name not in tried and slack.get(name, 0) < most[name])
                         or (name not in partial and name not in tried_partial))]
            if not waits:
                break
            name = max(waits)[1]
            rows = slack.get(name, 0)
            if name not in tried and rows < most[name]:
                trial = {**slack, name: min(most[name], max(1, 2 * rows))}
                trial_partial = partial
            else:
                trial, trial_partial = slack, partial | {name}
                tried_partial.add(name)
            q = build(chosen, trial, stall, trial_partial)
            q_flow = pipeline_flow(q)
            # better: a shorter interval, or as short with much less waiting (one of several
            # stalls removed: the others still set the interval)
            better = q_flow.interval < 0.995 * p.ii_cycles or (
                q_flow.interval <= p.ii_cycles
                and sum(q_flow.waits.values()) < 0.9 * sum(flow.waits.values()))
            if q.fits and better:
                slack, partial = trial, trial_partial
                p, flow = replace(q, interval=q_flow.interval), q_flow
            elif trial_partial is partial:
                tried.add(name)
        if p.ii_cycles > SLACK_GOAL * p.stage_interval and most:
            p = saturate(p, chosen, most, slack, partial, stall)
        return p

    def saturate(p: HardwarePlan, chosen: list[Option], most: dict[str, int],
                 slack: dict[str, int], partial: frozenset[str], stall: bool) -> HardwarePlan:
        """`p`, or the plan with every line buffer at its most rows and then each trimmed to
        the fewest that keep that interval, if that is faster. (Adding rows one buffer at a
        time finds nothing where several stages each hold the pipeline back by the same
        amount, e.g. a chain of equally slow pointwise stages.)"""
        full = {name: max(most[name], slack.get(name, 0)) for name in most}
        goal = p.ii_cycles
        for with_stall in sorted({stall, True}):  # (the stall FIFOs may pay off now)
            q = build(chosen, full, with_stall, partial)
            interval = pipeline_flow(q).interval
            if q.fits and interval < 0.995 * goal:
                goal, stall = interval, with_stall
        if goal >= 0.995 * p.ii_cycles:
            return p
        # the biggest line buffers first: their rows cost the most memory
        for s in sorted(q.stages, key=lambda s: (-s.resources.bram, s.layer)):
            if s.layer not in full:
                continue
            for rows in (0, *(1 << k for k in range(full[s.layer].bit_length()))):
                if rows >= full[s.layer]:
                    break
                trial = {**full, s.layer: rows}
                if pipeline_flow(build(chosen, trial, stall, partial)).interval <= goal:
                    full = trial
                    break
        q = build(chosen, full, stall, partial)
        return replace(q, interval=pipeline_flow(q).interval)

    # smallest feasible interval: the fit is monotone in the interval, so bisect
    lo, hi = 0, len(candidates) - 1
    best = None
    last = attempt(candidates[hi])
    if last is None or not last.fits:
        raise _does_not_fit(qg, dev, last, fps)
    best = last
    while lo < hi:
        mid = (lo + hi) // 2
        p = attempt(candidates[mid])
        if p is not None and p.fits:
            best, hi = p, mid
        else:
            lo = mid + 1
    # the coupled pipeline may be slower than its slowest stage where rows could not be added
    # (no memory left): a slower stage design with room for them may then be faster
    best = couple(best)
    for ii in candidates[lo + 1:lo + 1 + MAX_RETRIES]:
        if best.ii_cycles <= RETRY_ABOVE * best.stage_interval or ii >= best.ii_cycles:
            break
        p = attempt(ii)
        if p is not None and p.fits:
            p = couple(p)
            if p.ii_cycles < best.ii_cycles:
                best = p
    return best


def _does_not_fit(qg: QuantizedGraph, dev: Device, p: HardwarePlan | None,
                  fps: float | None) -> DoesNotFit:
    fill = LOGIC_FILL[dev.family]
    budget = replace(Resources.budget(dev), lut=math.floor(dev.luts * fill))
    if p is not None:
        budget = replace(p.placeable, lut=budget.lut)
    table = []
    if p is not None:
        table += [{"layer": s.layer, "kind": s.kind, **s.resources.as_dict()} for s in p.stages]
        table.append({"layer": "(glue: converters, FIFOs, arg-max)", "kind": "",
                      **p.glue.as_dict()})
        table.append({"layer": "(host link, UART, board top)", "kind": "",
                      **p.host.as_dict()})
        over = p.resources.over(budget)
        used = p.resources
    else:
        over, used = ["cycles"], Resources()
    bigger = [d.name for d in _bigger_devices(dev)]
    weights = sum(la.weight.size * la.w_bits for la in qg.layers
                  if isinstance(la, (QConv, QDense))) // 8
    suggestions = []
    if "bram" in over or "spram" in over:
        suggestions.append(f"fewer weight bits (the weights take {weights:,} bytes)")
    if "lut" in over or "ff" in over:
        suggestions.append("fewer layers or channels, or lower bit widths (narrower datapaths)")
    if fps is not None:
        suggestions.append(f"a lower --fps than {fps:g}")
    if bigger:
        suggestions.append(f"a bigger device ({', '.join(bigger[:3])})")
    detail = ", ".join(f"{k} {getattr(used, k):,.0f}/{getattr(budget, k):,}"
                       + (f" ({fill:.0%} of {dev.luts:,}, room to place and route)"
                          if k == "lut" else "")
                       for k in over if k != "cycles")
    message = (f"{qg.name} does not fit {dev.name} even at the least parallelism"
               + (f" ({detail})" if detail else "")
               + (f"; try {'; or '.join(suggestions)}" if suggestions else ""))
    return DoesNotFit(message, table, budget, suggestions)


def _bigger_devices(dev: Device) -> Iterable[Device]:
    from accelgen.devices import DEVICES

    return sorted((d for d in DEVICES.values() if d.luts > dev.luts), key=lambda d: d.luts)


__all__ = ["ROW_OVERHEAD", "DoesNotFit", "plan"]
