"""The whole pipeline's cycle model: an event model of every stage's rows, coupled.

Each stage alone runs at its own rate (`StagePlan.cycles`, the row protocol of its line buffer
fed by a producer as fast as it likes). Coupled, a stage waits for its producer's rows and its
producer waits for room in its line buffer, so the pipeline's interval can exceed its slowest
stage's: a balanced pipeline has no stage with time to spare, and each stage's line buffer
holds only ``kh + sh`` rows, so any stage that starts a row late (the top padding of an image,
a stride-2 reader that takes two rows at once, a global pool's final division) delays every
stage upstream and downstream of it. This module computes the interval of the coupled
pipeline, row by row, without simulating the hardware:

* a *windowed* stage (convolution, pool, dense layer: `SlidingWindow`) starts output row
  ``k`` once its previous row is done and the input rows it needs are complete, spends its row
  time, emits the row's pixels evenly over it, and then releases the input rows the next row no
  longer needs;
* a *streaming* stage (residual add, clamp, global pool) processes each input row while it
  arrives, at no more than one beat per cycle (a global pool adds its final division to the
  last row of an image);
* a producer may emit a pixel only when every consumer has room for it: the row holding it,
  less the beats of the FIFO on the edge, must be within the consumer's ring (``ring_rows``
  rows; a streaming stage holds one), or, in a windowed stage's oldest row, left of the
  windows its current output row has finished (`SlidingWindow` frees that row pixel by
  pixel).

Times are exact at this granularity (rows, and pixels spread evenly across a row); the
pipeline's beat-level effects (a MAC stage's output bursts, width converters) are not in it,
which is why every edge whose consumer stops taking beats for a while gets a FIFO sized for it
(`accelgen.scheduler.schedule`). `tests/test_accelerator.py` checks the model against
simulated cycles of whole networks.
"""

from __future__ import annotations

from dataclasses import dataclass

from accelgen.errors import AccelgenError


@dataclass(frozen=True)
class StageFlow:
    """One stage's rows, in the terms of the event model.

    ``rows`` lists the stage's *virtual rows* of one image: for each, ``(need, keep_from,
    cycles, emits)`` — the input rows that must be written before it starts (a windowed stage)
    or the input row it processes as it arrives (a streaming stage: ``need`` is that row + 1),
    the input rows kept once it is done (earlier ones are released), the cycles it takes, and
    the output pixels it emits (evenly over it)."""

    name: str
    inputs: tuple[tuple[str, int], ...]
    """(producer stage, FIFO pixels on the edge); producer "" is the graph input."""
    in_w: int  # pixels per input row
    in_h: int  # input rows per image
    rows: tuple[tuple[int, int, float, int], ...]
    ring_rows: int
    streaming: bool = False
    first_out: float = 0.0
    """How far into a row its first output beat leaves (0..1): a MAC stage sends a pixel's
    outputs fold by fold, so its first beat needs room in the consumer only after one fold."""
    partial: tuple[int, int, int] | None = None
    """A windowed stage whose line buffer frees its oldest row pixel by pixel: (left padding,
    column stride, output pixels per row). While the ring is full, the producer may write the
    row after it over the columns the current output row's finished windows no longer need
    (``x < (ox + 1) * sw - pl`` once output pixel ``ox`` is done), if that output row releases
    the oldest row first."""


@dataclass(frozen=True)
class FlowResult:
    interval: float
    """Steady-state cycles between images at the pipeline's output."""
    image_end: tuple[float, ...]
    """When each image's last output pixel left the pipeline."""
    waits: dict[str, float]
    """Per stage: cycles its producers spent waiting for room in it (over all images)."""


class Deadlock(AccelgenError):
    """The stages wait on each other (a FIFO too shallow on a fan-out: a scheduler bug)."""


