"""The requantizer: accumulator -> output code, exactly as `accelgen.golden.requantize`.

``y = clamp(shift(acc + bias, s), lo, hi)`` where ``shift(v, s)`` is ``(v + 2**(s-1)) >> s``
(round half up) for ``s > 0``, ``v`` for ``s == 0`` and ``v << -s`` for ``s < 0``. A layer's
per-channel shifts take few distinct values; the hardware computes the candidate for each
distinct shift (constant shifts are wiring plus one adder) and selects by a per-channel index, so
no barrel shifter is built. Fused ReLU / ReLU6 / Clip are the clamp bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth import Cat, Const, Mux, Shape, Value, signed


def shift_round(v: Value, s: int) -> Value:
    """One constant shift with round half up (arithmetic; `v` signed)."""
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    if s < 0:
        return v << (-s)
    return v


def clamp(v: Value, lo: int, hi: int) -> Value:
    return Mux(v < lo, lo, Mux(v > hi, hi, v))


def requantize(v: Value, shifts: Sequence[int], select: Value | None, lo: int, hi: int,
               out_shape: Shape) -> Value:
    """Requantize signed `v` by ``shifts[select]`` (or the only shift), clamp to [lo, hi]."""
    if not v.shape().signed:
        v = Cat(v, Const(0, 1)).as_signed()  # zero-extend, then read as signed
    candidates = [shift_round(v, s) for s in shifts]
    value = candidates[0]
    if len(candidates) > 1:
        assert select is not None
        for k in range(1, len(candidates)):
            value = Mux(select == k, candidates[k], value)
    return _narrow(clamp(value, lo, hi), out_shape)


def _narrow(v: Value, shape: Shape) -> Value:
    shape = Shape.cast(shape)
    bits = v[: shape.width]
    return bits.as_signed() if shape.signed else bits.as_unsigned()


def select_width(shifts: Sequence[int]) -> int:
    return max(1, (len(shifts) - 1).bit_length())


def acc_shape(bits: int) -> Shape:
    return signed(bits)

