"""CRC-16/CCITT-FALSE, the host link's frame check, in Python and as Amaranth logic.

Parameters: polynomial 0x1021, initial value 0xFFFF, bits taken most significant first (no
reflection of input or output), no final XOR. The check value of ``b"123456789"`` is 0x29B1.

`crc16` is the host's (and the tests') reference; `crc16_next` is the same step for one byte as
a flat XOR network (each output bit the parity of a fixed subset of the 16 CRC bits and 8 data
bits), so the device updates its CRC by one byte per clock cycle.
"""

from __future__ import annotations

from amaranth import Cat, Value

POLY = 0x1021
INIT = 0xFFFF
CHECK = 0x29B1  # crc16(b"123456789")


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _table()


def crc16(data: bytes | bytearray | memoryview, crc: int = INIT) -> int:
    """The CRC of `data`, continuing from `crc` (pass a previous result to chain chunks)."""
    if not 0 <= crc <= 0xFFFF:
        raise ValueError(f"CRC state {crc!r} is not a 16-bit value")
    for byte in bytes(data):
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc


def _next_masks() -> tuple[int, ...]:
    """For each bit of the next CRC, the inputs it is the parity of: bits 0-15 of the mask
    select bits of the current CRC, bits 16-23 the bits of the byte."""
    state = [1 << k for k in range(16)]
    for i in range(7, -1, -1):  # the byte's most significant bit first
        feedback = state[15] ^ (1 << (16 + i))
        shifted = [0, *state[:15]]
        state = [s ^ (feedback if (POLY >> k) & 1 else 0) for k, s in enumerate(shifted)]
    return tuple(state)


_MASKS = _next_masks()


def crc16_next(crc: Value, byte: Value) -> Value:
    """The CRC after `byte` (8 bits) from state `crc` (16 bits), combinationally (16 XOR trees
    of at most 24 inputs)."""
    crc, byte = Value.cast(crc), Value.cast(byte)
    if crc.shape().width != 16 or byte.shape().width != 8:
        raise ValueError(
            f"crc16_next takes a 16-bit CRC and an 8-bit byte, not {crc.shape()!r} and "
            f"{byte.shape()!r}"
        )
    inputs = Cat(crc, byte)
    bits = []
    for mask in _MASKS:
        taps = [inputs[j] for j in range(24) if (mask >> j) & 1]
        bits.append(Cat(*taps).xor())
    return Cat(*bits)
