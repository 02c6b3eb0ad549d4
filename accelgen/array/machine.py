"""The PE array at the instruction level: what each instruction does to memory, and what it costs.

`execute` runs a `Program` on a batch of inputs the way the hardware does, from the bits of its
memory image: it decodes each instruction from the program words, reads the feature maps,
weights and parameters in their packed formats, computes in the code domain (offset codes,
folded biases, pad lanes and all) and writes the packed result words back. Its outputs must
equal the golden model's (`tests/test_array.py`), so the compiler's layouts are proved before
any RTL runs them; the RTL is then checked against this model's memory, word for word.

`cost` is the array's cycle and memory-access model per instruction (the counters the hardware
keeps, per layer):

* **CONV** (``G`` groups of ``g`` output channels, ``fold`` of them per PE, ``K`` words per
  channel's kernel, one activation word broadcast to every PE per cycle): per group, two
  cycles (GROUP, and the issue register's fill), the PE weight buffers loaded (``g * K``
  reads, + L + 1 cycles, L the memory's latency `MEM_LATENCY`) and the group's parameters
  (``4 * g`` reads, + L + 1); then per output pixel ``K * c16 * fold`` issue cycles
  (``c16`` = `ArrayConfig.word16_cycles` in 16-bit and 4-bit modes, else 1; a read for each
  word of a tap inside the input, at its first issue), except that a
  cycle in which a result word is written issues nothing and a pixel's last word waits until
  the requantizer has taken the previous pixel (`_pixel_timeline`); then the requantizer
  drains.
* **MAXPOOL / AVGPOOL**, per output pixel and channel word: a cycle per window tap (a read
  where it is inside the input), L more, then per lane a cycle (an average: ``rk`` + 2,
  its division by the reciprocal multiplied bit by bit, ``rk`` steps), and
  `VECTOR_DRAIN` cycles until the word is written.
* **ADD**: a word's two reads overlap the previous word's lanes, one lane a cycle through the
  requantizer (`_add_timeline`: about ``max(3, lanes)`` cycles a word, a write taking the
  memory from a read now and then), then the requantizer drains.

Each instruction also pays `FETCH` + 1 cycles (its words read, decoded, dispatched, and the
step to the next); the END instruction `FETCH`. Reads include the instruction words.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from accelgen import golden
from accelgen.array.compiler import (
    BIAS_BITS,
    PARAM_WORDS,
    Placement,
    Program,
    from_words,
    to_words,
    unpack,
)
from accelgen.array.isa import MEM_LATENCY, WORDS, Flag, Instr, Mode, Op, decode
from accelgen.errors import AccelgenError
from accelgen.ir import window_output_size

L = MEM_LATENCY  # a read's word comes L cycles after its address
FETCH = WORDS + L + 2  # reading an instruction's words, decoding and dispatching it
VECTOR_DRAIN = 5  # a vector operation's last lane through the requantizer and written


@dataclass(frozen=True)
class LayerCost:
    """One instruction's counters: cycles, memory words read and written, useful MACs and
    the multipliers' capacity over those cycles (products they could have made)."""

    layer: str
    op: str
    cycles: int
    reads: int
    writes: int
    macs: int
    capacity: int

    @property
    def accesses(self) -> int:
        return self.reads + self.writes

    @property
    def utilization(self) -> float:
        return self.macs / self.capacity if self.capacity else 0.0


def _place(ins: Instr, which: str) -> Placement:
    """A Placement for an instruction's operand (the fields the machine reads)."""
    if which == "x":
        mode, off, shape, addr = ins.mode, ins.has(Flag.X_OFF), (ins.h, ins.w, ins.c), ins.x_addr
    elif which == "x2":
        mode, off = ins.x2_mode, ins.has(Flag.X2_OFF)
        shape, addr = (ins.h, ins.w, ins.c), ins.x2_addr
    else:
        mode, off, shape, addr = ins.y_mode, ins.has(Flag.Y_OFF), (ins.oh, ins.ow, ins.oc), \
            ins.y_addr
    m = Mode(mode)
    # an offset tensor is as wide as its lanes (compiler), so bits = the lane width
    return Placement(addr, m, off, shape, m.bits, not off)


