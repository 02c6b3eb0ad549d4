"""The whole network as one Amaranth component, built from a `HardwarePlan`.

Ports:

* ``i``: the input image as pixel beats (``plan.input_lanes`` codes per beat, the host having
  quantized the real input into the input tensor's format);
* ``o``: the logits as pixel beats (the last layer's output lanes);
* ``cls``: the index of the largest logit, one beat per image;
* ``load``: the weight image of the stages whose weights sit in run-time-loaded RAM (iCE40
  SPRAM), one byte per cycle, before the first image (`load_bytes`, `weight_image`); ``loaded``
  rises when it is complete (at once when there is nothing to load); ``load_restart`` starts
  the image over (the host link's LOAD_BEGIN);
* ``latency``: cycles from the first input beat of the last image to its last logit beat (taken
  while no other image is in flight: the hardware counter the host link reads), and
  ``images``: images completed.

Every tensor edge connects its producer to each consumer through, as needed, a `Broadcast` (a
tensor read by several layers), a FIFO where the plan asks for one (a residual skip path must
hold everything the other branch reads before it produces; a global pool takes no input while
it finishes an image), and `WidthConverter` stages where the producer's output lanes differ
from the consumer's input lanes (through their least common multiple: `converter_lanes`).
Other edges need no queue (`edge_fifo_depth`): every stage's output comes from a register it
holds until taken (a MAC stage's from a two-entry queue), and every windowed stage's input is
its line buffer, which takes a beat per cycle while it has a free row; the plan gives a line
buffer rows beyond its window's where its producer would otherwise wait for room
(`StagePlan.slack_rows`), and its interval is the coupled pipeline's
(`accelgen.scheduler.flow`). The exception is a MAC stage that drains a fold in several output
beats into a narrower consumer: a FIFO of one fold's beats lets it requantize the fold at its
own rate.
"""

from __future__ import annotations

import itertools
import math

from amaranth import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accelgen.cores.layers import ConvLayer, PoolLayer, fmt_of
from accelgen.cores.mul import SharedMultiplier
from accelgen.cores.pool import AddStage, ArgMax, ClampStage, GlobalPoolStage
from accelgen.cores.streams import Broadcast, StreamFifo, WidthConverter
from accelgen.devices import Device
from accelgen.errors import UnsupportedError
from accelgen.memory.loader import LoadTarget, WeightLoader
from accelgen.quantized import (
    QAdd,
    QAvgPool,
    QClamp,
    QConv,
    QDense,
    QGlobalAvgPool,
    QGlobalMaxPool,
    QLayer,
    QMaxPool,
    QuantizedGraph,
)
from accelgen.scheduler.plan import HardwarePlan, StagePlan


def edge_fifo_depth(fifo_depths: dict[tuple[str, str], int], producer: StagePlan | None,
                    tensor: str, user: str, lanes: int, want: int) -> int:
    """Beats of FIFO on the edge from `tensor`'s producer (`lanes` per beat) to `user` (`want`
    lanes): the plan's (a residual skip path), or one fold's output beats where a MAC stage
    drains into a narrower consumer (module docstring); 0 for none."""
    depth = fifo_depths.get((tensor, user), 0)
    burst = producer.pe // producer.lanes_out if producer is not None else 1
    if want < lanes and burst > 1:
        depth = max(depth, burst)
    return depth


def fifo_style(depth: int, width: int) -> str:
    """Registers for shallow or tiny queues, block RAM for the rest (the scheduler counts the
    same way)."""
    from accelgen.scheduler.resources import LOGIC_MEMORY_BITS

    return "logic" if depth <= 8 or depth * width <= LOGIC_MEMORY_BITS else "block"


