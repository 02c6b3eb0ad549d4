"""The PE array behind the host link (`ArrayAccelerator` in a `LinkedAccelerator`), end to end in
Amaranth's simulator through the host driver: the memory image loaded over the line, images
run, logits, class and the cycle counter equal to golden and to the cost model."""

from __future__ import annotations

import numpy as np
import pytest

from accelgen.array.compiler import ArrayConfig, compile_graph
from accelgen.array.isa import Mode
from accelgen.array.machine import cost, totals
from accelgen.compress import QuantConfig, quantize
from accelgen.cores.array_accelerator import ArrayAccelerator
from accelgen.errors import ShapeError
from accelgen.host import Device, SimTransport
from accelgen.link.hostlink import LinkedAccelerator
from accelgen.link.protocol import DeviceError
from tests.test_array import _golden_outputs, _net

DIVISOR = 4
CLOCK_HZ = 1_000_000
HOST_TIMEOUT_S = 0.1


def _model(bits: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    graph = _net(rng, 2, 6, (3, 3), 1, [1, 1, 1, 1], True, True, "max", 6)
    x = rng.uniform(-1, 1, (32, 2, 6, 6)).astype(np.float32)
    qg, _ = quantize(graph, x, QuantConfig(weight_bits=bits, act_bits=bits))
    return qg


def _open(acc: ArrayAccelerator) -> Device:
    linked = LinkedAccelerator(acc, DIVISOR, CLOCK_HZ, timeout_cycles=2_000)
    return Device(SimTransport(linked), timeout_s=HOST_TIMEOUT_S, retries=1)


@pytest.mark.parametrize(("bits", "family"), [(8, "ice40"), (4, None)])
def test_array_over_the_link_equals_golden(bits: int, family: str | None) -> None:
    qg = _model(bits)
    program = compile_graph(qg, ArrayConfig(pes=4, mem_words=4096, wbuf_words=256,
                                            word16_cycles=2 if family else 1))
    acc = ArrayAccelerator(program, family=family, baked=family is None)
    assert program.modes == {Mode.for_bits(bits)} or bits != 8
    dev = _open(acc)
    assert dev.info().load_bytes == (0 if family is None else 2 * program.image.size)
    if family:
        with pytest.raises(DeviceError, match=r"NOT_LOADED|not loaded"):
            dev.infer(np.zeros(qg.tensors[qg.inputs[0].tensor].shape, np.int64))
        dev.load_weights(acc.weight_image(), chunk=200)
    t = qg.tensors[qg.inputs[0].tensor]
    rng = np.random.default_rng(bits)
    x = rng.integers(t.qmin, t.qmax + 1, size=(2, *t.shape))
    want = _golden_outputs(qg, x)
    for k in range(2):
        r = dev.infer(x[k])
        assert np.array_equal(r.logits, want[k]), k
        assert r.cls == int(np.argmax(want[k]))
        assert r.cycles == totals(program)[0]
    assert dev.counters().images == 2
    # the per-layer hardware counters over the link (LAYERS): the cost model's, layer by layer
    model = [(c.cycles, c.reads, c.writes) for c in cost(program)]
    assert [tuple(row) for row in dev.layer_counters()] == model


def test_array_accelerator_loads_the_program_image_word_by_word() -> None:
    qg = _model(8)
    program = compile_graph(qg, ArrayConfig(pes=4, mem_words=4096, wbuf_words=256))
    acc = ArrayAccelerator(program, family="ice40")
    image = acc.weight_image()
    assert len(image) == acc.load_bytes == 2 * program.image.size
    words = np.frombuffer(image, "<u2")
    assert np.array_equal(words, program.image.astype(np.uint16))
    assert ArrayAccelerator(program).load_bytes == 0  # baked into the memory elsewhere
    assert ArrayAccelerator(program, layer_counters=False).layer_words == 0
    assert acc.work_cycles == totals(program)[0]
    # a core built without what the program needs is refused, naming what is missing
    assert acc.core.lacks(program) == []
    with pytest.raises(ShapeError,
                       match=r"without a 22-bit accumulator \(built with 20\), B8 lanes"):
        ArrayAccelerator(program, build={"acc_bits": 20, "modes": {Mode.B4}})
