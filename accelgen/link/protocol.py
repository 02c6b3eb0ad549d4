"""The host link's wire format, shared by the device (`accelgen.link.hostlink`) and the host
driver (`accelgen.host`).

Frames
------
Both directions use the same frame::

    0xA5 | seq (u8) | cmd (u8) | len (u16 LE) | payload (len bytes) | crc (u16 LE)

``crc`` is CRC-16/CCITT-FALSE (`accelgen.link.crc`) over ``seq`` through the payload's last
byte. A response carries its request's ``seq`` and ``cmd | 0x80``, or ``cmd = 0xFF`` for an
error, whose payload is ``error code (u8) | the request's cmd (u8)``. Bytes outside a frame that
are not 0xA5 are skipped. Every integer is little-endian; ``u32`` fields are four bytes.

Commands (request payload -> response payload)
----------------------------------------------
* ``PING`` 0x01: empty -> ``b"ACCG"`` and the protocol version (u8).
* ``INFO`` 0x02: empty -> `DeviceInfo` (`INFO_FORMAT`, 28 bytes): version u8; input height,
  width, channels u16; input lanes, code bits, signed, bytes per code u8; number of logits
  u16; bytes per logit, logit signed, class bits u8; weight image bytes, clock Hz, design hash
  u32 (the hash is a build-time constant that names the design).
* ``LOAD_BEGIN`` 0x10: empty -> empty. Restarts the weight loader at the image's first byte.
* ``LOAD_DATA`` 0x11: the next chunk of the weight image (at most the bytes still missing) ->
  empty. Each byte goes to the accelerator's loader as it arrives. After an error (a damaged
  or truncated chunk may already have reached the loader) the device answers ``NOT_LOADED`` to
  every ``LOAD_DATA`` until the next ``LOAD_BEGIN``: the host restarts the image.
* ``INFER`` 0x20: one image's input codes in pixel-beat order (rows, columns, channels
  fastest), each in ``bytes per code`` bytes, two's complement; the length must be the image's
  -> class (u8), each logit in ``bytes per logit`` bytes (sign-extended when the logits are
  signed) in the accelerator's output order, the image's latency in cycles (u32). The device
  streams the codes into the accelerator as they arrive (it has no image buffer).
* ``COUNTERS`` 0x30: empty -> six u32 (`Counters`): images the accelerator completed, the
  latency of the last one, frames received with a good CRC, frames with a bad CRC, timeouts,
  receive errors (UART overruns and framing errors).
* ``LAYERS`` 0x31: empty -> per layer, `LAYER_RECORD_BYTES` (16) bytes: the last image's cycles,
  memory reads and memory writes (u32 each) from its start to the layer's end, and four zero
  bytes (`unpack_layers` turns them into each layer's own); the PE array's per-layer hardware
  counters. Empty for the streaming pipeline (its layers all run at once).

Errors (response cmd 0xFF)
--------------------------
``BAD_CRC`` 1, ``UNKNOWN_CMD`` 2, ``BAD_LENGTH`` 3 (a length that does not fit the command:
decided from the header, so the payload of such a frame is never used), ``TIMEOUT`` 4 (the
frame stopped for longer than the device's inter-byte timeout), ``NOT_LOADED`` 5 (``INFER``
before the weight image is complete; ``LOAD_DATA`` after a failed chunk).

Robustness rules
----------------
* One request at a time: the host waits for the response (or its own timeout) before sending
  the next frame.
* A damaged ``INFER`` (bad CRC) has already fed its codes to the accelerator: the device lets
  the image finish, discards its result and answers ``BAD_CRC``. A truncated one (timeout in the
  middle) is completed with zero codes, its result discarded, and answered ``TIMEOUT``. The
  pipeline never holds a partial image.
* Retries: the host resends a request with the *same* seq when the response is missing or
  damaged; the device answers a frame with the seq and cmd of the last good frame by resending
  its stored response without executing it again (an ``INFER`` is not run twice, a ``LOAD_DATA``
  chunk not loaded twice). ``PING``, ``INFO`` and ``COUNTERS`` are read-only: their repeated
  answer is regenerated (``COUNTERS`` then shows the current values). The host gives each new
  request a new seq (mod 256).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

from accelgen.errors import AccelgenError
from accelgen.link.crc import crc16

PROTOCOL_VERSION = 1
SYNC = 0xA5
MAGIC = b"ACCG"
RESPONSE = 0x80  # added to a request's cmd in its response
ERROR_CMD = 0xFF
HEADER_BYTES = 5  # sync, seq, cmd, len
MAX_PAYLOAD = 0xFFFF
INFO_FORMAT = "<BHHHBBBBHBBBIII"
COUNTERS_FORMAT = "<6I"
LAYER_RECORD_BYTES = 16  # cycles, reads, writes (u32 each) and four zero bytes
PING_PAYLOAD = MAGIC + bytes([PROTOCOL_VERSION])


class Cmd(IntEnum):
    PING = 0x01
    INFO = 0x02
    LOAD_BEGIN = 0x10
    LOAD_DATA = 0x11
    INFER = 0x20
    COUNTERS = 0x30
    LAYERS = 0x31


class ErrorCode(IntEnum):
    BAD_CRC = 1
    UNKNOWN_CMD = 2
    BAD_LENGTH = 3
    TIMEOUT = 4
    NOT_LOADED = 5


class LinkError(AccelgenError):
    """The host link failed: no valid response, a damaged frame, or a device that reports an
    error."""


class DeviceError(LinkError):
    """The device answered with an error frame (`code`) to command `cmd`."""

    def __init__(self, code: int, cmd: int, message: str | None = None) -> None:
        self.code = code
        self.cmd = cmd
        text = message or (
            f"the device answered {error_name(code)} to {cmd_name(cmd)}"
        )
        super().__init__(text)


def cmd_name(cmd: int) -> str:
    try:
        return Cmd(cmd).name
    except ValueError:
        return f"command 0x{cmd:02X}"


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error {code}"


@dataclass(frozen=True)
class Frame:
    """One decoded frame (request or response)."""

    seq: int
    cmd: int
    payload: bytes

    @property
    def is_error(self) -> bool:
        return self.cmd == ERROR_CMD

    @property
    def error(self) -> int | None:
        """The error code of an error frame (None otherwise)."""
        return self.payload[0] if self.is_error and self.payload else None

    @property
    def error_cmd(self) -> int | None:
        """The request's cmd an error frame answers (None otherwise)."""
        return self.payload[1] if self.is_error and len(self.payload) > 1 else None

    def encode(self) -> bytes:
        return encode_frame(self.seq, self.cmd, self.payload)