def build_stage(layer: QLayer, qg: QuantizedGraph, sp: StagePlan,
                device: Device | None = None) -> wiring.Component:
    """The component for one layer, with the plan's parallelism and DSP mapping."""
    t = qg.tensors
    if isinstance(layer, (QConv, QDense)):
        x = t[layer.inputs[0]]
        per_block = device.dsp_products(x.bits, layer.w_bits) if device is not None else 0
        return ConvLayer(layer, x, t[layer.output], pe=sp.pe, simd=sp.simd,
                         ol=sp.lanes_out, ring_style=sp.style(sp.ring_memory),
                         weight_style=sp.style(sp.weight_memory),
                         param_style=sp.style(sp.param_memory),
                         dsp_products=min(sp.multipliers, sp.dsp_blocks * per_block),
                         shared_product=sp.shared_dsp >= 0,
                         family=None if device is None else device.family,
                         compact=sp.compact_ring, slack_rows=sp.slack_rows,
                         partial=sp.partial_release)
    if isinstance(layer, (QMaxPool, QAvgPool)):
        return PoolLayer(layer, t[layer.inputs[0]], t[layer.output], lanes=sp.lanes_in,
                         ring_style=sp.style(sp.ring_memory), compact=sp.compact_ring,
                         slack_rows=sp.slack_rows, partial=sp.partial_release)
    if isinstance(layer, (QGlobalAvgPool, QGlobalMaxPool)):
        mode = "avg" if isinstance(layer, QGlobalAvgPool) else "max"
        return GlobalPoolStage(mode=mode, fmt=fmt_of(t[layer.inputs[0]], sp.lanes_in),
                               ram_style=sp.style(sp.aux_memory))
    if isinstance(layer, QAdd):
        a, b = (fmt_of(t[n], sp.lanes_in) for n in layer.inputs)
        return AddStage(a=a, b=b, out=fmt_of(t[layer.output], sp.lanes_out), align=layer.align,
                        shift=layer.shift, lo=layer.lo, hi=layer.hi)
    if isinstance(layer, QClamp):
        return ClampStage(fmt=fmt_of(t[layer.inputs[0]], sp.lanes_in),
                          out=fmt_of(t[layer.output], sp.lanes_out), shift=layer.shift,
                          lo=layer.lo, hi=layer.hi)
    raise UnsupportedError(
        f"{layer.op} {layer.name!r} has no stage in the streaming pipeline template"
    )


def input_ports(comp: wiring.Component) -> list:
    """The stream inputs of a stage, in the order of its layer's inputs."""
    if isinstance(comp, AddStage):
        return [comp.a, comp.b]
    return [comp.i]


def converter_lanes(lanes_in: int, lanes_out: int) -> list[int]:
    """The lane counts a stream passes through from `lanes_in` to `lanes_out` lanes: directly
    when one divides the other, otherwise gathered to their least common multiple and split
    from it. (Through their greatest common divisor would be cheaper, but the narrow stream
    between the two converters then needs more beats per image than either side — 4 -> 2 -> 6
    lanes sends 1.5 beats per 6-lane beat through the middle — and becomes the pipeline's
    slowest stage; through the multiple, every beat count is at most either side's.)"""
    if lanes_in == lanes_out:
        return [lanes_in]
    if lanes_in % lanes_out == 0 or lanes_out % lanes_in == 0:
        return [lanes_in, lanes_out]
    return [lanes_in, math.lcm(lanes_in, lanes_out), lanes_out]


def converter_chain(shape, lanes_in: int, lanes_out: int) -> list[WidthConverter]:
    """The `WidthConverter` stages of `converter_lanes`."""
    lanes = converter_lanes(lanes_in, lanes_out)
    return [WidthConverter(shape, a, b) for a, b in itertools.pairwise(lanes)]


def accelerator_ports(in_fmt, out_fmt, cls_bits: int) -> dict:
    """The ports every accelerator behind the host link has (module docstring): the pipeline's
    `Accelerator` and the PE array's `ArrayAccelerator`."""
    return {
        "i": In(in_fmt.signature),
        "o": Out(out_fmt.signature),
        "cls": Out(stream.Signature(unsigned(cls_bits))),
        "latency": Out(32),
        "images": Out(32),
        "load": In(stream.Signature(8, always_ready=True)),
        "load_restart": In(1),
        "loaded": Out(1),
    }


