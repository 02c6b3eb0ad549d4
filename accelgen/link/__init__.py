"""The host link: a UART, a framed protocol with a CRC, and the engine that lets a host load
weights and run images on the accelerator (`accelgen.host` is the host's side)."""

from accelgen.link.crc import crc16, crc16_next
from accelgen.link.hostlink import HostLink, LinkedAccelerator
from accelgen.link.protocol import Cmd, ErrorCode, LinkError
from accelgen.link.uart import UartRx, UartTx, uart_divisor

__all__ = [
    "Cmd",
    "ErrorCode",
    "HostLink",
    "LinkError",
    "LinkedAccelerator",
    "UartRx",
    "UartTx",
    "crc16",
    "crc16_next",
    "uart_divisor",
]