def encode_frame(seq: int, cmd: int, payload: bytes = b"") -> bytes:
    """The bytes of a frame (module docstring)."""
    if not 0 <= seq <= 0xFF or not 0 <= cmd <= 0xFF:
        raise LinkError(f"seq {seq!r} and cmd {cmd!r} must be bytes")
    if len(payload) > MAX_PAYLOAD:
        raise LinkError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte frame")
    body = bytes([seq, cmd]) + struct.pack("<H", len(payload)) + bytes(payload)
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


def encode_error(seq: int, code: int, cmd: int) -> bytes:
    return encode_frame(seq, ERROR_CMD, bytes([code, cmd]))


class FrameDecoder:
    """Incremental decoder: `feed` bytes, get complete frames.

    Bytes outside a frame that are not `SYNC` are skipped (counted in `skipped`). A frame whose
    CRC does not match is not returned; it is counted in `bad_crc` and noted in `last_bad`
    (its header fields), and decoding resumes after it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0
        self.bad_crc = 0
        self.last_bad: tuple[int, int, int] | None = None  # seq, cmd, len of a damaged frame

    @property
    def need(self) -> int:
        """Bytes still missing before the next frame can be complete (at least 1)."""
        if not self._buf:
            return HEADER_BYTES + 2
        if len(self._buf) < HEADER_BYTES:
            return HEADER_BYTES + 2 - len(self._buf)
        length = self._buf[3] | self._buf[4] << 8
        return max(1, HEADER_BYTES + length + 2 - len(self._buf))

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                break
            if start:
                self.skipped += start
                del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                break
            length = self._buf[3] | self._buf[4] << 8
            end = HEADER_BYTES + length + 2
            if len(self._buf) < end:
                break
            body = bytes(self._buf[1:HEADER_BYTES + length])
            got = self._buf[end - 2] | self._buf[end - 1] << 8
            if crc16(body) == got:
                frames.append(Frame(body[0], body[1], body[4:]))
                del self._buf[:end]
            else:
                self.bad_crc += 1
                self.last_bad = (body[0], body[1], length)
                # resynchronise on the next SYNC after this one: the length may be damaged
                del self._buf[:1]
        return frames


def decode_frame(data: bytes) -> Frame:
    """Exactly one frame from `data` (raises `LinkError` otherwise)."""
    dec = FrameDecoder()
    frames = dec.feed(data)
    if len(frames) != 1 or dec.bad_crc or dec.need != HEADER_BYTES + 2:
        raise LinkError(f"{len(data)} bytes are not one valid frame ({bytes(data).hex()})")
    return frames[0]


@dataclass(frozen=True)
class DeviceInfo:
    """The INFO response: what the host needs to encode inputs and decode results."""

    version: int
    height: int
    width: int
    channels: int
    lanes: int
    bits: int
    signed: bool
    bytes_per_code: int
    logits: int
    bytes_per_logit: int
    logit_signed: bool
    cls_bits: int
    load_bytes: int
    clock_hz: int
    design_hash: int

    def pack(self) -> bytes:
        return struct.pack(INFO_FORMAT, *(int(getattr(self, f.name)) for f in fields(self)))

    @classmethod
    def unpack(cls, payload: bytes) -> DeviceInfo:
        if len(payload) != struct.calcsize(INFO_FORMAT):
            raise LinkError(
                f"INFO payload of {len(payload)} bytes, expected {struct.calcsize(INFO_FORMAT)}"
            )
        values = list(struct.unpack(INFO_FORMAT, payload))
        kinds = [f.type for f in fields(cls)]
        return cls(*(bool(v) if k in (bool, "bool") else v
                     for v, k in zip(values, kinds, strict=True)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * self.channels * self.bytes_per_code

    @property
    def infer_response_bytes(self) -> int:
        return 1 + self.logits * self.bytes_per_logit + 4

    @property
    def code_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


@dataclass(frozen=True)
class Counters:
    """The COUNTERS response."""

    images: int
    last_latency: int
    frames_ok: int
    crc_errors: int
    timeouts: int
    rx_errors: int

    def pack(self) -> bytes:
        return struct.pack(COUNTERS_FORMAT, *(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def unpack(cls, payload: bytes) -> Counters:
        if len(payload) != struct.calcsize(COUNTERS_FORMAT):
            raise LinkError(f"COUNTERS payload of {len(payload)} bytes, expected 24")
        return cls(*struct.unpack(COUNTERS_FORMAT, payload))


def unpack_layers(payload: bytes) -> np.ndarray:
    """The LAYERS response -> (layers, 3) int64: each layer's own cycles, reads and writes
    (the records are the run's totals at each layer's end: consecutive differences)."""
    if len(payload) % LAYER_RECORD_BYTES:
        raise LinkError(f"LAYERS payload of {len(payload)} bytes is not whole "
                        f"{LAYER_RECORD_BYTES}-byte records")
    rec = np.frombuffer(payload, "<u4").reshape(-1, LAYER_RECORD_BYTES // 4)
    total = rec[:, :3].astype(np.int64)
    return np.diff(total, axis=0, prepend=np.zeros((1, 3), np.int64)) % (1 << 32)


def bytes_for(bits: int) -> int:
    """Bytes that hold a `bits`-bit code."""
    return (bits + 7) // 8


def encode_codes(codes: np.ndarray, info: DeviceInfo) -> bytes:
    """An INFER payload: one image's integer codes (H, W, C), checked against `info`."""
    x = np.asarray(codes)
    if x.shape != info.shape:
        raise LinkError(f"image of shape {x.shape}, the device takes {info.shape} (H, W, C)")
    if not np.issubdtype(x.dtype, np.integer):
        raise LinkError(f"input codes must be integers, not {x.dtype}")
    lo, hi = info.code_range
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise LinkError(
            f"input codes span [{int(x.min())}, {int(x.max())}], outside the device's "
            f"{'signed' if info.signed else 'unsigned'} {info.bits}-bit range [{lo}, {hi}]"
        )
    flat = x.reshape(-1).astype(np.int64).astype("<u8")  # two's complement, little-endian
    return flat.view(np.uint8).reshape(-1, 8)[:, : info.bytes_per_code].tobytes()


def decode_infer(payload: bytes, info: DeviceInfo) -> tuple[int, np.ndarray, int]:
    """An INFER response -> (class, logits in output order (int64), latency cycles)."""
    if len(payload) != info.infer_response_bytes:
        raise LinkError(
            f"INFER response of {len(payload)} bytes, expected {info.infer_response_bytes}"
        )
    b = info.bytes_per_logit
    raw = payload[1 : 1 + info.logits * b]
    logits = np.array([int.from_bytes(raw[k * b : (k + 1) * b], "little",
                                      signed=info.logit_signed)
                       for k in range(info.logits)], dtype=np.int64)
    (cycles,) = struct.unpack("<I", payload[-4:])
    return payload[0], logits, cycles