def _pixel_timeline(pixels: int, kc: int, gsz: int, ly: int, gw: int) -> int:
    """Cycles of a group's pixel loop and drain (``ArrayCore``'s PIXELS and DRAIN states).

    The issue stage sends `kc` words a pixel, one a cycle, except in cycles where a result
    word is written; a pixel's last word waits until the requantizer has taken the previous
    pixel's channels (3 + L + `gsz` cycles after that pixel's last word, L the memory's
    latency). A pixel's output word ``w`` is written ``7 + L + (w + 1) * ly - 1`` cycles after
    its last word, `gw` of them."""
    writes: deque[int] = deque()
    t = 0
    last = -(1 << 30)
    for _ in range(pixels):
        n = kc - 1
        while n > 0:
            while writes and writes[0] < t:
                writes.popleft()
            if writes and writes[0] == t:
                t += 1
                writes.popleft()
                continue
            run = min(n, (writes[0] - t) if writes else n)
            t += run
            n -= run
        t = max(t, last + 3 + L + gsz)
        while writes and writes[0] <= t:
            if writes.popleft() == t:
                t += 1
        last = t
        t += 1
        writes.extend(last + 7 + L + (w + 1) * ly - 1 for w in range(gw))
    final_write = gw * ly == gsz
    return last + 1 + 6 + L + gsz + int(final_write)


def _add_timeline(words: int, lanes: int) -> int:
    """Cycles of an ADD's ADD_RUN and ADD_WAIT states (``ArrayCore``), cycle by cycle: a
    fetcher reads a word's first input, then its second (each when no result word is being
    written: writes go first), into a buffer, where the pair lands L cycles after the
    second read; the first read of a pair is issued only when the buffer is empty or being
    emptied and no other pair is on its way; the lane unit takes the buffer's pair on its last
    lane (or when idle) and sends a lane a cycle to the requantizer, whose word is written 4
    cycles after its last lane. ADD_WAIT ends when the requantizer is empty (5 cycles after the
    last lane)."""
    fi, ax, afull, vact, vk = 0, False, False, False, 0
    bq = [False] * L  # the second read's data on its way
    writes: set[int] = set()
    last_lane = -1
    c = 0
    while True:
        if fi == words and not (ax or any(bq) or afull or vact):
            return max(c + 1, last_lane + 5) + 1
        wq = c in writes
        take = afull and (not vact or vk == lanes - 1)
        n_ax, n_afull, n_vact, n_vk = ax, afull, vact, vk
        if vact:
            n_vk = vk + 1
            if vk == lanes - 1:
                n_vact = False
                last_lane = c
                writes.add(c + 4)
        if take:
            n_vact, n_vk, n_afull = True, 0, False
        n_b0 = False
        if not wq:
            if fi != words and not ax and not any(bq) and (not afull or take):
                n_ax = True
            elif ax:
                n_ax, n_b0, fi = False, True, fi + 1
        if bq[-1]:
            n_afull = True
        ax, afull, vact, vk = n_ax, n_afull, n_vact, n_vk
        bq = [n_b0, *bq[:-1]]
        c += 1


def cost(program: Program) -> list[LayerCost]:
    """Every instruction's counters (module docstring)."""
    cfg = program.config
    out = []
    for lc in program.code:
        ins = lc.instr
        y = _place(ins, "y")
        x = _place(ins, "x")
        pixels = ins.oh * ins.ow
        if ins.op == Op.CONV:
            k, g = ins.k, ins.gsz
            c16 = cfg.word16_cycles if Mode(ins.mode) in (Mode.B16, Mode.B4) else 1
            per_word = c16 * ins.fold  # issue cycles a word (once per channel of a PE)
            inside = _inside_taps(ins) * ins.tapw
            reads, writes = WORDS, 0  # the instruction's own words
            cycles = FETCH + 1  # and the final step to the next instruction
            for gi in range(ins.groups):
                gw = ins.lwords if gi == ins.groups - 1 else ins.gwords
                reads += g * k + PARAM_WORDS * g + inside
                writes += pixels * gw
                # (and a cycle for the first word into the issue register)
                cycles += 2 + (g * k + L + 1) + (PARAM_WORDS * g + L + 1)
                cycles += _pixel_timeline(pixels, k * per_word, g, y.lanes, gw)
            lanes = Mode(ins.mode).lanes
            capacity = cycles * cfg.pes * lanes // (cfg.word16_cycles if lanes != 2 else 1)
            out.append(LayerCost(lc.layer, "conv" + ("-dw" if ins.has(Flag.DEPTHWISE) else ""),
                                 cycles, reads, writes, lc.macs, capacity))
        elif ins.op in (Op.MAXPOOL, Op.AVGPOOL):
            taps = _inside_taps(ins)
            reads = WORDS + taps * x.channel_words
            words = pixels * y.channel_words
            per_lane = 1 if ins.op == Op.MAXPOOL else ins.rk + 2
            per_word = ins.kh * ins.kw + L + per_lane * y.lanes + VECTOR_DRAIN
            out.append(LayerCost(lc.layer, Op(ins.op).name.lower(),
                                 FETCH + 1 + words * per_word, reads, words, 0, 0))
        elif ins.op == Op.ADD:
            words = y.words
            out.append(LayerCost(lc.layer, "add", FETCH + 1 + _add_timeline(words, y.lanes),
                                 WORDS + 2 * words, words, 0, 0))
        else:
            raise AccelgenError(f"no cost rule for op {ins.op!r}")
    return out


