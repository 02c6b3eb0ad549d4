"""The PE array's instruction set: one instruction per layer, a fixed-width record of fields.

An instruction is `FIELDS` packed least significant first into `WORDS` 16-bit words of the
array's memory (the program sits at word 0). `Instr` is the Python view; `LAYOUT` the same
record as an Amaranth `data.StructLayout`, which the controller decodes; `encode`/`decode`
convert between the two and check every field's range (an error names the field and the
value).

Data formats the fields refer to (`accelgen.array.compiler` writes them, the controller and
`accelgen.array.machine` read them):

* **Words and lanes.** Memory words are 16 bits. A tensor is stored in *lanes* of ``16 //
  lanes`` bits (`Mode`): one 16-bit, two 8-bit or four 4-bit values per word, lane ``k`` in
  bits ``[k*b, (k+1)*b)``. A tensor ``(H, W, C)`` takes ``H * W * ceil(C / lanes)`` words, pixel
  by pixel (row-major), the channels of a pixel in consecutive words.
* **Codes.** A stored lane holds a signed code: the value itself, or for an unsigned tensor
  whose bit width equals its lane width, ``value - 2**(b-1)`` (``flags.x_off``/``y_off``: the
  lane's top bit inverted). Every multiplier operand is therefore signed; the offset's share
  of a convolution, ``2**(b-1) * sum(w)``, is folded into the bias by the compiler, and the
  zero padding of such a tensor is the code ``-2**(b-1)``.
* **Convolution parameters** (``p_addr``): per output channel four words, the bias as a 48-bit
  two's-complement number (three words, low first) and the requantization shift (signed).
* **Weights** (``w_addr``): per group of ``fold * pes`` output channels, per PE, the kernel
  words of its ``fold`` output channels in the order the input is read: tap by tap
  (row-major), within a tap the input's channel words, and within a word the PE's channels
  (``fold`` words, one per channel: word ``i * fold + f`` of PE ``p`` is word ``i`` of the
  group's channel ``(fold - 1 - f) * pes + p``; each activation word read is used ``fold``
  times, once per channel). A depthwise convolution's group is one activation word's lanes
  (``fold`` 1): PE ``p`` holds its channel's weight in lane ``p`` and zeros in the others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from amaranth import signed, unsigned
from amaranth.lib import data

from accelgen.errors import ShapeError

WORD_BITS = 16
# a read of the array's memory delivers its word this many cycles after the address: the
# memory's requests are registered before it and its read data after it (on the UP5K the
# SPRAMs sit in the die's corners and their routes alone take 5 to 7 ns each way)
MEM_LATENCY = 3


class Op(enum.IntEnum):
    """What an instruction does (`Instr.op`)."""

    END = 0
    CONV = 1  # convolution, pointwise, dense (a kernel over the whole input), depthwise (flag)
    MAXPOOL = 2
    AVGPOOL = 3  # every window the same count (global average pool: the whole input)
    ADD = 4


class Mode(enum.IntEnum):
    """Lanes of a stored word and the multipliers' mode: the value is the lane width's code."""

    B16 = 0
    B8 = 1
    B4 = 2

    @property
    def lanes(self) -> int:
        return 1 << int(self)

    @property
    def bits(self) -> int:
        return WORD_BITS // self.lanes

    @staticmethod
    def for_bits(bits: int) -> Mode:
        if not 1 <= bits <= 16:
            raise ShapeError(f"bit width {bits!r} is outside 1..16")
        return Mode.B4 if bits <= 4 else Mode.B8 if bits <= 8 else Mode.B16


class Flag(enum.IntFlag):
    X_OFF = 1  # input codes are offset (unsigned tensor as wide as its lanes)
    X2_OFF = 2  # second input's codes are offset (ADD)
    Y_OFF = 4  # output codes are offset
    DEPTHWISE = 8  # CONV: each output channel reads its own input channel only


# name, bits, signed
FIELDS: tuple[tuple[str, int, bool], ...] = (
    ("op", 4, False),
    ("mode", 2, False),  # the input's lanes and the multipliers' mode
    ("x2_mode", 2, False),  # ADD: the second input's lanes
    ("y_mode", 2, False),  # the output's lanes
    ("flags", 6, False),
    ("h", 10, False), ("w", 10, False), ("c", 12, False),
    ("oh", 10, False), ("ow", 10, False), ("oc", 12, False),
    ("kh", 8, False), ("kw", 8, False),
    ("sh", 4, False), ("sw", 4, False),
    ("pt", 4, False), ("pl", 4, False),
    ("x_addr", 20, False), ("x2_addr", 20, False), ("y_addr", 20, False),
    ("w_addr", 20, False), ("p_addr", 20, False),
    ("lo", 17, True), ("hi", 17, True),
    ("shift", 7, True),  # ADD: the requantization shift
    ("align", 5, False), ("align2", 5, False),  # ADD: the inputs' left shifts
    ("rc", 32, False), ("rm", 32, False), ("rk", 7, False),  # AVGPOOL: reciprocal constants
    ("rbig", 24, False),
    # derived by the compiler so the controller computes addresses by adding only
    ("xcw", 12, False), ("x2cw", 12, False), ("ycw", 12, False),  # channel words per pixel
    ("row", 20, False),  # words per input row (w * xcw)
    ("tapw", 12, False),  # CONV: input words read per tap (xcw; a depthwise group's words)
    ("k", 16, False),  # CONV: words per output channel's kernel (kh * kw * tapw)
    ("groups", 12, False), ("gsz", 8, False),  # CONV: groups of gsz output channels
    ("fold", 4, False),  # CONV: output channels per PE in a group (gsz = fold * PEs)
    ("gwords", 8, False), ("lwords", 8, False),  # CONV: output words per group, last group
    ("pad", 16, False),  # the word of zero codes in the input's lanes (padding)
    ("org", 22, True),  # CONV/pools: x_addr - pt * row - pl * xcw (word of tap (0, 0) of pixel 0)
    ("srow", 22, False), ("scw", 16, False),  # sh * row, sw * xcw
)

BITS = sum(b for _, b, _ in FIELDS)
WORDS = -(-BITS // WORD_BITS)

LAYOUT = data.StructLayout({name: (signed(b) if s else unsigned(b)) for name, b, s in FIELDS})


@dataclass(frozen=True)
class Instr:
    """One instruction (see the module docstring for the fields' meaning)."""

    op: int = Op.END
    mode: int = Mode.B8
    x2_mode: int = Mode.B8
    y_mode: int = Mode.B8
    flags: int = 0
    h: int = 1
    w: int = 1
    c: int = 1
    oh: int = 1
    ow: int = 1
    oc: int = 1
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    pt: int = 0
    pl: int = 0
    x_addr: int = 0
    x2_addr: int = 0
    y_addr: int = 0
    w_addr: int = 0
    p_addr: int = 0
    lo: int = 0
    hi: int = 0
    shift: int = 0
    align: int = 0
    align2: int = 0
    rc: int = 0
    rm: int = 0
    rk: int = 0
    rbig: int = 0
    xcw: int = 0
    x2cw: int = 0
    ycw: int = 0
    row: int = 0
    tapw: int = 0
    k: int = 0
    groups: int = 0
    gsz: int = 0
    fold: int = 1
    gwords: int = 0
    lwords: int = 0
    pad: int = 0
    org: int = 0
    srow: int = 0
    scw: int = 0

    def __post_init__(self) -> None:
        for name, bits, signed_ in FIELDS:
            v = getattr(self, name)
            lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed_
                      else (0, (1 << bits) - 1))
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ShapeError(f"instruction field {name} = {v!r} does not fit {bits} "
                                 f"{'signed ' if signed_ else ''}bits ({lo}..{hi})")

    @property
    def x_lanes(self) -> int:
        return Mode(self.mode).lanes

    @property
    def y_lanes(self) -> int:
        return Mode(self.y_mode).lanes

    def has(self, flag: Flag) -> bool:
        return bool(self.flags & flag)


assert {f.name for f in fields(Instr)} == {name for name, _, _ in FIELDS}


def encode(instr: Instr) -> list[int]:
    """The instruction's `WORDS` memory words."""
    value, pos = 0, 0
    for name, bits, _ in FIELDS:
        value |= (getattr(instr, name) & ((1 << bits) - 1)) << pos
        pos += bits
    return [(value >> (WORD_BITS * k)) & 0xFFFF for k in range(WORDS)]


def decode(words) -> Instr:
    """`encode`'s inverse."""
    words = [int(w) for w in words]
    if len(words) != WORDS:
        raise ShapeError(f"an instruction is {WORDS} words, not {len(words)}")
    value = sum(w << (WORD_BITS * k) for k, w in enumerate(words))
    kw, pos = {}, 0
    for name, bits, signed_ in FIELDS:
        v = (value >> pos) & ((1 << bits) - 1)
        if signed_ and v >> (bits - 1):
            v -= 1 << bits
        kw[name] = v
        pos += bits
    return Instr(**kw)
