"""The coupled pipeline's cycle model (`accelgen.scheduler.flow`) on hand-checkable chains, and
the scheduler's use of it (line-buffer rows where producers wait). Its agreement with
simulated cycles of whole networks is checked in `tests/test_accelerator.py`."""

from __future__ import annotations

import pytest

from accelgen.cores.streams import Format
from accelgen.memory.linebuffer import WindowGeometry
from accelgen.scheduler.flow import Deadlock, StageFlow, simulate_flow, window_units


def _window_stage(name: str, producer: str, g: WindowGeometry, row_cycles: float,
                  fifo: int = 0, partial: bool = False) -> StageFlow:
    """A windowed stage as `plan_flow` builds it (one unit per output pixel), its oldest row
    freed row by row, or pixel by pixel (`partial`, as the hardware does)."""
    return StageFlow(name, ((producer, fifo),), g.fmt.width, g.fmt.height,
                     window_units(g, row_cycles), g.ring_rows,
                     partial=(g.padding[1], g.stride[1], g.out_hw[1]) if partial else None)


def _conv3(h: int, w: int, slack: int = 0, stride: int = 1) -> WindowGeometry:
    return WindowGeometry(Format(h, w, 1, 8, False, 1), (3, 3), (stride, stride), (1, 1, 1, 1),
                          slack_rows=slack)


def test_one_stage_behind_a_fast_source_runs_at_its_own_rate() -> None:
    """A source far faster than the stage: the interval is the stage's row protocol alone
    (`WindowGeometry.steady_cycles`)."""
    g = _conv3(8, 8)
    row = 100.0
    flow = simulate_flow([_window_stage("a", "", g, row)], 1.0, 1, 64)
    assert flow.interval == pytest.approx(g.steady_cycles(row, 8.0), rel=0.01)
    assert flow.interval == pytest.approx(8 * row)


def test_compact_consumer_stalls_its_producer_until_given_rows() -> None:
    """A stride-2 consumer with a compact line buffer (only its window's 3 rows) is fast
    alone (456 cycles an image, 436 freeing its oldest row column by column; its producer
    640), but coupled its producer cannot write the next rows while it reads. Freed row by
    row, the chain takes 960 cycles an image; a row of slack gives 700, two (a full ring) the
    producer's 640. Freed column by column (`partial`), the producer writes the first of the
    two rows an output row releases behind its windows: 790, and one row of slack is
    enough."""
    h = w = 8

    def consumer(slack: int, partial: bool = False) -> WindowGeometry:
        return WindowGeometry(Format(h, w, 1, 8, False, 1), (3, 3), (2, 2), (1, 1, 1, 1),
                              compact=True, slack_rows=slack, partial=partial)

    assert consumer(0).steady_cycles(100.0, 8.0) == 456.0
    assert consumer(0, partial=True).steady_cycles(100.0, 8.0) == 436.0

    def chain(slack: int, partial: bool) -> float:
        a = _window_stage("a", "", _conv3(h, w), 80.0, partial=partial)
        b = _window_stage("b", "a", consumer(slack, partial), 100.0, partial=partial)
        flow = simulate_flow([a, b], 10.0, 1, h * w, images=6)
        if flow.interval > 640.0:  # the producer waited for room in the consumer
            assert flow.waits["b"] > 0
        return flow.interval

    assert [chain(0, False), chain(1, False), chain(2, False)] == [960.0, 700.0, 640.0]
    assert [chain(0, True), chain(1, True), chain(2, True)] == [790.0, 640.0, 640.0]


def test_balanced_chain_of_full_rings_runs_at_its_stages_rate() -> None:
    """Stages at the same rate, each holding its window's rows and a stride's, behind a
    source at that rate: nobody waits."""
    h = w = 8
    a = _window_stage("a", "", _conv3(h, w), 80.0)
    b = _window_stage("b", "a", _conv3(h, w), 80.0)
    c = _window_stage("c", "b", _conv3(h, w, stride=2), 160.0)
    flow = simulate_flow([a, b, c], 10.0, 1, h * w, images=6)
    assert flow.interval == 640.0
    assert flow.waits == {"a": 0.0, "b": 0.0, "c": 0.0}


def test_downsampling_consumer_is_fed_in_pairs_of_rows() -> None:
    """A stride-2 stage reading a full-rate producer: half the rows, each twice as long."""
    h = w = 8
    a = _window_stage("a", "", _conv3(h, w, 2), 80.0)
    b = _window_stage("b", "a", _conv3(h, w, 2, stride=2), 160.0)
    flow = simulate_flow([a, b], 10.0, 1, h * w, images=6)
    assert flow.interval == pytest.approx(h * 80.0)


def test_a_line_buffer_smaller_than_its_window_deadlocks() -> None:
    """A consumer that can never hold the rows its first output needs stops the model with
    the stage and row it waits at (the scheduler never builds one: a deadlock is a bug)."""
    g = _conv3(8, 8)
    stage = _window_stage("a", "", g, 80.0)
    starved = StageFlow("a", stage.inputs, stage.in_w, stage.in_h, stage.rows, 1)
    with pytest.raises(Deadlock, match=r"deadlocks: .*a row 0"):
        simulate_flow([starved], 10.0, 1, 64)


def test_fifo_on_an_edge_counts_as_room() -> None:
    """A FIFO of two rows' pixels before a compact consumer does what two more line-buffer
    rows do."""
    h = w = 8

    def consumer(slack: int) -> WindowGeometry:
        return WindowGeometry(Format(h, w, 1, 8, False, 1), (3, 3), (2, 2), (1, 1, 1, 1),
                              compact=True, slack_rows=slack)

    a = _window_stage("a", "", _conv3(h, w), 80.0)
    with_fifo = simulate_flow([a, _window_stage("b", "a", consumer(0), 100.0, fifo=2 * w)],
                              10.0, 1, h * w, images=6).interval
    with_rows = simulate_flow([a, _window_stage("b", "a", consumer(2), 100.0)],
                              10.0, 1, h * w, images=6).interval
    assert with_fifo == with_rows == 640.0


def test_scheduler_gives_the_default_model_rows_to_flow() -> None:
    """The default model on the ULX3S-85F: its cheapest stages (compact line buffers where a
    stage has time to spare) would make the coupled pipeline 2.3x slower than its slowest
    stage; the scheduler adds line-buffer rows where producers wait, and a FIFO before the
    global pool, until the pipeline runs at its slowest stage's rate."""
    import dataclasses

    from accelgen.cli import quantized_for, resolve_model
    from accelgen.devices import device
    from accelgen.scheduler import plan
    from accelgen.scheduler.flow import pipeline_interval

    p = plan(quantized_for(str(resolve_model(None)), bits=8), device("ecp5"))
    assert p.ii_cycles == p.stage_interval
    assert any(s.slack_rows for s in p.stages)
    bare = dataclasses.replace(
        p, stages=tuple(dataclasses.replace(s, slack_rows=0) for s in p.stages),
        fifo_depths={k: v for k, v in p.fifo_depths.items() if "GlobalAveragePool" not in k[1]})
    assert pipeline_interval(bare) > 2 * p.stage_interval
