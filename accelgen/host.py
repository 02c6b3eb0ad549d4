"""The host driver of the link (`accelgen.link.protocol`): one `Device` API over a serial port
or over Amaranth's simulator of the same hardware.

`Device` sends one request at a time and waits for its response. A missing or damaged response,
or a device that reports BAD_CRC or TIMEOUT (the request was damaged on the way), makes it
resend the *same* frame with the same seq, up to `retries` times: the device recognises a
repeat of a request it has already executed and resends the stored response instead of running
it again. After the last attempt a `LinkError` names the command and what went wrong; an
error the device reports about the request itself (UNKNOWN_CMD, BAD_LENGTH, NOT_LOADED) raises
`DeviceError` at once. Before its first request that changes the device's state the driver
sends a PING, so a seq left over from an earlier session cannot be mistaken for a repeat.

Transports provide ``write(data)``, ``read(n, timeout) -> bytes`` (at most `n` bytes; fewer
when `timeout` seconds pass first), ``reset_input()`` (drop received bytes), ``now()``
(seconds, on the transport's own clock) and ``close()``:

* `SerialTransport`: a serial port (pyserial, imported when used).
* `SimTransport`: a `LinkedAccelerator` in Amaranth's Python simulator, advanced only while the
  host waits in ``read`` (or calls ``run``). Its time is simulated time: ``timeout`` seconds are
  ``timeout * clock_hz`` clock cycles, so a stalled device costs a bounded number of simulated
  cycles, never a hang. Tests can also queue raw line levels and pauses.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from accelgen.link.protocol import (
    MAX_PAYLOAD,
    PING_PAYLOAD,
    PROTOCOL_VERSION,
    RESPONSE,
    Cmd,
    Counters,
    DeviceError,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    LinkError,
    cmd_name,
    decode_infer,
    encode_codes,
    encode_frame,
    error_name,
    unpack_layers,
)
from accelgen.link.uart import check_divisor

__all__ = [
    "Counters",
    "Device",
    "DeviceError",
    "DeviceInfo",
    "InferResult",
    "LinkError",
    "LinkRunResult",
    "SerialTransport",
    "SimTransport",
    "Transport",
    "run_images",
]

log = logging.getLogger(__name__)

TRANSIENT = (ErrorCode.BAD_CRC, ErrorCode.TIMEOUT)
READ_ONLY = (Cmd.PING, Cmd.INFO, Cmd.COUNTERS)


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def read(self, n: int, timeout: float) -> bytes: ...

    def reset_input(self) -> None: ...

    def now(self) -> float: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InferResult:
    """One image's result: logits (int64, the accelerator's output order), class, latency."""

    logits: np.ndarray
    cls: int
    cycles: int


class Device:
    """The accelerator at the other end of `transport` (module docstring).

    `timeout_s` bounds the wait for each response (on the transport's clock); `retries` is the
    number of resends after the first attempt; `settle_s` is how long the line must stay quiet
    before a resend (stale bytes of a damaged response are dropped).
    """

    def __init__(self, transport: Transport, *, timeout_s: float = 1.0, retries: int = 3,
                 settle_s: float | None = None) -> None:
        if timeout_s <= 0:
            raise LinkError(f"timeout_s {timeout_s!r} must be positive")
        if retries < 0:
            raise LinkError(f"retries {retries!r} must be at least 0")
        self.transport = transport
        self.timeout_s = timeout_s
        self.retries = retries
        self.settle_s = timeout_s / 10 if settle_s is None else settle_s
        self._seq = 0
        self._synced = False
        self._info: DeviceInfo | None = None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # -- frames -------------------------------------------------------------------------------

    def next_seq(self) -> int:
        """A fresh seq for a new request."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return seq

    def send_frame(self, data: bytes) -> None:
        """Raw bytes onto the link (a frame, or anything else: tests use it)."""
        self.transport.write(bytes(data))

    def receive(self, seq: int, cmd: int, timeout_s: float | None = None) -> Frame:
        """The response to request (`seq`, `cmd`): its result or error frame. Frames for other
        requests are skipped; a damaged frame or no frame within the timeout raises
        `LinkError`."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        decoder = FrameDecoder()
        deadline = self.transport.now() + timeout_s
        while True:
            remaining = deadline - self.transport.now()
            if remaining <= 0:
                raise LinkError(f"no response to {cmd_name(cmd)} within {timeout_s:g} s")
            data = self.transport.read(decoder.need, remaining)
            if not data:
                raise LinkError(f"no response to {cmd_name(cmd)} within {timeout_s:g} s")
            for frame in decoder.feed(data):
                if frame.seq == seq and (frame.cmd == cmd | RESPONSE or (
                        frame.is_error and frame.error_cmd == cmd)):
                    return frame
                log.debug("skipping a frame for another request: seq %d cmd 0x%02X",
                          frame.seq, frame.cmd)
            if decoder.bad_crc:
                raise LinkError(f"a damaged response to {cmd_name(cmd)} (bad CRC)")

    def _settle(self) -> None:
        """Drop whatever is still arriving until the line is quiet for `settle_s`."""
        self.transport.reset_input()
        if self.settle_s <= 0:
            return
        limit = self.transport.now() + 10 * self.timeout_s
        while self.transport.read(4096, self.settle_s) and self.transport.now() < limit:
            pass
        self.transport.reset_input()

    def exchange(self, cmd: int, payload: bytes = b"") -> Frame:
        """Send a request, resending it with the same seq until a usable response comes.

        Returns the response frame, which may be an error frame the device meant (UNKNOWN_CMD,
        BAD_LENGTH, NOT_LOADED); raises `LinkError` when every attempt failed."""
        if not self._synced and cmd not in READ_ONLY:
            self.ping()
        seq = self.next_seq()
        frame = encode_frame(seq, cmd, payload)
        problems: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                log.info("%s: attempt %d after: %s", cmd_name(cmd), attempt + 1, problems[-1])
                self._settle()
            else:
                self.transport.reset_input()
            self.transport.write(frame)
            try:
                response = self.receive(seq, cmd)
            except LinkError as err:
                problems.append(str(err))
                continue
            if response.is_error and response.error in TRANSIENT:
                problems.append(f"the device answered {error_name(response.error)}")
                continue
            self._synced = True
            return response
        raise LinkError(
            f"{cmd_name(cmd)} failed after {self.retries + 1} attempts; last problem: "
            f"{problems[-1]}"
        )

    def request(self, cmd: int, payload: bytes = b"") -> bytes:
        """The response payload of a successful request; `DeviceError` for an error frame."""
        response = self.exchange(cmd, payload)
        if response.is_error:
            raise DeviceError(response.error if response.error is not None else 0, cmd)
        return response.payload

    # -- commands -----------------------------------------------------------------------------

    def ping(self) -> int:
        """Checks the device answers as an accelgen link; returns its protocol version."""
        payload = self.request(Cmd.PING)
        if payload[:4] != PING_PAYLOAD[:4] or len(payload) != len(PING_PAYLOAD):
            raise LinkError(f"PING answered {payload!r}, not an accelgen device")
        if payload[4] != PROTOCOL_VERSION:
            raise LinkError(
                f"the device speaks link protocol {payload[4]}, this host {PROTOCOL_VERSION}"
            )
        return payload[4]

    def info(self, *, refresh: bool = False) -> DeviceInfo:
        """The design's formats and sizes (cached after the first call)."""
        if self._info is None or refresh:
            self._info = DeviceInfo.unpack(self.request(Cmd.INFO))
        return self._info

    def counters(self) -> Counters:
        return Counters.unpack(self.request(Cmd.COUNTERS))

    def layer_counters(self) -> np.ndarray:
        """The last image's (cycles, memory reads, memory writes) per layer, (layers, 3): the
        PE array's hardware counters (none for the streaming pipeline)."""
        return unpack_layers(self.request(Cmd.LAYERS))

    def load_weights(self, image: bytes, chunk: int = 256) -> None:
        """Send the weight image (LOAD_BEGIN, then LOAD_DATA chunks), starting over from
        LOAD_BEGIN when a chunk fails, up to `retries` times."""
        if not 1 <= chunk <= MAX_PAYLOAD:
            raise LinkError(f"chunk {chunk!r} must be in 1..{MAX_PAYLOAD}")
        info = self.info()
        if len(image) != info.load_bytes:
            raise LinkError(
                f"weight image of {len(image)} bytes; this design loads {info.load_bytes}"
            )
        problems: list[str] = []
        for _ in range(self.retries + 1):
            try:
                self.request(Cmd.LOAD_BEGIN)
                for offset in range(0, len(image), chunk):
                    self.request(Cmd.LOAD_DATA, bytes(image[offset : offset + chunk]))
            except LinkError as err:
                problems.append(str(err))
                log.info("weight load restarts after: %s", err)
                continue
            return
        raise LinkError(
            f"loading the {len(image)}-byte weight image failed {len(problems)} times; "
            f"last problem: {problems[-1]}"
        )

    def infer(self, codes: np.ndarray) -> InferResult:
        """One image's integer input codes (H, W, C) -> logits, class and latency."""
        info = self.info()
        payload = self.request(Cmd.INFER, encode_codes(codes, info))
        cls, logits, cycles = decode_infer(payload, info)
        return InferResult(logits, cls, cycles)


# -- transports -------------------------------------------------------------------------------


class SerialTransport:
    """A serial port through pyserial (``pip install pyserial``)."""

    def __init__(self, port: str, baud: int) -> None:
        try:
            import serial
        except ImportError:
            raise LinkError(
                "the serial transport needs pyserial: pip install pyserial"
            ) from None
        try:
            self._port = serial.Serial(port, baud, timeout=0)
        except (serial.SerialException, ValueError) as err:
            raise LinkError(f"cannot open serial port {port!r} at {baud!r} baud: {err}") from None

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def read(self, n: int, timeout: float) -> bytes:
        self._port.timeout = max(0.0, timeout)
        return bytes(self._port.read(n))

    def reset_input(self) -> None:
        self._port.reset_input_buffer()

    def now(self) -> float:
        return time.monotonic()

    def close(self) -> None:
        self._port.close()


def uart_levels(byte: int, stop: int = 1) -> list[int]:
    """The line levels of one 8N1 character: start bit, data least significant first, stop."""
    return [0, *((byte >> k) & 1 for k in range(8)), stop]


class SimTransport:
    """A `LinkedAccelerator` in Amaranth's Python simulator (module docstring).

    `divisor` (default: the design's) is the host's bit time in cycles, `clock_hz` (default:
    the design's) converts timeouts to cycles. ``write`` queues bytes; ``write_bits`` and
    ``pause`` queue raw line levels; queued levels go onto ``rx`` as the simulation advances.
    """

    def __init__(self, linked, divisor: int | None = None, *,
                 clock_hz: float | None = None) -> None:
        from amaranth.sim import Simulator

        self.linked = linked
        self.divisor = check_divisor(linked.divisor if divisor is None else divisor)
        self.clock_hz = float(linked.clock_hz if clock_hz is None else clock_hz)
        if self.clock_hz <= 0:
            raise LinkError(f"clock_hz {clock_hz!r} must be positive")
        self.cycle = 0
        self._levels: deque[list[int]] = deque()  # [level, cycles left]
        self._received = bytearray()
        self._decoder = _LineDecoder(self.divisor)
        self.sim = Simulator(linked)
        self.sim.add_clock(1e-6)
        self.sim.add_testbench(self._bench, background=True)

    async def _bench(self, ctx) -> None:
        rx, tx = self.linked.rx, self.linked.tx
        level = 1
        ctx.set(rx, 1)
        while True:
            if self._levels:
                segment = self._levels[0]
                if segment[0] != level:
                    level = segment[0]
                    ctx.set(rx, level)
                segment[1] -= 1
                if segment[1] <= 0:
                    self._levels.popleft()
            elif level != 1:
                level = 1
                ctx.set(rx, 1)
            await ctx.tick()
            self.cycle += 1
            byte = self._decoder.step(ctx.get(tx))
            if byte is not None:
                self._received.append(byte)

    # -- queueing line levels -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        for byte in bytes(data):
            self.write_bits(uart_levels(byte))

    def write_bits(self, levels: Iterable[int], cycles_per_bit: int | None = None) -> None:
        """Queue raw line levels, each held `cycles_per_bit` cycles (default: the divisor)."""
        hold = self.divisor if cycles_per_bit is None else cycles_per_bit
        for level in levels:
            self._levels.append([int(bool(level)), hold])

    def pause(self, cycles: int) -> None:
        """Queue an idle (high) line for `cycles` cycles."""
        if cycles > 0:
            self._levels.append([1, cycles])

    @property
    def pending_cycles(self) -> int:
        return sum(s[1] for s in self._levels)

    # -- the transport interface ----------------------------------------------------------------

    def run(self, cycles: int) -> None:
        """Advance the simulation by `cycles` clock cycles."""
        end = self.cycle + cycles
        while self.cycle < end:
            self.sim.advance()

    def read(self, n: int, timeout: float) -> bytes:
        end = self.cycle + max(1, round(timeout * self.clock_hz))
        while len(self._received) < n and self.cycle < end:
            self.sim.advance()
        out = bytes(self._received[:n])
        del self._received[:n]
        return out

    def reset_input(self) -> None:
        self._received.clear()

    def now(self) -> float:
        return self.cycle / self.clock_hz

    def close(self) -> None:
        pass


class _LineDecoder:
    """The host's UART receiver, one line sample per clock cycle (mid-bit sampling)."""

    def __init__(self, divisor: int) -> None:
        self.divisor = divisor
        self.state = "idle"
        self.count = 0
        self.bits: list[int] = []
        self.framing_errors = 0

    def step(self, level: int) -> int | None:
        if self.state == "idle":
            if not level:
                self.state, self.count = "start", self.divisor // 2
            return None
        self.count -= 1
        if self.count > 0:
            return None
        if self.state == "start":
            if level:
                self.state = "idle"
            else:
                self.state, self.count, self.bits = "data", self.divisor, []
            return None
        if self.state == "data":
            self.bits.append(level)
            self.count = self.divisor
            if len(self.bits) == 8:
                self.state = "stop"
            return None
        self.state = "idle"
        if not level:
            self.framing_errors += 1
            return None
        return sum(b << k for k, b in enumerate(self.bits))


# -- whole runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkRunResult:
    logits: np.ndarray  # (N, K) integer codes in the model's output order
    classes: np.ndarray  # (N,) the device's class, as an index into the model's order
    cycles: np.ndarray  # (N,) each image's latency counter


def run_images(device: Device, qgraph_or_acc, images: np.ndarray | Sequence) -> LinkRunResult:
    """Integer IR images (N, H, W, C) through the device, one at a time (no quantization:
    the codes are sent as they are, like `accelgen.sim.simulate`). The logits come back in the
    model's output order, so they compare with `golden.logits` directly."""
    plan = getattr(qgraph_or_acc, "plan", None)
    qg = plan.qgraph if plan is not None else qgraph_or_acc
    order = np.asarray(qg.outputs[0].layout).reshape(-1)
    inverse = np.argsort(order)
    x = np.asarray(images)
    if x.ndim != 4:
        raise LinkError(f"images of shape {x.shape}: expected (N, H, W, C) integer codes")
    logits, classes, cycles = [], [], []
    for image in x:
        r = device.infer(image)
        logits.append(r.logits[order])
        classes.append(int(inverse[r.cls]) if r.cls < len(inverse) else r.cls)
        cycles.append(r.cycles)
    return LinkRunResult(np.array(logits, dtype=np.int64).reshape(len(x), -1),
                         np.array(classes, dtype=np.int64), np.array(cycles, dtype=np.int64))
