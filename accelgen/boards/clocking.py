"""Clock generation: PLL settings for a wanted frequency, and the PLL primitives of each family.

`pll_settings(family, f_in, f_want)` searches the divider space of the family's PLL (the
data-sheet ranges below) for the output frequency closest to `f_want` *not above it* (a build
planned at 40 MHz must not be clocked at 40.5), preferring exact settings. `PllClock` is the
elaboratable that instantiates the PLL and drives the ``sync`` domain from its output, held in
reset until the PLL locks.

Data-sheet ranges (MHz):

* iCE40 SB_PLL40 (simple feedback): PFD = f_in / (DIVR+1) in 10..133; VCO = PFD * (DIVF+1) in
  533..1066; f_out = VCO / 2**DIVQ in 16..275, DIVQ 1..6; the loop filter range follows the PFD.
* ECP5 EHXPLLL (feedback from CLKOP): PFD = f_in / CLKI_DIV >= 3.125; f_out = f_in * CLKFB_DIV
  / CLKI_DIV; VCO = f_out * CLKOP_DIV in 400..800; f_out 3.125..400.
* Gowin rPLL (GW1NR-9C): PFD = f_in / (IDIV+1) in 3..400; f_out = f_in * (FBDIV+1) / (IDIV+1)
  in 3.125..600; VCO = f_out * ODIV in 400..1200, ODIV in {2, 4, 8, 16, ..., 128}.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import ClockSignal, Module, Signal
from amaranth.hdl import Elaboratable, Instance
from amaranth.lib.cdc import ResetSynchronizer

from accelgen.errors import UsageError


@dataclass(frozen=True)
class PllSettings:
    """One PLL configuration: the dividers (family-specific names) and what they give."""

    family: str
    f_in_mhz: float
    f_out_mhz: float
    dividers: tuple[tuple[str, int], ...]

    def get(self, name: str) -> int:
        return dict(self.dividers)[name]


def _ice40(f_in: float, f_want: float) -> list[PllSettings]:
    found = []
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                f = vco / (1 << divq)
                if 16 <= f <= 275:
                    found.append(PllSettings("ice40", f_in, f, (
                        ("DIVR", divr), ("DIVF", divf), ("DIVQ", divq),
                        ("FILTER_RANGE", _ice40_filter(pfd)))))
    return found


def _ice40_filter(pfd: float) -> int:
    for bound, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if pfd < bound:
            return value
    return 6


def _ecp5(f_in: float, f_want: float) -> list[PllSettings]:
    found = []
    for clki in range(1, 129):
        if f_in / clki < 3.125:
            break
        for clkfb in range(1, 81):
            f = f_in * clkfb / clki
            if not 3.125 <= f <= 400:
                continue
            for clkop in range(1, 129):
                if 400 <= f * clkop <= 800:
                    found.append(PllSettings("ecp5", f_in, f, (
                        ("CLKI_DIV", clki), ("CLKFB_DIV", clkfb), ("CLKOP_DIV", clkop))))
                    break
    return found


_GOWIN_ODIV = (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128)


def _gowin(f_in: float, f_want: float) -> list[PllSettings]:
    found = []
    for idiv in range(64):
        if not 3 <= f_in / (idiv + 1) <= 400:
            continue
        for fbdiv in range(64):
            f = f_in * (fbdiv + 1) / (idiv + 1)
            if not 3.125 <= f <= 600:
                continue
            for odiv in _GOWIN_ODIV:
                if 400 <= f * odiv <= 1200:
                    found.append(PllSettings("gowin", f_in, f, (
                        ("IDIV_SEL", idiv), ("FBDIV_SEL", fbdiv), ("ODIV_SEL", odiv))))
                    break
    return found


_SEARCH = {"ice40": _ice40, "ecp5": _ecp5, "gowin": _gowin}


def pll_settings(family: str, f_in_mhz: float, f_want_mhz: float) -> PllSettings:
    """The setting whose output is closest to `f_want_mhz` without exceeding it."""
    if family not in _SEARCH:
        raise UsageError(f"no PLL model for the FPGA family {family!r}")
    options = [s for s in _SEARCH[family](f_in_mhz, f_want_mhz)
               if s.f_out_mhz <= f_want_mhz * (1 + 1e-9)]
    if not options:
        raise UsageError(
            f"the {family} PLL cannot make {f_want_mhz:g} MHz or less from {f_in_mhz:g} MHz; "
            f"ask for a clock the PLL can reach (--clock)"
        )
    return max(options, key=lambda s: (s.f_out_mhz, -len(s.dividers)))


class PllClock(Elaboratable):
    """Drives the ``sync`` domain at `settings.f_out_mhz` from the board clock `clk_in`.

    ``clk_in`` is the board clock: an input buffer's output (`Signal`), or, on iCE40 when
    `pad` is set, the raw pin (`SB_PLL40_PAD` must sit on the PLL's own pad). With `settings`
    None the board clock drives ``sync`` directly. ``sync`` is held in reset until the PLL
    locks, through a reset synchroniser. The parent defines the ``sync`` domain.
    """

    def __init__(self, clk_in, settings: PllSettings | None, *, pad: bool = False,
                 device: str = "") -> None:
        self.clk_in = clk_in
        self.settings = settings
        self.pad = pad
        self.device = device
        self.locked = Signal()

    def elaborate(self, platform) -> Module:
        m = Module()
        s = self.settings
        if s is None:
            m.d.comb += [ClockSignal("sync").eq(self.clk_in), self.locked.eq(1)]
        elif s.family == "ice40":
            common = dict(p_FEEDBACK_PATH="SIMPLE", p_DIVR=s.get("DIVR"), p_DIVF=s.get("DIVF"),
                          p_DIVQ=s.get("DIVQ"), p_FILTER_RANGE=s.get("FILTER_RANGE"),
                          i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=ClockSignal("sync"),
                          o_LOCK=self.locked)
            if self.pad:
                m.submodules.pll = Instance("SB_PLL40_PAD", i_PACKAGEPIN=self.clk_in, **common)
            else:
                m.submodules.pll = Instance("SB_PLL40_CORE", i_REFERENCECLK=self.clk_in,
                                            **common)
        elif s.family == "ecp5":
            clkop = Signal()
            clkop_div = s.get("CLKOP_DIV")
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{s.f_in_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{s.f_out_mhz:.6g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKOP_ENABLE="ENABLED",
                p_CLKOP_DIV=clkop_div, p_CLKOP_CPHASE=clkop_div - 1, p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=s.get("CLKFB_DIV"),
                p_CLKI_DIV=s.get("CLKI_DIV"),
                i_CLKI=self.clk_in, i_CLKFB=clkop, i_RST=0, i_STDBY=0, i_PHASESEL0=0,
                i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clkop, o_LOCK=self.locked)
            m.d.comb += ClockSignal("sync").eq(clkop)
        elif s.family == "gowin":
            m.submodules.pll = Instance(
                "rPLL",
                p_FCLKIN=f"{s.f_in_mhz:g}", p_DEVICE=self.device,
                p_DYN_IDIV_SEL="false", p_IDIV_SEL=s.get("IDIV_SEL"),
                p_DYN_FBDIV_SEL="false", p_FBDIV_SEL=s.get("FBDIV_SEL"),
                p_DYN_ODIV_SEL="false", p_ODIV_SEL=s.get("ODIV_SEL"),
                p_PSDA_SEL="0000", p_DYN_DA_EN="true", p_DUTYDA_SEL="1000",
                p_CLKOUT_FT_DIR=1, p_CLKOUTP_FT_DIR=1, p_CLKOUT_DLY_STEP=0,
                p_CLKOUTP_DLY_STEP=0, p_CLKFB_SEL="internal", p_CLKOUT_BYPASS="false",
                p_CLKOUTP_BYPASS="false", p_CLKOUTD_BYPASS="false", p_DYN_SDIV_SEL=2,
                p_CLKOUTD_SRC="CLKOUT", p_CLKOUTD3_SRC="CLKOUT",
                i_CLKIN=self.clk_in, i_CLKFB=0, i_RESET=0, i_RESET_P=0, i_FBDSEL=0,
                i_IDSEL=0, i_ODSEL=0, i_PSDA=0, i_DUTYDA=0, i_FDLY=0,
                o_CLKOUT=ClockSignal("sync"), o_LOCK=self.locked)
        else:  # pragma: no cover - pll_settings refuses other families
            raise UsageError(f"no PLL primitive for {s.family!r}")
        m.submodules.reset_sync = ResetSynchronizer(~self.locked, domain="sync")
        return m
