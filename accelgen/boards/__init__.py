"""The board registry: what `--board NAME` means.

Each `Board` names its amaranth-boards platform, the device facts the scheduler plans with
(`accelgen.devices`), the board clock and how it reaches the PLL, the UART the host link uses,
and how to program it. The aliases ``ice40``, ``ecp5`` and ``gowin`` name the default board of
each family (iCEBreaker, ULX3S 85F, Tang Nano 9K).

Boards without a USB serial bridge wired to the FPGA (UPduino 3, OrangeCrab) get a UART on
header pins (`Board.uart_pins`): connect a 3.3 V USB-serial adapter there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from accelgen.devices import DEVICES, Device
from accelgen.errors import UsageError

DEFAULT_BOARD = "ice40"
# the host link's default line rate: every bridge on the listed boards (FT2232H, FT231X,
# BL702, CH552) carries 1 Mbaud
DEFAULT_BAUD = 1_000_000


@dataclass(frozen=True)
class Board:
    """One board: platform, device, clock, host-link UART and programmer."""

    name: str
    title: str
    module: str  # amaranth_boards module
    platform_class: str
    device_name: str  # key of accelgen.devices.DEVICES
    clock: str  # the platform's clock resource
    clock_mhz: float
    pll_pad: bool = False  # iCE40: the clock pin is the PLL's own pad (SB_PLL40_PAD)
    uart: str = "uart"  # the platform's UART resource, or "" with `uart_pins`
    uart_pins: tuple[str, str] = ("", "")  # (rx, tx) connector pins "conn_name conn_num:pin"
    led: str = "led"  # a platform LED resource (rgb_led: its green channel)
    programmer: tuple[str, ...] = ()  # command prefix; the bitstream path is appended
    bitstream_ext: str = ".bin"
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def device(self) -> Device:
        return DEVICES[self.device_name]

    @property
    def family(self) -> str:
        return self.device.family

    def platform(self):
        """A fresh amaranth-boards platform object (with the header UART added if needed)."""
        try:
            module = importlib.import_module(f"amaranth_boards.{self.module}")
        except ImportError as err:
            raise UsageError(
                f"amaranth-boards has no module {self.module!r} for board {self.name!r} ({err}); "
                f"reinstall accelgen's dependencies (pip install -e .)"
            ) from None
        platform = getattr(module, self.platform_class)()
        if not self.uart:
            from amaranth.build import Attrs, Pins, Resource, Subsignal

            conn = _connector(platform)
            rx, tx = self.uart_pins
            platform.add_resources([Resource(
                "host_uart", 0,
                Subsignal("rx", Pins(rx, dir="i", conn=conn)),
                Subsignal("tx", Pins(tx, dir="o", conn=conn)),
                Attrs(IO_TYPE="LVCMOS33") if self.family == "ecp5" else Attrs(),
            )])
        return platform

    @property
    def uart_resource(self) -> str:
        return self.uart or "host_uart"


def _connector(platform) -> tuple[str, int]:
    return next(iter(platform.connectors))


BOARDS: dict[str, Board] = {b.name: b for b in (
    Board("icebreaker", "1BitSquared iCEBreaker", "icebreaker", "ICEBreakerPlatform",
          "iCE40UP5K", "clk12", 12.0, pll_pad=True, led="led_g",
          programmer=("iceprog",), aliases=("ice40",),
          notes="FT2232H: interface B is the UART"),
    Board("icesugar", "MuseLab iCESugar 1.5", "icesugar", "ICESugarPlatform", "iCE40UP5K",
          "clk12", 12.0, pll_pad=True, led="led_g", programmer=("icesprog",),
          notes="programs by copying the .bin to its USB drive, or icesprog"),
    Board("upduino3", "tinyVision UPduino 3.0/3.1", "upduino_v3", "UpduinoV3Platform",
          "iCE40UP5K", "clk12", 12.0, uart="", uart_pins=("2", "3"), led="rgb_led",
          programmer=("iceprog",),
          notes="close the OSC jumper (12 MHz on pin 20); UART on header J0 pins 2 (rx) "
                "and 3 (tx) through a USB-serial adapter"),
    Board("ulx3s-12f", "Radiona ULX3S 12F", "ulx3s", "ULX3S_12F_Platform", "LFE5U-12F",
          "clk25", 25.0, led="led",
          programmer=("openFPGALoader", "-b", "ulx3s"), bitstream_ext=".bit"),
    Board("ulx3s-25f", "Radiona ULX3S 25F", "ulx3s", "ULX3S_25F_Platform", "LFE5U-25F",
          "clk25", 25.0, led="led",
          programmer=("openFPGALoader", "-b", "ulx3s"), bitstream_ext=".bit"),
    Board("ulx3s-45f", "Radiona ULX3S 45F", "ulx3s", "ULX3S_45F_Platform", "LFE5U-45F",
          "clk25", 25.0, led="led",
          programmer=("openFPGALoader", "-b", "ulx3s"), bitstream_ext=".bit"),
    Board("ulx3s-85f", "Radiona ULX3S 85F", "ulx3s", "ULX3S_85F_Platform", "LFE5U-85F",
          "clk25", 25.0, led="led",
          programmer=("openFPGALoader", "-b", "ulx3s"), bitstream_ext=".bit",
          aliases=("ecp5",)),
    Board("orangecrab-25f", "Good Stuff Department OrangeCrab r0.2 25F", "orangecrab_r0_2",
          "OrangeCrabR0_2_25FPlatform", "LFE5U-25F", "clk", 48.0, uart="",
          uart_pins=("0", "1"), led="rgb_led", programmer=("dfu-util", "-D"),
          bitstream_ext=".bit",
          notes="UART on header pins 0 (rx) and 1 (tx) through a USB-serial adapter"),
    Board("orangecrab-85f", "Good Stuff Department OrangeCrab r0.2 85F", "orangecrab_r0_2",
          "OrangeCrabR0_2_85FPlatform", "LFE5U-85F", "clk", 48.0, uart="",
          uart_pins=("0", "1"), led="rgb_led", programmer=("dfu-util", "-D"),
          bitstream_ext=".bit",
          notes="UART on header pins 0 (rx) and 1 (tx) through a USB-serial adapter"),
    Board("tangnano9k", "Sipeed Tang Nano 9K", "tang_nano_9k", "TangNano9kPlatform",
          "GW1NR-9", "clk27", 27.0, led="led",
          programmer=("openFPGALoader", "-b", "tangnano9k"), bitstream_ext=".fs",
          aliases=("gowin",), notes="BL702 bridge: the second USB serial port is the UART"),
)}

ALIASES: dict[str, str] = {a: b.name for b in BOARDS.values() for a in b.aliases}


def board(name: str) -> Board:
    """The board called `name` (or an alias); a clear error listing the valid names."""
    key = ALIASES.get(name, name)
    if key not in BOARDS:
        valid = ", ".join([*ALIASES, *BOARDS])
        raise UsageError(f"unknown board {name!r}; valid boards: {valid}")
    return BOARDS[key]


def is_board(name: str) -> bool:
    return name in ALIASES or name in BOARDS
