"""The PE array's hardware (`ArrayCore`) against its instruction-level model, in pysim.

After a run, every memory word equals the machine model's (which equals golden on the
outputs), and the hardware's counters (cycles, reads, writes) equal the cost model's.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from accelgen import golden
from accelgen.array.compiler import (
    GENERAL_CORE,
    ArrayConfig,
    NotOnArray,
    compile_graph,
)
from accelgen.array.machine import cost, execute, totals
from accelgen.compress import QuantConfig, quantize
from accelgen.frontend import load_model
from accelgen.sim.array import simulate_array_pysim
from tests.onnx_helpers import MLPERF
from tests.test_array import REFUSALS, _golden_outputs, _net


def _compare(qg, config: ArrayConfig, family: str | None, seed: int) -> None:
    refused = ""
    try:
        program = compile_graph(qg, config)
    except NotOnArray as e:  # extreme mixed widths: shifts the array refuses, by name
        refused = str(e)
    if refused:
        assert any(why in refused for why in REFUSALS)
        reject()
    t = qg.tensors[qg.inputs[0].tensor]
    x = np.random.default_rng(seed).integers(t.qmin, t.qmax + 1, size=(1, *t.shape))
    y, mem = execute(program, x, memory=True)
    got = simulate_array_pysim(program, x, family=family)
    assert np.array_equal(got.memory, mem[0] & 0xFFFF)
    assert tuple(got.counters[0]) == totals(program)
    assert [tuple(row) for row in got.layer_counters[0]] == [
        (c.cycles, c.reads, c.writes) for c in cost(program)]
    qo = qg.outputs[0]
    assert np.array_equal(y.reshape(1, -1)[:, qo.layout.reshape(-1)], _golden_outputs(qg, x))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c_in=st.integers(1, 3), c1=st.sampled_from([4, 6, 8]),
       k=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.integers(1, 2),
       pads=st.lists(st.integers(0, 1), min_size=4, max_size=4), depthwise=st.booleans(),
       residual=st.booleans(), pool=st.sampled_from(["none", "max", "avg"]),
       bits=st.lists(st.sampled_from([4, 5, 8, 12, 16]), min_size=6, max_size=6),
       pes=st.sampled_from([4, 8]), family=st.sampled_from([None, "ice40"]),
       folds=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_array_core_equals_machine_model(c_in, c1, k, stride, pads, depthwise, residual, pool,
                                         bits, pes, family, folds, seed) -> None:
    """Random small networks (every layer at its own width), on 4 or 8 PEs, behavioural (up
    to 3 output channels per PE per pass) or with the iCE40 PE's two-cycle 16-bit products:
    memory, outputs and counters."""
    hw = 5
    if residual:
        stride, k, pads = 1, (3, 3), [1, 1, 1, 1]
    rng = np.random.default_rng(seed)
    graph = _net(rng, c_in, c1, k, stride, pads, depthwise, residual, pool, hw)
    layer_bits = dict(zip([la.name for la in graph.layers], bits * 4, strict=False))
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, c_in, hw, hw)).astype(np.float32),
                     QuantConfig(weight_bits=bits[0], act_bits=bits[1], calibration="max",
                                 layer_bits=layer_bits))
    config = ArrayConfig(pes=pes, mem_words=4096, wbuf_words=256,
                         word16_cycles=2 if family == "ice40" else 1,
                         folds=1 if family == "ice40" else folds)
    _compare(qg, config, family, seed)


def test_global_max_pool() -> None:
    """A max pool whose window is its whole input (the frontend makes it a global max pool;
    hypothesis found the array without it)."""
    rng = np.random.default_rng(0)
    graph = _net(rng, 1, 4, (2, 2), 2, [0, 0, 0, 0], False, False, "max", 5)
    assert any(type(la).__name__ == "GlobalMaxPool" for la in graph.layers)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, 1, 5, 5)).astype(np.float32),
                     QuantConfig(weight_bits=4, act_bits=4, calibration="max"))
    _compare(qg, ArrayConfig(pes=4, mem_words=4096, wbuf_words=256), None, 0)


@pytest.mark.parametrize(("bits", "family", "pes", "folds"),
                         [(8, None, 8, 1), (4, "ice40", 8, 1), (16, "ice40", 8, 1),
                          (8, None, 4, 2), (4, None, 4, 4)])
def test_residual_block_with_pools(bits: int, family: str | None, pes: int, folds: int) -> None:
    """Stem, depthwise, pointwise, residual add, max pool, global average pool, dense; on 4
    PEs, the 8-channel convolutions as one group of 2 channels a PE (and of 4, the last
    two channels computed for nothing)."""
    rng = np.random.default_rng(3)
    graph = _net(rng, 3, 8, (3, 3), 1, [1, 1, 1, 1], True, True, "max", 8)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32),
                     QuantConfig(weight_bits=bits, act_bits=bits, calibration="max"))
    config = ArrayConfig(pes=pes, mem_words=8192, wbuf_words=512,
                         word16_cycles=2 if family == "ice40" else 1, folds=folds)
    program = compile_graph(qg, config)
    assert max(lc.fold for lc in program.code) == min(folds, 2)
    _compare(qg, config, family, 3)


# ------------------------------------------------------------------ whole models, compiled

needs_verilator = pytest.mark.skipif(
    shutil.which("verilator") is None and not os.environ.get("CI"),
    reason="Verilator is not installed (apt-get install verilator); CI installs it",
)
UP5K = ArrayConfig(pes=8, mem_words=65536, wbuf_words=512, word16_cycles=2)
# a core with every mode, operation, shift and field width: one compiled model serves every
# program (a build specialises the core to its program: `Program.needs`)
GENERAL = GENERAL_CORE


def _whole(qg, n: int = 2, specialised: bool = False) -> None:
    from accelgen.sim.array import simulate_array

    program = compile_graph(qg, UP5K)
    t = qg.tensors[qg.inputs[0].tensor]
    x = np.random.default_rng(5).integers(t.qmin, t.qmax + 1, size=(n, *t.shape))
    r = simulate_array(program, x, family="ice40", build=None if specialised else GENERAL)
    want = golden.run_ir(qg, {qg.inputs[0].tensor: x})[qg.outputs[0].tensor]
    assert np.array_equal(r.outputs, want)
    assert all(tuple(c) == totals(program) for c in r.counters)
    model = [(c.cycles, c.reads, c.writes) for c in cost(program)]
    assert all([tuple(row) for row in layers] == model for layers in r.layer_counters)


@needs_verilator
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_default_model_on_the_up5k_array_compiled(bits: int) -> None:
    """The default model on the iCEBreaker's array (iCE40 PEs: 16-bit products in two
    cycles), through Verilator: outputs equal golden, counters equal the model per layer."""
    from accelgen.cli import quantized_for

    _whole(quantized_for("dscnn_fmnist", calib=None, bits=bits))


@needs_verilator
@pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models absent")
@pytest.mark.parametrize("bits", [4, 8])
def test_resnet8_on_the_up5k_array_compiled(bits: int) -> None:
    """MLPerf Tiny ResNet-8, which the streaming pipeline cannot hold on the UP5K, on its
    array at 8 and 4 bits (16 bits needs twice the memory)."""
    graph = load_model(MLPERF / "pretrainedResnet.onnx")
    rng = np.random.default_rng(0)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32),
                     QuantConfig(weight_bits=bits, act_bits=bits))
    _whole(qg, specialised=bits == 8)  # (the 8-bit core is the one built for the iCEBreaker)


@needs_verilator
@pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models absent")
def test_resnet8_mixed_widths_on_the_up5k_array_compiled() -> None:
    graph = load_model(MLPERF / "pretrainedResnet.onnx")
    names = [la.name for la in graph.layers]
    bits = dict.fromkeys(names, 4)
    bits[names[0]] = 8
    rng = np.random.default_rng(0)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32),
                     QuantConfig(layer_bits=bits))
    _whole(qg)