def totals(program: Program) -> tuple[int, int, int]:
    """(cycles, reads, writes) of a whole run as the hardware counts them: every instruction
    and the END (fetched, decoded)."""
    cs = cost(program)
    return (sum(c.cycles for c in cs) + FETCH, sum(c.reads for c in cs) + WORDS,
            sum(c.writes for c in cs))


def total_cycles(program: Program) -> int:
    return totals(program)[0]


def _inside_taps(ins: Instr) -> int:
    """Window taps inside the input, summed over output pixels."""
    total = 0
    for oy in range(ins.oh):
        rows = sum(0 <= oy * ins.sh - ins.pt + r < ins.h for r in range(ins.kh))
        for ox in range(ins.ow):
            cols = sum(0 <= ox * ins.sw - ins.pl + c < ins.w for c in range(ins.kw))
            total += rows * cols
    return total


def _read(mem: np.ndarray, place: Placement) -> np.ndarray:
    return mem[:, place.addr:place.addr + place.words]


def _write(mem: np.ndarray, place: Placement, words: np.ndarray) -> None:
    mem[:, place.addr:place.addr + place.words] = words


def _padded_codes(mem: np.ndarray, x: Placement, pt: int, pl: int, oh: int, ow: int, kh: int,
                  kw: int, sh: int, sw: int) -> np.ndarray:
    """(N, H', W', CW * lanes) stored lane codes, padded with the code of zero."""
    n = mem.shape[0]
    h, w, _ = x.shape
    codes = unpack(_read(mem, x).reshape(n, h, w, x.channel_words), x.mode)
    pb = max(0, (oh - 1) * sh + kh - pt - h)
    pr = max(0, (ow - 1) * sw + kw - pl - w)
    return np.pad(codes, ((0, 0), (pt, pb), (pl, pr), (0, 0)),
                  constant_values=-x.code_offset)