class Accelerator(wiring.Component):
    """The network from a plan (see the module docstring)."""

    def __init__(self, plan: HardwarePlan) -> None:
        self.plan = plan
        qg = plan.qgraph
        if len(qg.inputs) != 1 or len(qg.outputs) != 1:
            raise UnsupportedError("the pipeline takes models with one input and one output")
        self.in_tensor = qg.tensors[qg.inputs[0].tensor]
        self.out_tensor = qg.tensors[qg.outputs[0].tensor]
        self.in_fmt = fmt_of(self.in_tensor, plan.input_lanes)
        last = plan.stage(qg.producer(self.out_tensor.name).name)
        self.out_fmt = fmt_of(self.out_tensor, last.lanes_out)
        self.stages = {la.name: build_stage(la, qg, plan.stage(la.name), plan.device)
                       for la in qg.layers}
        self.argmax = ArgMax(self.out_fmt)
        self.cls_bits = max(1, (self.argmax.classes - 1).bit_length())
        self.loadable = [(name, comp) for name, comp in self.stages.items()
                         if getattr(comp, "mac", None) is not None and comp.mac.loadable]
        self.loader = WeightLoader([LoadTarget(len(comp.mac.rom), comp.mac.word_bits)
                                    for _, comp in self.loadable])
        super().__init__(accelerator_ports(self.in_fmt, self.out_fmt, self.cls_bits))

    @property
    def load_bytes(self) -> int:
        """Bytes of the weight image the host must send through ``load`` before inference."""
        return self.loader.total_bytes

    def weight_image(self) -> bytes:
        """The run-time-loaded weights (SPRAM), in the loader's order (`memory.loader`)."""
        return b"".join(comp.mac.weight_bytes() for _, comp in self.loadable)

    def elaborate(self, platform) -> Module:
        m = Module()
        qg = self.plan.qgraph
        for k, (name, comp) in enumerate(self.stages.items()):
            m.submodules[f"s{k}_{_ident(name)[-24:]}"] = comp
        m.submodules.argmax = self.argmax
        m.submodules.loader = self.loader
        wiring.connect(m, wiring.flipped(self.load), self.loader.i)
        m.d.comb += [self.loaded.eq(self.loader.done), self.loader.restart.eq(self.load_restart)]
        for k, (_, comp) in enumerate(self.loadable):
            wiring.connect(m, self.loader.port(k), comp.load)
        # DSP blocks whose two halves serve two stages
        sharing: dict[int, list] = {}
        for name, comp in self.stages.items():
            block = self.plan.stage(name).shared_dsp
            if block >= 0:
                sharing.setdefault(block, []).append(comp)
        for block, comps in sorted(sharing.items()):
            shapes = [(c.mul.a.shape(), c.mul.b.shape(), c.mul.p.shape()) for c in comps]
            m.submodules[f"dsp_shared{block}"] = pair = SharedMultiplier(
                shapes, family=self.plan.device.family)
            for comp, port in zip(comps, pair.ports, strict=True):
                wiring.connect(m, comp.mul, port)

        # producer stream and lanes of every tensor
        sources: dict[str, tuple[object, int]] = {
            self.in_tensor.name: (wiring.flipped(self.i), self.plan.input_lanes)
        }
        for layer in qg.layers:
            sp = self.plan.stage(layer.name)
            sources[layer.output] = (self.stages[layer.name].o, sp.lanes_out)
        consumers: dict[str, list[tuple[str, int]]] = {}
        for layer in qg.layers:
            for k, t in enumerate(layer.inputs):
                consumers.setdefault(t, []).append((layer.name, k))
        consumers.setdefault(self.out_tensor.name, []).append(("<argmax>", 0))

        for tensor, users in consumers.items():
            src, lanes = sources[tensor]
            shape = fmt_of(qg.tensors[tensor], lanes).shape
            if len(users) > 1:
                fan = Broadcast(fmt_of(qg.tensors[tensor], lanes).payload, len(users))
                m.submodules[f"fanout_{_ident(tensor)}"] = fan
                wiring.connect(m, src, fan.i)
                branches = list(fan.o)
            else:
                branches = [src]
            for (user, k), branch in zip(users, branches, strict=True):
                if user == "<argmax>":
                    dst, want = self.argmax.i, self.out_fmt.lanes
                else:
                    dst = input_ports(self.stages[user])[k]
                    want = self.plan.stage(user).lanes_in
                stream_ = branch
                producer = qg.producer(tensor)
                depth = edge_fifo_depth(
                    self.plan.fifo_depths,
                    None if producer is None else self.plan.stage(producer.name), tensor, user,
                    lanes, want)
                if depth:
                    payload = fmt_of(qg.tensors[tensor], lanes).payload
                    fifo = StreamFifo(payload, depth, fifo_style(depth, payload.size))
                    m.submodules[f"fifo_{_ident(tensor)}_{_ident(user)}"] = fifo
                    wiring.connect(m, stream_, fifo.i)
                    stream_ = fifo.o
                for j, conv in enumerate(converter_chain(shape, lanes, want)):
                    m.submodules[f"width_{_ident(tensor)}_{_ident(user)}_{j}"] = conv
                    wiring.connect(m, stream_, conv.i)
                    stream_ = conv.o
                wiring.connect(m, stream_, dst)
        wiring.connect(m, self.argmax.o, wiring.flipped(self.o))
        wiring.connect(m, self.argmax.cls, wiring.flipped(self.cls))

        # hardware counters: latency of the last image processed alone, images completed
        in_flight = Signal(8)
        elapsed = Signal(32)  # cycles since the last image that started alone, plus one
        first_beat = Signal(init=1)
        took_in = self.i.valid & self.i.ready
        done = self.o.valid & self.o.ready & self.o.payload.last
        started_now = took_in & first_beat
        with m.If(took_in):
            m.d.sync += first_beat.eq(self.i.payload.last)
        with m.If(started_now & (in_flight == 0)):
            m.d.sync += elapsed.eq(2)  # counts that cycle and the one that ends the image
        with m.Else():
            m.d.sync += elapsed.eq(elapsed + 1)
        with m.If(started_now & ~done):
            m.d.sync += in_flight.eq(in_flight + 1)
        with m.Elif(done & ~started_now):
            m.d.sync += in_flight.eq(in_flight - 1)
        with m.If(done):
            m.d.sync += [self.latency.eq(elapsed), self.images.eq(self.images + 1)]
        return m


def _ident(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name)
    return out[-40:] if len(out) > 40 else out