def simulate_flow(stages: list[StageFlow], source_row_cycles: float, source_w: int,
                  source_h: int, images: int = 4) -> FlowResult:
    """Run `images` images through the stages (in topological order; the graph input is a
    source emitting `source_h` rows of `source_w` pixels, each row in `source_row_cycles`).
    Every row of every stage emits at most one pixel (`plan_flow` makes them so)."""
    source = StageFlow("", (), source_w, source_h,
                       tuple((0, 0, source_row_cycles, 1) for _ in range(source_h)), 1,
                       streaming=True)
    everything = [source, *stages]
    index = {s.name: i for i, s in enumerate(everything)}
    n = len(everything)
    need_g, keep_g, cycles, emits, pixel_unit, release_unit = [], [], [], [], [], []
    for s in everything:
        if any(e not in (0, 1) for *_, e in s.rows):
            raise ValueError(f"stage {s.name!r}: a row emits more than one pixel")
        ng, kg, cy, em, pu = [], [], [], [], []
        for img in range(images):
            base = img * s.in_h
            for need, keep, cyc, e in s.rows:
                if e:
                    pu.append(len(ng))
                ng.append(base + need if need > 0 else 0)
                kg.append(base + keep)
                cy.append(cyc)
                em.append(e)
        # release_unit[rows]: the first unit after which `rows` input rows are released
        rel, u = [], 0
        for rows in range(images * s.in_h + 1):
            while u < len(kg) and kg[u] < rows:
                u += 1
            rel.append(u)
        need_g.append(ng)
        keep_g.append(kg)
        cycles.append(cy)
        emits.append(em)
        pixel_unit.append(pu)
        release_unit.append(rel)
    inputs = [[(index[prod], fifo) for prod, fifo in s.inputs] for s in everything]
    for s in stages:
        for prod, _ in s.inputs:
            if prod not in index:
                raise KeyError(f"stage {s.name!r} reads unknown stage {prod!r}")
    consumers: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n)]
    for j, s in enumerate(everything):
        for i, fifo in inputs[j]:
            consumers[i].append((j, fifo, s.in_w, s.ring_rows))
    start: list[list[float]] = [[] for _ in range(n)]
    finish: list[list[float]] = [[] for _ in range(n)]
    emitted = [0] * n
    waits = [0.0] * n
    total = [len(c) for c in cycles]
    first_out = [s.first_out for s in everything]

    def advance(i: int) -> bool:
        """Time the next row of stage `i`; False when what it waits for is not yet timed."""
        s = everything[i]
        fin = finish[i]
        k = len(fin)
        if k >= total[i]:
            return False
        t = fin[-1] if k else 0.0
        last_input = 0.0
        need = need_g[i][k]
        if need > 0:
            w = s.in_w
            for p, _ in inputs[i]:
                done = len(finish[p])
                u_last = pixel_unit[p][need * w - 1]
                if u_last >= done:
                    return False
                if s.streaming:  # it starts as the row's first pixel arrives
                    u_first = pixel_unit[p][(need - 1) * w]
                    t = max(t, start[p][u_first])
                    last_input = max(last_input, finish[p][u_last])
                else:
                    t = max(t, finish[p][u_last])
        waited = []
        if emits[i][k]:
            pixel = emitted[i]
            for c, fifo, w, ring in consumers[i]:
                rows = (pixel - fifo) // w - ring + 1  # rows `c` must have released
                if rows <= 0:
                    continue
                u = release_unit[c][rows]
                part = everything[c].partial
                if part is not None:  # the oldest row, freed pixel by pixel?
                    pl, sw, ow = part
                    first = u - (ow - 1)  # the releasing output row's first pixel
                    if first >= 0 and keep_g[c][first] == rows - 1:
                        x = (pixel - fifo) % w
                        u = first + min(ow - 1, max(0, (x + pl) // sw))
                if u >= len(finish[c]):
                    return False
                when = finish[c][u]
                when -= first_out[i] * cycles[i][k]
                if when > t:
                    waited.append((c, when - t))
                    t = when
            emitted[i] += 1
        for c, dt in waited:
            waits[c] += dt
        start[i].append(t)
        fin.append(max(t + cycles[i][k], last_input))
        return True

    pending = list(range(n))
    while pending:
        progress = False
        for i in pending:
            while advance(i):
                progress = True
        pending = [i for i in pending if len(finish[i]) < total[i]]
        if pending and not progress:
            stuck = ", ".join(f"{everything[i].name or '(input)'} row {len(finish[i])}"
                              for i in pending)
            raise Deadlock(f"the pipeline deadlocks: {stuck}")
    last = n - 1
    per_image = len(everything[last].rows)
    ends = tuple(finish[last][(k + 1) * per_image - 1] for k in range(images))
    return FlowResult(ends[-1] - ends[-2], ends,
                      {s.name: waits[i + 1] for i, s in enumerate(stages)})


def mac_pixel_cycles(layer, x, pe: int, simd: int, ol: int) -> tuple[int, int, int]:
    """A MAC stage's cycles per output position (its folds, each the longer of its window
    beats and its requantizer drain of ``pe / ol`` beats), how often its window repeats each
    position (once per output-channel fold of a full convolution) and its folds per
    position."""
    from accelgen.cores.conv import FOLD_DRAIN
    from accelgen.cores.layers import conv_mode, conv_weight

    mode = conv_mode(layer, x)
    c_out, kh, kw, _ = conv_weight(layer, x).shape
    c_in = x.shape[2]
    if mode == "depthwise":
        beats_per_fold, folds = kh * kw, c_in // (pe // (c_out // c_in))
    else:
        beats_per_fold, folds = kh * kw * c_in // simd, c_out // pe
    per_pixel = folds * max(beats_per_fold, pe // ol + FOLD_DRAIN)
    return per_pixel, folds if mode == "dense" else 1, folds


def window_units(g, row_cycles: float) -> tuple[tuple[int, int, float, int], ...]:
    """A windowed stage's rows for `simulate_flow`: one per output pixel, each a share of its
    output row's `row_cycles`, needing the row's input rows; the rows the next output row no
    longer needs are released after the row's last pixel."""
    ow = g.out_hw[1]
    units = []
    kept = 0  # input rows kept after the previous output row (of this image)
    for need, keep in g.row_needs():
        units += [(need, kept, row_cycles / ow, 1)] * (ow - 1)
        units.append((need, keep, row_cycles / ow, 1))
        kept = keep
    return tuple(units)


def plan_flow(p) -> tuple[list[StageFlow], tuple[float, int, int]]:
    """The `StageFlow` of every stage of a `HardwarePlan`, and the graph input as a source
    (row cycles, pixels per row, rows per image): one input beat per cycle."""
    from accelgen.accelerator import edge_fifo_depth
    from accelgen.cores.layers import conv_geometry, fmt_of
    from accelgen.cores.pool import global_pool_cycles
    from accelgen.memory.linebuffer import WindowGeometry
    from accelgen.quantized import (
        QAdd,
        QAvgPool,
        QClamp,
        QConv,
        QDense,
        QGlobalAvgPool,
        QGlobalMaxPool,
        QMaxPool,
    )

    qg = p.qgraph
    by_layer = {s.layer: s for s in p.stages}
    flows = []
    for layer in qg.layers:
        sp = by_layer[layer.name]
        x = qg.tensors[layer.inputs[0]]
        h, w, c = x.shape
        inputs = []
        for t in layer.inputs:
            prod = qg.producer(t)
            lanes = by_layer[prod.name].lanes_out if prod else p.input_lanes
            depth = edge_fifo_depth(p.fifo_depths, by_layer[prod.name] if prod else None, t,
                                    layer.name, lanes, sp.lanes_in)
            inputs.append((prod.name if prod else "", depth * lanes // c))
        cl = c // sp.lanes_in
        if isinstance(layer, (QGlobalAvgPool, QGlobalMaxPool, QAdd, QClamp)):
            # streaming, pixel by pixel (rows of one pixel, a ring of one)
            n = h * w
            units = [(j + 1, j + 1, float(cl), 1) for j in range(n)]
            if isinstance(layer, (QGlobalAvgPool, QGlobalMaxPool)):
                mode = "avg" if isinstance(layer, QGlobalAvgPool) else "max"
                total = global_pool_cycles(mode, fmt_of(x, sp.lanes_in))
                units = [(j + 1, j + 1, float(cl), 0) for j in range(n)]
                units[-1] = (n, n, float(total - (n - 1) * cl), 1)
            flows.append(StageFlow(layer.name, tuple(inputs), 1, n, tuple(units), 1, True))
            continue
        if isinstance(layer, (QConv, QDense)):
            g = conv_geometry(layer, x, sp.lanes_in, sp.compact_ring, sp.slack_rows,
                              sp.partial_release)
            per_pixel, repeats, folds = mac_pixel_cycles(layer, x, sp.pe, sp.simd,
                                                         sp.lanes_out)
            row = g.row_read_cycles(per_pixel, repeats)
        elif isinstance(layer, (QMaxPool, QAvgPool)):
            g = WindowGeometry(fmt_of(x, sp.lanes_in), layer.kernel, layer.stride,
                               layer.padding, layer.ceil_mode, sp.compact_ring, sp.slack_rows,
                               sp.partial_release)
            row = g.row_read_cycles()
            folds = g.fmt.beats_per_pixel  # a channel group's window, then its output
        else:
            raise TypeError(f"no flow model for {type(layer).__name__}")
        flows.append(StageFlow(layer.name, tuple(inputs), g.fmt.width, g.fmt.height,
                               window_units(g, row), g.ring_rows, first_out=1 / folds,
                               partial=((g.padding[1], g.stride[1], g.out_hw[1])
                                        if g.partial else None)))
    x = qg.tensors[qg.inputs[0].tensor]
    h, w, c = x.shape
    return flows, (float(c // p.input_lanes), 1, h * w)


def pipeline_flow(p, images: int = 4) -> FlowResult:
    """The coupled pipeline of a `HardwarePlan` (`simulate_flow`)."""
    flows, (row_cycles, w, h) = plan_flow(p)
    return simulate_flow(flows, row_cycles, w, h, images)


def pipeline_interval(p, images: int = 4) -> float:
    """The coupled pipeline's steady-state cycles per image."""
    return pipeline_flow(p, images).interval
