"""QuantizedGraph -> a program for the PE array: instructions plus the memory image.

The array runs one layer after another (`accelgen.array.isa` for the instruction and data
formats). This module decides

* each tensor's **lanes** (`Mode`): its bit width rounded up to 4, 8 or 16, widened to the
  mode of any convolution that reads it (a convolution multiplies in its input's lanes, so its
  weights must fit them) and unified across the inputs and output of pools and adds (their
  vector unit works lane by lane);
* where everything lives in the single word-addressed memory: the program at word 0, then
  every layer's weights and parameters, then the feature maps, placed by their lifetimes (a
  tensor's words are free again after its last reader) — first fit, lowest address;
* the weight and parameter words themselves (offset folding included, see `isa`).

A layer the array cannot run raises `NotOnArray` naming the layer and the reason; a program
larger than the memory raises `DoesNotFitArray` with the words needed, by region.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from accelgen import golden
from accelgen.array.isa import FIELDS, WORDS, Flag, Instr, Mode, Op, encode
from accelgen.errors import AccelgenError
from accelgen.ir import window_output_size
from accelgen.kernels import counted_taps
from accelgen.quantized import (
    QAdd,
    QAvgPool,
    QConv,
    QDense,
    QGlobalAvgPool,
    QGlobalMaxPool,
    QLayer,
    QMaxPool,
    QTensor,
    QuantizedGraph,
)

PARAM_WORDS = 4  # per output channel: bias (48 bits, three words) and shift
BIAS_BITS = 48
MAX_RIGHT_SHIFT = 31  # the requantizer's shifts: right by 0..31 (rounding), left by 1..15
MAX_LEFT_SHIFT = 15
MAX_ALIGN = 7  # an add's input alignment (left shift)
# `ArrayCore` options that run every program for an array (every mode, operation, shift and
# field width): programs that share one compiled simulation model pass it as `build`
GENERAL_CORE = {"acc_bits": 48, "modes": None, "shifts": (-MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT),
                "ops": None, "align": MAX_ALIGN, "fields": None, "folds": None}
LANE_BITS = 24  # the vector unit's lane accumulators (an average's sum must fit)


class NotOnArray(AccelgenError):
    """A layer the PE array has no instruction for (or parameters outside its ranges)."""


class DoesNotFitArray(AccelgenError):
    """The program, weights and feature maps need more memory words than the array has."""


@dataclass(frozen=True)
class ArrayConfig:
    """The array's shape: `pes` processing elements (output channels computed at once), a
    main memory of `mem_words` 16-bit words, and per PE a weight buffer of `wbuf_words`
    words (a layer's kernel for one output channel must fit it). `word16_cycles` is how many
    cycles a PE takes for a word of one 16-bit or four 4-bit lanes (2 on iCE40, whose DSP
    blocks are fixed in their dual 8x8 mode: two 8x8 products a cycle, so a 16x16 product is
    four of them over two cycles and four 4-bit lanes two cycles; a word of two 8-bit lanes
    always takes one). `folds` is the most output channels a PE computes in one pass over a
    layer's input (its accumulators): a convolution whose channels outnumber the PEs gives
    each PE up to `folds` of them per group (as many as its kernels fit the weight buffer), so
    each activation word read from memory feeds ``folds * pes`` channels, not `pes`: fewer
    groups, fewer reads of the input (1 on iCE40, whose array has no logic to spare)."""

    pes: int = 8
    mem_words: int = 65536
    wbuf_words: int = 512
    word16_cycles: int = 1
    folds: int = 1

    def __post_init__(self) -> None:
        if not 4 <= self.pes <= 4096 or self.pes % 4:
            raise AccelgenError(f"pes {self.pes!r} must be a multiple of 4 in 4..4096 (a "
                                "group of output channels fills whole words of any lanes)")
        if self.mem_words < 64 or self.wbuf_words < 1:
            raise AccelgenError(f"memory of {self.mem_words!r} words / weight buffer of "
                                f"{self.wbuf_words!r} words is too small")
        if self.word16_cycles not in (1, 2):
            raise AccelgenError(f"word16_cycles {self.word16_cycles!r} must be 1 or 2")
        if not 1 <= self.folds <= 8 or self.folds * self.pes > 255:
            raise AccelgenError(f"folds {self.folds!r} must be in 1..8 with folds * pes "
                                f"({self.folds} * {self.pes}) at most 255 channels a group")
        if self.folds > 1 and self.word16_cycles != 1:
            raise AccelgenError(f"folds {self.folds!r} with word16_cycles "
                                f"{self.word16_cycles}: a PE that takes two cycles a word "
                                "computes one channel at a time (folds 1)")


@dataclass(frozen=True)
class Placement:
    """A tensor in memory: its first word, lanes, whether its codes are offset, its shape."""

    addr: int
    mode: Mode
    offset: bool
    shape: tuple[int, int, int]
    bits: int
    signed: bool

    @property
    def lanes(self) -> int:
        return self.mode.lanes

    @property
    def channel_words(self) -> int:
        return -(-self.shape[2] // self.lanes)

    @property
    def words(self) -> int:
        return self.shape[0] * self.shape[1] * self.channel_words

    @property
    def code_offset(self) -> int:
        """What is subtracted from a value to get its stored code."""
        return 1 << (self.bits - 1) if self.offset else 0


@dataclass(frozen=True)
class LayerCode:
    """One layer's instruction and what it computes (for counters and reports)."""

    layer: str
    instr: Instr
    macs: int
    group: int = 1  # output channels per group (CONV)
    kernel_words: int = 0  # words per output channel's kernel (CONV)
    fold: int = 1  # output channels per PE in a group (CONV)


@dataclass(frozen=True)
class Program:
    """Everything the array needs: the memory image (program, weights, parameters; feature
    maps are written at run time) and where the input and output tensors are."""

    name: str
    config: ArrayConfig
    code: tuple[LayerCode, ...]
    image: np.ndarray  # uint16, the initialised words (program, weights, parameters)
    words: int  # every word the program uses, feature maps included
    tensors: dict[str, Placement] = field(default_factory=dict)
    input: str = ""
    output: str = ""
    regions: dict[str, int] = field(default_factory=dict)  # words per region
    acc_bits: int = 48
    """The accumulator width the program needs: every CONV's products and bias (a proved
    bound from its weights), every add's aligned inputs; the hardware is built this wide."""

    @property
    def instructions(self) -> tuple[Instr, ...]:
        return tuple(lc.instr for lc in self.code)

    @property
    def modes(self) -> frozenset[Mode]:
        """Every lane mode the program's instructions use (the hardware built for it needs
        these, `accelgen.cores.pe_array.ArrayCore`)."""
        used = set()
        for ins in self.instructions:
            if ins.op == Op.END:
                continue
            used |= {Mode(ins.mode), Mode(ins.y_mode)}
            if ins.op == Op.ADD:
                used.add(Mode(ins.x2_mode))
        return frozenset(used) or frozenset({Mode.B8})

    @property
    def ops(self) -> frozenset[Op]:
        """The operations the program's instructions use (END included)."""
        return frozenset(Op(ins.op) for ins in self.instructions)

    @property
    def align(self) -> int:
        """The largest input alignment (left shift) of the program's adds."""
        return max([max(ins.align, ins.align2) for ins in self.instructions
                    if ins.op == Op.ADD] or [0])

    @property
    def field_bits(self) -> dict[str, int]:
        """Per instruction field, the bits its values in this program need (two's complement
        for a signed field): the core keeps no more of it (registers, comparators, adders)."""
        out = {}
        for name, bits, signed_ in FIELDS:
            need = 1
            for ins in self.instructions:
                v = int(getattr(ins, name))
                need = max(need, (v.bit_length() + 1) if signed_ else v.bit_length())
            out[name] = min(bits, need)
        return out

    @property
    def folds(self) -> int:
        """The most output channels a PE computes per pass in any instruction (the
        accumulators a PE needs)."""
        return max([lc.fold for lc in self.code] or [1])

    def needs(self) -> dict:
        """What a core must be built with to run this program (`ArrayCore`'s options)."""
        return {"acc_bits": self.acc_bits, "modes": self.modes, "shifts": self.shift_range,
                "ops": self.ops, "align": self.align, "fields": self.field_bits,
                "folds": self.folds}

    def core_options(self, build: dict | None = None) -> dict:
        """`needs`, with the options in `build` (wider ones, e.g. `GENERAL_CORE`) in place."""
        return {**self.needs(), **(build or {})}

    @property
    def shift_range(self) -> tuple[int, int]:
        """(most negative, most positive) requantization shift the program uses (every
        convolution channel's, read from the image, and the vector operations'): the
        requantizer built for it shifts no further (`ArrayCore`'s ``shifts``)."""
        lo = hi = 0
        for ins in self.instructions:
            if ins.op == Op.CONV:
                words = self.image[ins.p_addr + 3:ins.p_addr + PARAM_WORDS * ins.groups
                                   * ins.gsz:PARAM_WORDS].astype(np.int64)
                s = words - ((words >> 15) << 16)
                if s.size:
                    lo, hi = min(lo, int(s.min())), max(hi, int(s.max()))
            elif ins.op != Op.END:
                lo, hi = min(lo, ins.shift), max(hi, ins.shift)
        return lo, hi


def widest(*modes: Mode) -> Mode:
    return Mode(min(int(m) for m in modes))


def _code_offset(t: QTensor, mode: Mode) -> bool:
    return (not t.signed) and t.bits >= mode.bits


def _check_supported(layer: QLayer, qg: QuantizedGraph) -> None:
    def no(why: str) -> NotOnArray:
        return NotOnArray(f"layer {layer.name!r} ({layer.op}): {why}; the PE array runs "
                          "Conv (dense or depthwise), Dense, MaxPool, AveragePool (one count "
                          "for every window), global pools and residual Add; use "
                          "--arch pipeline for this model")

    if isinstance(layer, QConv):
        if layer.dilation != (1, 1):
            raise no(f"dilation {layer.dilation}")
        if layer.groups != 1 and not (layer.is_depthwise and layer.depth_multiplier == 1):
            raise no(f"groups {layer.groups} (only 1, or depthwise with multiplier 1)")
        if max(layer.stride) > 15 or max(layer.padding) > 15:
            raise no(f"stride {layer.stride} / padding {layer.padding} above 15")
    elif isinstance(layer, (QMaxPool, QAvgPool)):
        if layer.dilation != (1, 1):
            raise no(f"dilation {layer.dilation}")
        if isinstance(layer, QAvgPool):
            h, w, _ = qg.tensors[layer.inputs[0]].shape
            counts = _avg_counts(layer, h, w)
            if counts.min() != counts.max():
                raise no("windows with different tap counts (padding not counted)")
    elif not isinstance(layer, (QDense, QGlobalAvgPool, QGlobalMaxPool, QAdd)):
        raise no("no instruction for this operation")


def _avg_counts(layer: QAvgPool, h: int, w: int) -> np.ndarray:
    out_hw = window_output_size((h, w), layer.kernel, layer.stride, layer.padding,
                                layer.dilation, layer.ceil_mode)
    return counted_taps((h, w), out_hw, layer.kernel, layer.stride, layer.padding,
                        layer.dilation, layer.count_include_pad)


def tensor_modes(qg: QuantizedGraph) -> dict[str, Mode]:
    """Each tensor's lanes (module docstring)."""
    modes = {name: Mode.for_bits(t.bits) for name, t in qg.tensors.items()}
    changed = True
    while changed:
        changed = False

        def widen(names: list[str], to: Mode) -> None:
            nonlocal changed
            for n in names:
                if widest(modes[n], to) != modes[n]:
                    modes[n] = widest(modes[n], to)
                    changed = True

        for la in qg.layers:
            if isinstance(la, (QConv, QDense)):
                widen([la.inputs[0]], Mode.for_bits(la.w_bits))
            else:
                names = [*la.inputs, la.output]
                widen(names, widest(*(modes[n] for n in names)))
    return modes


def _pack(values: np.ndarray, mode: Mode) -> np.ndarray:
    """(..., n * lanes) signed lane values -> (..., n) uint16 words."""
    lanes, bits = mode.lanes, mode.bits
    v = np.asarray(values, np.int64).reshape(*values.shape[:-1], -1, lanes)
    if v.size and (v.min() < -(1 << (bits - 1)) or v.max() >= 1 << (bits - 1)):
        raise AccelgenError(f"a value does not fit a {bits}-bit lane")
    u = v & ((1 << bits) - 1)
    shifts = np.arange(lanes, dtype=np.int64) * bits
    return (u << shifts).sum(axis=-1).astype(np.uint16)


def unpack(words: np.ndarray, mode: Mode) -> np.ndarray:
    """(..., n) words -> (..., n * lanes) signed lane values."""
    lanes, bits = mode.lanes, mode.bits
    w = np.asarray(words, np.int64)[..., None]
    shifts = np.arange(lanes, dtype=np.int64) * bits
    u = (w >> shifts) & ((1 << bits) - 1)
    s = u - ((u >> (bits - 1)) << bits)
    return s.reshape(*words.shape[:-1], -1)


def to_words(codes: np.ndarray, place: Placement) -> np.ndarray:
    """(N, H, W, C) values of a tensor -> (N, words) its stored words."""
    n, h, w, c = codes.shape
    cw = place.channel_words
    lanes = np.zeros((n, h, w, cw * place.lanes), np.int64)
    lanes[..., :c] = np.asarray(codes, np.int64) - place.code_offset
    return _pack(lanes, place.mode).reshape(n, -1)


def from_words(words: np.ndarray, place: Placement) -> np.ndarray:
    """`to_words`' inverse: (N, words) -> (N, H, W, C) values."""
    h, w, c = place.shape
    lanes = unpack(np.asarray(words).reshape(words.shape[0], h, w, place.channel_words),
                   place.mode)
    return lanes[..., :c] + place.code_offset


class _Allocator:
    """Feature maps in [base, base + cap), placed and freed by lifetime, each at the lowest
    free address (``high=False``) or the highest (``high=True``)."""

    def __init__(self, base: int, cap: int) -> None:
        self.base, self.top = base, base + cap
        self.live: list[tuple[int, int]] = []  # (addr, words)
        self.low_mark, self.high_mark = base, base + cap

    def _holes(self) -> list[tuple[int, int]]:
        holes, addr = [], self.base
        for a, n in sorted(self.live):
            if a > addr:
                holes.append((addr, a))
            addr = max(addr, a + n)
        if addr < self.top:
            holes.append((addr, self.top))
        return holes

    def alloc(self, words: int, high: bool = False) -> int:
        fits = [(lo, hi) for lo, hi in self._holes() if hi - lo >= words]
        if not fits:
            raise DoesNotFitArray(f"no room for a feature map of {words:,} words")
        if high:
            addr = fits[-1][1] - words
            self.high_mark = min(self.high_mark, addr)
        else:
            addr = fits[0][0]
            self.low_mark = max(self.low_mark, addr + words)
        self.live.append((addr, words))
        return addr

    def free(self, addr: int, words: int) -> None:
        self.live.remove((addr, words))


def _conv_words(layer: QConv | QDense, x: Placement, y_mode: Mode, config: ArrayConfig
                ) -> tuple[np.ndarray, int, int, int]:
    """Weights laid out per group and PE: (groups, PEs used, fold * K words) uint16; K (words
    per channel's kernel); the group size g; the fold (channels per PE in a group).

    A convolution's group is ``fold * pes`` output channels, each PE's kernels all the input's
    channel words at every tap, interleaved word by word (`isa`). The fold is the fewest
    channels per PE that gives the fewest groups, within `ArrayConfig.folds` and the weight
    buffer. A depthwise convolution's group is as many channels as one input word or one
    output word holds, whichever is more (its output words are then whole): per tap it reads
    the group's input words, and PE ``p`` has its channel's weight in the lane of its channel,
    in the word holding it, and zeros elsewhere."""
    pes = config.pes
    lanes = x.lanes
    if isinstance(layer, QDense):
        h, w, c = x.shape
        weight = layer.weight.reshape(-1, h, w, c)
    else:
        weight = layer.weight
    c_out, kh, kw, c_k = weight.shape
    if isinstance(layer, QConv) and layer.is_depthwise and layer.groups > 1:
        gsz = max(lanes, y_mode.lanes)
        if gsz > pes:
            raise NotOnArray(f"layer {layer.name!r}: a depthwise group of {gsz} channels needs "
                             f"{gsz} PEs; the array has {pes}")
        per = gsz // lanes  # input words per tap
        groups = -(-c_out // gsz)
        lanes_w = np.zeros((groups, gsz, kh * kw, per, lanes), np.int64)
        for o in range(c_out):
            g, p = divmod(o, gsz)
            lanes_w[g, p, :, p // lanes, o % lanes] = weight[o, :, :, 0].reshape(-1)
        words = _pack(lanes_w.reshape(groups, gsz, -1), x.mode)
        return words, kh * kw * per, gsz, 1
    cw = x.channel_words
    k = kh * kw * cw
    per_pe = -(-c_out // pes)  # channels each PE computes over the layer
    fit = max(1, min(config.folds, config.wbuf_words // k))
    groups = -(-per_pe // fit)
    fold = -(-per_pe // groups)
    gsz = fold * pes
    lanes_w = np.zeros((groups * gsz, kh, kw, cw * lanes), np.int64)
    lanes_w[:c_out, :, :, :c_k] = weight
    # (group, slot j, PE p, K * lanes): channel g * gsz + j * pes + p; issued as fold
    # f = fold - 1 - j, so word i * fold + f of PE p
    per_slot = _pack(lanes_w.reshape(groups, fold, pes, -1), x.mode)
    words = per_slot[:, ::-1].transpose(0, 2, 3, 1).reshape(groups, pes, k * fold)
    return np.ascontiguousarray(words), k, gsz, fold


def _check_shift(name: str, shifts) -> None:
    s = np.atleast_1d(np.asarray(shifts, np.int64))
    if s.size and (s.min() < -MAX_LEFT_SHIFT or s.max() > MAX_RIGHT_SHIFT):
        bad = int(s.min()) if s.min() < -MAX_LEFT_SHIFT else int(s.max())
        raise NotOnArray(f"layer {name!r}: requantization shift {bad} is outside the array's "
                         f"-{MAX_LEFT_SHIFT}..{MAX_RIGHT_SHIFT}")


def _rounding(shifts) -> np.ndarray:
    """What round half up adds before a right shift by `shifts` (0 for a left shift)."""
    s = np.asarray(shifts, np.int64)
    return np.where(s > 0, np.left_shift(1, np.maximum(s - 1, 0)), 0)


def _param_words(layer: QConv | QDense, x: Placement, n_channels: int) -> np.ndarray:
    """Per output channel: the bias with the input's code offset and the rounding of the
    right shift (half of its unit: round half up) folded in, and the shift. The requantizer
    then shifts without rounding (an adder and a decoder fewer on its critical path)."""
    c_out = layer.weight.shape[0]
    wsum = layer.weight.reshape(c_out, -1).sum(axis=1)
    shifts = np.broadcast_to(np.asarray(layer.shift, np.int64), (c_out,))
    _check_shift(layer.name, shifts)
    bias = layer.bias.astype(np.int64) + x.code_offset * wsum + _rounding(shifts)
    lim = 1 << (BIAS_BITS - 1)
    if bias.size and (bias.min() < -lim or bias.max() >= lim):
        raise NotOnArray(f"layer {layer.name!r}: a bias does not fit {BIAS_BITS} bits")
    out = np.zeros((n_channels, PARAM_WORDS), np.int64)
    b = bias & ((1 << BIAS_BITS) - 1)
    out[:c_out, 0] = b & 0xFFFF
    out[:c_out, 1] = (b >> 16) & 0xFFFF
    out[:c_out, 2] = (b >> 32) & 0xFFFF
    out[:c_out, 3] = shifts & 0xFFFF
    return out.astype(np.uint16).reshape(-1)


def compile_graph(qg: QuantizedGraph, config: ArrayConfig | None = None) -> Program:
    """The program for `qg` on an array shaped by `config` (module docstring)."""
    config = config or ArrayConfig()
    if len(qg.inputs) != 1 or len(qg.outputs) != 1:
        raise NotOnArray(f"{qg.name}: the array runs models with one input and one output, "
                         f"not {len(qg.inputs)} and {len(qg.outputs)}")
    for la in qg.layers:
        _check_supported(la, qg)
    modes = tensor_modes(qg)

    def placement(name: str, addr: int) -> Placement:
        t = qg.tensors[name]
        return Placement(addr, modes[name], _code_offset(t, modes[name]), tuple(t.shape),
                         t.bits, t.signed)

    program_words = WORDS * (len(qg.layers) + 1)
    blobs: list[np.ndarray] = []
    cursor = program_words
    # layer, w_addr, p_addr, K, group, fold
    pending: list[tuple[QLayer, int, int, int, int, int]] = []
    for la in qg.layers:
        if not isinstance(la, (QConv, QDense)):
            pending.append((la, 0, 0, 0, 1, 1))
            continue
        x = placement(la.inputs[0], 0)
        words, k, gsz, fold = _conv_words(la, x, modes[la.output], config)
        if k > config.wbuf_words:
            raise NotOnArray(f"layer {la.name!r}: one output channel's kernel is {k} words; "
                             f"the PE weight buffers hold {config.wbuf_words}")
        params = _param_words(la, x, words.shape[0] * gsz)
        w_addr, cursor = cursor, cursor + words.size
        p_addr, cursor = cursor, cursor + params.size
        blobs += [words.reshape(-1), params]
        pending.append((la, w_addr, p_addr, k, gsz, fold))
    static_words = cursor

    # feature maps by lifetime: first fit from the bottom, or each layer's output at the other
    # end of memory from its input (ping-pong: no holes where a short-lived tensor was), the
    # smaller of the two; the top end is then moved down next to the bottom one
    last_use: dict[str, int] = {}
    for i, la in enumerate(qg.layers):
        for t in la.inputs:
            last_use[t] = i
    out_name = qg.outputs[0].tensor
    in_name = qg.inputs[0].tensor
    cap = sum(placement(t, 0).words for t in qg.tensors)
    best = None
    for ping_pong in (False, True):
        places, alloc = _place_maps(qg, pending, placement, last_use, static_words, cap,
                                    ping_pong)
        span = (alloc.low_mark - static_words) + (alloc.top - alloc.high_mark)
        if best is None or span < best[0]:
            gap = alloc.high_mark - alloc.low_mark
            best = span, {t: replace(p, addr=p.addr - gap if p.addr >= alloc.high_mark else
                                     p.addr) for t, p in places.items()}
    places = best[1]
    code = [_instruction(la, qg, places, *where) for la, *where in pending]
    words = static_words + best[0]
    regions = {"program": program_words, "weights and parameters": static_words - program_words,
               "feature maps": words - static_words}
    if words > config.mem_words:
        detail = ", ".join(f"{k} {v:,}" for k, v in regions.items())
        raise DoesNotFitArray(f"{qg.name} needs {words:,} memory words ({detail}); the array "
                              f"has {config.mem_words:,}: try fewer weight bits or a bigger "
                              "device")
    image = np.zeros(static_words, np.uint16)
    for j, lc in enumerate(code):
        image[j * WORDS:(j + 1) * WORDS] = encode(lc.instr)
    image[len(code) * WORDS:(len(code) + 1) * WORDS] = encode(Instr(op=Op.END))
    image[program_words:static_words] = (np.concatenate(blobs) if blobs
                                         else np.zeros(0, np.uint16))
    return Program(qg.name, config, tuple(code), image, words, places, in_name, out_name,
                   regions, _acc_bits(qg, places, code))


def _place_maps(qg: QuantizedGraph, pending, placement, last_use: dict[str, int], base: int,
                cap: int, ping_pong: bool) -> tuple[dict[str, Placement], _Allocator]:
    out_name = qg.outputs[0].tensor
    in_name = qg.inputs[0].tensor
    alloc = _Allocator(base, cap)
    last_use = dict(last_use)
    places = {in_name: placement(in_name, alloc.alloc(placement(in_name, 0).words))}
    side = {in_name: False}
    for i, (la, *_rest) in enumerate(pending):
        y = placement(la.output, 0)
        # an add works word by word: its output may take the place of an input it is the
        # last reader of (the same words)
        reuse = [t for t in la.inputs if isinstance(la, QAdd) and last_use[t] == i
                 and t not in (out_name, in_name) and places[t].words == y.words
                 and places[t].mode == y.mode]
        if reuse:
            addr = places[reuse[0]].addr
            side[la.output] = side[reuse[0]]
            last_use[reuse[0]] = -1  # freed with the output, which has the same words
        else:
            side[la.output] = (not side[la.inputs[0]]) if ping_pong else False
            addr = alloc.alloc(y.words, high=side[la.output])
        places[la.output] = placement(la.output, addr)
        for t in set(la.inputs):
            if last_use[t] == i and t != out_name:
                alloc.free(places[t].addr, places[t].words)
    return places, alloc


def _instruction(la: QLayer, qg: QuantizedGraph, places: dict[str, Placement], w_addr: int,
                 p_addr: int, k: int, gsz: int, fold: int) -> LayerCode:
    x = places[la.inputs[0]]
    y = places[la.output]
    flags = (Flag.X_OFF if x.offset else 0) | (Flag.Y_OFF if y.offset else 0)
    h, w, c = x.shape
    oh, ow, oc = y.shape
    pad_lane = (-x.code_offset) & ((1 << x.mode.bits) - 1)
    if isinstance(la, (QConv, QMaxPool, QAvgPool)):
        pt_pl, st_hw = (la.padding[0], la.padding[1]), la.stride
    else:
        pt_pl, st_hw = (0, 0), (1, 1)
    common = dict(mode=int(x.mode), y_mode=int(y.mode), h=h, w=w, c=c, oh=oh, ow=ow, oc=oc,
                  x_addr=x.addr, y_addr=y.addr, xcw=x.channel_words, ycw=y.channel_words,
                  row=w * x.channel_words, org=x.addr - pt_pl[0] * w * x.channel_words
                  - pt_pl[1] * x.channel_words, srow=st_hw[0] * w * x.channel_words,
                  scw=st_hw[1] * x.channel_words,
                  pad=sum(pad_lane << (j * x.mode.bits) for j in range(x.lanes)))
    macs = la.macs(qg.tensors)
    if isinstance(la, (QConv, QDense)):
        if isinstance(la, QDense):
            kh, kw, st, pad = h, w, (1, 1), (0, 0, 0, 0)
        else:
            (kh, kw), st, pad = la.kernel, la.stride, la.padding
            if la.is_depthwise and la.groups > 1:
                flags |= Flag.DEPTHWISE
        groups = -(-oc // gsz)
        gwords = gsz // y.lanes
        instr = Instr(op=Op.CONV, flags=int(flags), kh=kh, kw=kw, sh=st[0], sw=st[1],
                      pt=pad[0], pl=pad[1], w_addr=w_addr, p_addr=p_addr, lo=la.lo, hi=la.hi,
                      tapw=k // (kh * kw), k=k, groups=groups, gsz=gsz, fold=fold,
                      gwords=gwords, lwords=y.channel_words - (groups - 1) * gwords, **common)
        return LayerCode(la.name, instr, macs, gsz, k, fold)
    if isinstance(la, QAdd):
        _check_shift(la.name, la.shift)
        if max(la.align) > MAX_ALIGN:
            raise NotOnArray(f"layer {la.name!r}: input alignment {max(la.align)} is above "
                             f"the array's {MAX_ALIGN}")
        x2 = places[la.inputs[1]]
        flags |= Flag.X2_OFF if x2.offset else 0
        instr = Instr(op=Op.ADD, flags=int(flags), x2_mode=int(x2.mode), x2_addr=x2.addr,
                      x2cw=x2.channel_words,
                      k=y.words, lo=la.lo, hi=la.hi, shift=la.shift, align=la.align[0],
                      align2=la.align[1], **common)
        return LayerCode(la.name, instr, 0)
    if isinstance(la, QGlobalMaxPool):  # a max pool whose window is the whole input
        yt = qg.tensors[la.output]
        instr = Instr(op=Op.MAXPOOL, flags=int(flags), kh=h, kw=w, lo=yt.qmin, hi=yt.qmax,
                      **common)
        return LayerCode(la.name, instr, 0)
    if isinstance(la, QMaxPool):
        yt = qg.tensors[la.output]
        instr = Instr(op=Op.MAXPOOL, flags=int(flags), kh=la.kernel[0], kw=la.kernel[1],
                      lo=yt.qmin, hi=yt.qmax,
                      sh=la.stride[0], sw=la.stride[1], pt=la.padding[0], pl=la.padding[1],
                      **common)
        return LayerCode(la.name, instr, 0)
    # average pools: one count n for every window (checked), the division by reciprocal
    if isinstance(la, QGlobalAvgPool):
        kernel, stride, pad, n = (h, w), (1, 1), (0, 0, 0, 0), h * w
    else:
        kernel, stride, pad = la.kernel, la.stride, la.padding
        n = int(_avg_counts(la, h, w).max())
    # the sum's range is that of any `n` lane values (pad lanes are averaged too), so the
    # division is exact whatever a lane holds (and the machine model exact in every lane)
    lane = places[la.inputs[0]].mode.bits
    sum_bits = sum_bits_for(-(1 << (lane - 1)), (1 << lane) - 1, n)
    if sum_bits > LANE_BITS:
        raise NotOnArray(f"layer {la.name!r}: an average over {n} taps of {lane}-bit lanes "
                         f"needs {sum_bits}-bit sums; the array's lane accumulators hold "
                         f"{LANE_BITS} (use a narrower input or a smaller window)")
    rc, rm, rk, rbig = golden.reciprocal(n, sum_bits)
    yt = qg.tensors[la.output]
    instr = Instr(op=Op.AVGPOOL, flags=int(flags), lo=yt.qmin, hi=yt.qmax, kh=kernel[0],
                  kw=kernel[1], sh=stride[0],
                  sw=stride[1], pt=pad[0], pl=pad[1], rc=rc, rm=rm, rk=rk, rbig=rbig, **common)
    return LayerCode(la.name, instr, 0)


def _acc_bits(qg: QuantizedGraph, places: dict[str, Placement], code) -> int:
    """Signed bits of any value the requantizer sees (`Program.acc_bits`)."""
    need = 18  # pools' values: up to 16-bit unsigned
    for la in qg.layers:
        if isinstance(la, (QConv, QDense)):
            x = places[la.inputs[0]]
            c_out = la.weight.shape[0]
            wsum = np.abs(la.weight.reshape(c_out, -1)).sum(axis=1)
            bias = np.abs(la.bias.astype(np.int64)
                          + x.code_offset * la.weight.reshape(c_out, -1).sum(axis=1)
                          + _rounding(np.broadcast_to(la.shift, (c_out,))))
            bound = int((wsum * (1 << (x.mode.bits - 1)) + bias).max())
            # a 16-bit product's first half is up to 2**30 before the second corrects it
            bound += (1 << 31) if x.mode == Mode.B16 else 0
            need = max(need, bound.bit_length() + 1)
        elif isinstance(la, QAdd):
            # (and the rounding added before its right shift)
            need = max(need, 17 + max(la.align) + 2, int(la.shift) + 2)
    return min(need + 1, 64)


def sum_bits_for(qmin: int, qmax: int, n: int) -> int:
    """Signed bits of any sum of `n` values in [qmin, qmax]."""
    lo, hi = min(0, qmin * n), max(0, qmax * n)
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi < 1 << (bits - 1)):
        bits += 1
    return bits
