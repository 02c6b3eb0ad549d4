"""The requantizer: accumulator -> output code, exactly as `accelgen.golden.requantize`.

``y = clamp(shift(acc + bias, s), lo, hi)`` where ``shift(v, s)`` is ``(v + 2**(s-1)) >> s``
(round half up) for ``s > 0``, ``v`` for ``s == 0`` and ``v << -s`` for ``s < 0``. The rounding
term is a constant per channel, so it is added together with the bias (`rounded_bias`): what is
left is a plain arithmetic shift and the clamp (`shift_clamp`).

`shift_clamp` never builds the full-width shifted values: with ``t`` bits enough for
``[lo, hi]`` as a signed number, it takes bits ``[s, s + t)`` of ``u`` for each of the layer's
few distinct shifts (wiring), selects one by the per-channel index, and flags *overflow* —
``u >> s`` outside the ``t``-bit range — from whether ``u``'s bits above ``s + t - 1`` all equal
its sign. Overflow saturates by the sign; otherwise the ``t``-bit value is clamped to
``[lo, hi]`` (constant comparisons on ``t`` bits). Fused ReLU / ReLU6 / Clip are the clamp
bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth import Array, Cat, Const, Mux, Shape, Value, signed


def rounded_bias(bias: int, shift: int) -> int:
    """The bias with the round-half-up term of a right shift by `shift` folded in."""
    return int(bias) + ((1 << (shift - 1)) if shift > 0 else 0)


def signed_bits(lo: int, hi: int) -> int:
    """Width of the smallest signed shape holding ``[lo, hi]``."""
    return max(int(hi).bit_length(), (-int(lo) - 1).bit_length() if lo < 0 else 0) + 1


def shift_select(u: Value, shifts: Sequence[int], select: Value | None, lo: int,
                 hi: int) -> tuple[Value, Value, Value]:
    """The first half of `shift_clamp`: ``(t, overflow, sign)`` — ``u >> shifts[select]`` in
    `signed_bits(lo, hi)` bits, whether it did not fit them, and ``u``'s sign."""
    if not u.shape().signed:
        u = Cat(u, Const(0, 1)).as_signed()  # zero-extend, then read as signed
    width = len(u)
    t_bits = signed_bits(lo, hi)

    def bit(i: int) -> Value:
        if i < 0:
            return Const(0, 1)
        return u[min(i, width - 1)]

    candidates, overflows = [], []
    for s in shifts:
        candidates.append(Cat(*(bit(s + j) for j in range(t_bits))).as_signed())
        top = s + t_bits - 1  # u >> s fits t bits when u[top:] all equal the sign
        if top >= width - 1:
            overflows.append(Const(0, 1))
        elif top < 0:  # a left shift by t_bits or more: only zero still fits
            overflows.append(u != 0)
        else:
            upper = u[max(top, 0):]
            overflows.append((upper != 0) & (upper != (1 << len(upper)) - 1))
    t, ovf = candidates[0], overflows[0]
    if len(shifts) > 1:  # a balanced multiplexer tree (not a priority chain)
        assert select is not None
        t = Array(candidates)[select]
        ovf = Array(overflows)[select]
    return t, ovf, u[width - 1]


def clamp_select(t: Value, ovf: Value, sign: Value, lo: int, hi: int,
                 out_shape: Shape) -> Value:
    """The second half of `shift_clamp`: saturate on overflow by the sign, else clamp `t`."""
    t_bits = signed_bits(lo, hi)
    inside = t
    if lo > -(1 << (t_bits - 1)):
        inside = Mux(t < lo, lo, inside)
    if hi < (1 << (t_bits - 1)) - 1:
        inside = Mux(t > hi, hi, inside)
    return _narrow(Mux(ovf, Mux(sign, lo, hi), inside), out_shape)


def shift_clamp(u: Value, shifts: Sequence[int], select: Value | None, lo: int, hi: int,
                out_shape: Shape) -> Value:
    """``clamp(u >> shifts[select], lo, hi)`` (``u << -s`` for a negative shift) for signed `u`;
    `select` may be None when there is one shift."""
    t, ovf, sign = shift_select(u, shifts, select, lo, hi)
    return clamp_select(t, ovf, sign, lo, hi, out_shape)


def requantize(v: Value, shifts: Sequence[int], select: Value | None, lo: int, hi: int,
               out_shape: Shape) -> Value:
    """Requantize signed `v` by one constant shift (round half up) and clamp to [lo, hi]."""
    if len(shifts) != 1:
        raise ValueError("requantize takes one shift; per-channel shifts use shift_clamp")
    s = shifts[0]
    if not v.shape().signed:
        v = Cat(v, Const(0, 1)).as_signed()
    u = v + (1 << (s - 1)) if s > 0 else v
    return shift_clamp(u, [s], None, lo, hi, out_shape)


def _narrow(v: Value, shape: Shape) -> Value:
    shape = Shape.cast(shape)
    bits = v[: shape.width]
    return bits.as_signed() if shape.signed else bits.as_unsigned()


def select_width(shifts: Sequence[int]) -> int:
    return max(1, (len(shifts) - 1).bit_length())


def acc_shape(bits: int) -> Shape:
    return signed(bits)
