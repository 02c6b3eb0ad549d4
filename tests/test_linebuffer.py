"""The sliding-window line buffer against its software model, with random backpressure."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelgen.cores.streams import Format
from accelgen.errors import ShapeError
from accelgen.memory.linebuffer import SlidingWindow, WindowGeometry
from tests.hw import as_dict, pixel_beats, random_codes, run, window_beats

KEYS = ("data", "pad", "first", "end", "last")


def _check(g: WindowGeometry, order: str, repeats: int, images: int, seed: int,
           idle: float = 0.3, busy: float = 0.3) -> tuple[list[int], SlidingWindow]:
    rng = np.random.default_rng(seed)
    f = g.fmt
    x = random_codes(rng, (images, f.height, f.width, f.channels), f)
    dut = SlidingWindow(g, order=order, repeats=repeats)
    want = window_beats(x, g, order, repeats)
    got = run(dut, {"i": pixel_beats(x, f.lanes)}, {"o": len(want)}, seed=seed, idle=idle,
              busy=busy)
    assert [as_dict(p, KEYS) for p in got["o"]] == want
    return got["_stamps"]["o"], dut


@st.composite
def geometries(draw: st.DrawFn) -> WindowGeometry:
    lanes = draw(st.sampled_from([1, 2, 4]))
    channels = lanes * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)),
            draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 7))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 7))
    bits = draw(st.integers(2, 16))
    fmt = Format(h, w, channels, bits, draw(st.booleans()), lanes)
    # compact rings (the window's rows only) fill up every output row: with `partial` their
    # writer goes on over the oldest row's freed columns, which the flow control must get
    # exactly right
    return WindowGeometry(fmt, (kh, kw), (sh, sw), pads, ceil_mode=draw(st.booleans()),
                          compact=draw(st.booleans()), slack_rows=draw(st.integers(0, 1)),
                          partial=draw(st.booleans()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=geometries(), order=st.sampled_from(["dense", "channel"]), repeats=st.integers(1, 3),
       seed=st.integers(0, 1000))
def test_window_stream_matches_model(g: WindowGeometry, order: str, repeats: int,
                                     seed: int) -> None:
    try:
        _ = g.out_hw
    except ShapeError:
        return
    _check(g, order, repeats if order == "dense" else 1, images=2, seed=seed)


def test_kws_stem_window_10x4_asymmetric_padding() -> None:
    """The MLPerf Tiny KWS stem: 10x4 kernel, stride 2, pads (4, 1, 5, 1), on 49x10."""
    g = WindowGeometry(Format(49, 10, 1, 8, True, 1), (10, 4), (2, 2), (4, 1, 5, 1))
    assert g.out_hw == (25, 5)
    _check(g, "dense", 1, images=1, seed=3)


@pytest.mark.parametrize(("g", "order", "repeats"), [
    (WindowGeometry(Format(8, 8, 4, 8, False, 2), (3, 3), (1, 1), (1, 1, 1, 1)), "channel", 1),
    (WindowGeometry(Format(8, 8, 4, 8, False, 2), (3, 3), (1, 1), (1, 1, 1, 1), compact=True,
                    partial=True), "channel", 1),
    (WindowGeometry(Format(14, 14, 4, 8, False, 4), (3, 3), (2, 2), (1, 1, 1, 1), compact=True,
                    partial=True), "dense", 2),
    (WindowGeometry(Format(10, 10, 2, 8, False, 2), (3, 3), (1, 1), (0, 0, 0, 0), compact=True,
                    partial=True), "dense", 3),
])
def test_compact_ring_freed_by_columns_flows(g: WindowGeometry, order: str,
                                             repeats: int) -> None:
    """With an eager producer and consumer, a compact ring that frees its oldest row column by
    column waits only for the last window's columns per output row: the simulated interval
    within 1.5 % of the event model, and, at stride 1, of one window beat per cycle."""
    stamps, dut = _check(g, order, repeats, images=3, seed=1, idle=0.0, busy=0.0)
    per_image = dut.beats_per_image()
    steady = stamps[3 * per_image - 1] - stamps[2 * per_image - 1]
    assert abs(steady - dut.expected_cycles()) <= 0.015 * dut.expected_cycles()
    if g.stride[0] == 1:  # (a stride of 2 rows frees its second row whole)
        assert steady <= 1.04 * per_image
    if g.partial:  # row by row, the writer would wait for every output row
        rows = dut.geometry.steady_cycles(
            g.row_read_cycles(None, repeats), g.row_words)
        slow = replace(g, partial=False).steady_cycles(g.row_read_cycles(None, repeats),
                                                       g.row_words)
        assert slow > rows


def test_full_rate_without_backpressure() -> None:
    """With an eager producer and consumer the reader sends one beat per cycle, plus its
    per-row overhead: the cycle model within 5 %."""
    g = WindowGeometry(Format(8, 8, 4, 8, False, 2), (3, 3), (1, 1), (1, 1, 1, 1))
    stamps, dut = _check(g, "channel", 1, images=3, seed=1, idle=0.0, busy=0.0)
    per_image = dut.beats_per_image()
    steady = stamps[3 * per_image - 1] - stamps[2 * per_image - 1]
    assert abs(steady - dut.expected_cycles()) <= 0.05 * dut.expected_cycles(), (
        steady, dut.expected_cycles())