def _conv(mem: np.ndarray, ins: Instr, lc) -> None:
    x, y = _place(ins, "x"), _place(ins, "y")
    n = mem.shape[0]
    lanes = x.lanes
    k, g, fold = lc.kernel_words, lc.group, ins.fold
    groups = -(-ins.oc // g)
    xp = _padded_codes(mem, x, ins.pt, ins.pl, ins.oh, ins.ow, ins.kh, ins.kw, ins.sh, ins.sw)
    # PE p's word i * fold + f is word i of the group's channel (fold - 1 - f) * PEs + p
    wwords = mem[0, ins.w_addr:ins.w_addr + groups * g * k].reshape(groups, g // fold, k, fold)
    wwords = wwords[..., ::-1].transpose(0, 3, 1, 2).reshape(groups, g, k)
    wl = unpack(wwords, x.mode)  # (groups, g, K * lanes)
    pw = mem[0, ins.p_addr:ins.p_addr + groups * g * PARAM_WORDS].astype(np.int64)
    pw = pw.reshape(groups * g, PARAM_WORDS)
    bias = pw[:, 0] | (pw[:, 1] << 16) | (pw[:, 2] << 32)
    bias -= (bias >> (BIAS_BITS - 1)) << BIAS_BITS
    shift = pw[:, 3] - ((pw[:, 3] >> 15) << 16)
    taps = [(r, c) for r in range(ins.kh) for c in range(ins.kw)]

    def cols(word_lo: int, word_hi: int) -> np.ndarray:
        sl = slice(word_lo * lanes, word_hi * lanes)
        parts = [xp[:, r:r + (ins.oh - 1) * ins.sh + 1:ins.sh,
                    c:c + (ins.ow - 1) * ins.sw + 1:ins.sw, sl] for r, c in taps]
        return np.concatenate(parts, axis=3).reshape(n * ins.oh * ins.ow, -1)

    acc = np.zeros((n * ins.oh * ins.ow, groups * g), np.int64)
    if ins.has(Flag.DEPTHWISE):
        per = k // len(taps)  # words a group reads per tap
        short = groups * per * lanes - xp.shape[3]  # the last group reads past the channels
        if short > 0:
            xp = np.pad(xp, ((0, 0), (0, 0), (0, 0), (0, short)))
        for gi in range(groups):
            acc[:, gi * g:(gi + 1) * g] = cols(gi * per, (gi + 1) * per) @ wl[gi].T
    else:
        acc[:] = cols(0, x.channel_words) @ wl.reshape(groups * g, -1).T
    acc += bias  # (the compiler folded the rounding into the bias: the shift floors)
    yv = np.clip(np.where(shift >= 0, np.right_shift(acc, np.maximum(shift, 0)),
                          np.left_shift(acc, np.maximum(-shift, 0))), ins.lo, ins.hi)
    c_words = y.channel_words * y.lanes
    full = np.zeros((n * ins.oh * ins.ow, c_words), np.int64)
    used = min(c_words, groups * g)
    full[:, :used] = yv[:, :used]
    # lanes past the last group (never computed) keep whatever the words held: none exist,
    # since a group's size is a multiple of the output lanes (checked by the compiler)
    words = to_words(full.reshape(n, ins.oh, ins.ow, c_words),
                     Placement(0, y.mode, y.offset, (ins.oh, ins.ow, c_words), y.bits,
                               y.signed))
    _write(mem, y, words)


def _pool(mem: np.ndarray, ins: Instr) -> None:
    x, y = _place(ins, "x"), _place(ins, "y")
    n = mem.shape[0]
    h, w, _ = x.shape
    vals = from_words(_read(mem, x), _lane_place(x))  # decoded values, pad lanes included
    c_words = x.channel_words * x.lanes
    out = np.empty((n, ins.oh, ins.ow, c_words), np.int64)
    for oy in range(ins.oh):
        r0 = oy * ins.sh - ins.pt
        rs = slice(max(0, r0), min(h, r0 + ins.kh))
        for ox in range(ins.ow):
            c0 = ox * ins.sw - ins.pl
            cs = slice(max(0, c0), min(w, c0 + ins.kw))
            win = vals[:, rs, cs, :]
            if ins.op == Op.MAXPOOL:
                out[:, oy, ox] = win.max(axis=(1, 2))
            else:
                s = win.sum(axis=(1, 2))
                out[:, oy, ox] = (((2 * s + ins.rc) * ins.rm) >> ins.rk) - ins.rbig
    _write(mem, y, to_words(out, _lane_place(y)))


def _lane_place(p: Placement) -> Placement:
    """`p` with its pad lanes counted as channels (lane-wise units write every lane)."""
    c = p.channel_words * p.lanes
    return Placement(p.addr, p.mode, p.offset, (p.shape[0], p.shape[1], c), p.bits, p.signed)


def _add(mem: np.ndarray, ins: Instr) -> None:
    x, x2, y = _place(ins, "x"), _place(ins, "x2"), _place(ins, "y")
    a = from_words(_read(mem, x), _lane_place(x))
    b = from_words(_read(mem, x2), _lane_place(x2))
    total = np.left_shift(a, ins.align) + np.left_shift(b, ins.align2)
    _write(mem, y, to_words(golden.requantize(total, ins.shift, ins.lo, ins.hi),
                            _lane_place(y)))


def execute(program: Program, x: np.ndarray, *, memory: bool = False):
    """Run `program` on integer input codes `x` (N, H, W, C); the output tensor's values
    (N, OH, OW, OC), and with `memory` also the final memory words (N, words)."""
    x = np.asarray(x, np.int64)
    place = program.tensors[program.input]
    if x.ndim != 4 or x.shape[1:] != place.shape:
        raise AccelgenError(f"inputs of shape {x.shape} for an input tensor {place.shape}")
    n = x.shape[0]
    mem = np.zeros((n, program.words), np.int64)
    mem[:, :program.image.size] = program.image
    _write(mem, place, to_words(x, place))
    pc = 0
    for lc in program.code:
        ins = decode(mem[0, pc:pc + WORDS])
        if ins != lc.instr:
            raise AccelgenError(f"instruction {pc // WORDS} decodes differently from its code")
        if ins.op == Op.CONV:
            _conv(mem, ins, lc)
        elif ins.op in (Op.MAXPOOL, Op.AVGPOOL):
            _pool(mem, ins)
        elif ins.op == Op.ADD:
            _add(mem, ins)
        pc += WORDS
    if decode(mem[0, pc:pc + WORDS]).op != Op.END:
        raise AccelgenError("the program does not end with END")
    outp = program.tensors[program.output]
    y = from_words(_read(mem, outp), outp)
    return (y, mem) if memory else y


def run_graph_outputs(program: Program, qg, x_ir: np.ndarray) -> np.ndarray:
    """The output codes in the model's order (N, K), as `golden.logits` gives them."""
    y = execute(program, x_ir)
    qo = qg.outputs[0]
    return y.reshape(y.shape[0], -1)[:, qo.layout.reshape(-1)]


__all__ = ["LayerCost", "cost", "execute", "run_graph_outputs", "window_output_size"]
