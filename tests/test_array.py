"""The PE array's instruction set, compiler and instruction-level machine model.

The machine runs a compiled program from the bits of its memory image (packed lanes, offset
codes, folded biases); every test compares its outputs with the golden model using ``==``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from onnx import helper

from accelgen import golden
from accelgen.array.compiler import (
    ArrayConfig,
    DoesNotFitArray,
    NotOnArray,
    compile_graph,
    tensor_modes,
)
from accelgen.array.isa import FIELDS, WORDS, Instr, Mode, Op, decode, encode
from accelgen.array.machine import cost, run_graph_outputs
from accelgen.compress import QuantConfig, quantize
from accelgen.errors import ShapeError
from accelgen.frontend import load_model
from tests.onnx_helpers import FLOAT, MLPERF, make_model

UP5K = ArrayConfig(pes=8, mem_words=65536, wbuf_words=512, word16_cycles=2)
BIG = ArrayConfig(pes=8, mem_words=1 << 20, wbuf_words=4096)
# what the compiler refuses by name in extreme mixed widths (random networks skip them)
REFUSALS = ("shift", "alignment", "lane accumulators")


def _golden_outputs(qg, x_ir: np.ndarray) -> np.ndarray:
    qo = qg.outputs[0]
    y = golden.run_ir(qg, {qg.inputs[0].tensor: x_ir})[qo.tensor]
    return y.reshape(y.shape[0], -1)[:, qo.layout.reshape(-1)]


def _random_inputs(qg, n: int, seed: int) -> np.ndarray:
    t = qg.tensors[qg.inputs[0].tensor]
    rng = np.random.default_rng(seed)
    return rng.integers(t.qmin, t.qmax + 1, size=(n, *t.shape))


def _check(qg, config: ArrayConfig = BIG, n: int = 2, seed: int = 0):
    refused = ""
    try:
        program = compile_graph(qg, config)
    except NotOnArray as e:  # extreme mixed widths: shifts or sums the array refuses, by name
        refused = str(e)
    if refused:
        assert any(why in refused for why in REFUSALS)
        reject()
    x = _random_inputs(qg, n, seed)
    got = run_graph_outputs(program, qg, x)
    assert np.array_equal(got, _golden_outputs(qg, x))
    return program


# ------------------------------------------------------------------ instruction set


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_instructions_round_trip_through_memory_words(data) -> None:
    kw = {}
    for name, bits, signed_ in FIELDS:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed_ else (0, (1 << bits) - 1)
        kw[name] = data.draw(st.integers(lo, hi), label=name)
    instr = Instr(**kw)
    words = encode(instr)
    assert len(words) == WORDS and all(0 <= w < 1 << 16 for w in words)
    assert decode(words) == instr


def test_instruction_field_out_of_range_is_named() -> None:
    with pytest.raises(ShapeError, match=r"field lo = 70000"):
        Instr(op=Op.CONV, lo=70000)
    with pytest.raises(ShapeError, match=rf"instruction is {WORDS} words, not 3"):
        decode([0, 0, 0])


# ------------------------------------------------------------------ random networks


def _net(rng: np.random.Generator, c_in: int, c1: int, k: tuple[int, int], stride: int,
         pads: list[int], depthwise: bool, residual: bool, pool: str, hw: int):
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=pads,
                              strides=[stride, stride]),
             helper.make_node("Relu", ["c1"], ["r1"])]
    inits = {"w1": rng.standard_normal((c1, c_in, *k)).astype(np.float32) * 0.5,
             "b1": rng.standard_normal(c1).astype(np.float32) * 0.1}
    last = "r1"
    if depthwise:
        nodes += [helper.make_node("Conv", [last, "dw"], ["c2"], pads=[1, 1, 1, 1], group=c1),
                  helper.make_node("Relu", ["c2"], ["r2"])]
        inits["dw"] = rng.standard_normal((c1, 1, 3, 3)).astype(np.float32) * 0.5
        last = "r2"
    nodes.append(helper.make_node("Conv", [last, "pw"], ["c3"]))
    inits["pw"] = rng.standard_normal((c1, c1, 1, 1)).astype(np.float32) * 0.5
    last = "c3"
    if residual:
        nodes += [helper.make_node("Add", [last, "r1"], ["a"])]
        last = "a"
    nodes.append(helper.make_node("Relu", [last], ["r3"]))
    last = "r3"
    if pool == "max":
        nodes.append(helper.make_node("MaxPool", [last], ["p"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        last = "p"
    elif pool == "avg":
        nodes.append(helper.make_node("AveragePool", [last], ["p"], kernel_shape=[2, 2],
                                      strides=[1, 1]))
        last = "p"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1)]
    inits["fc"] = rng.standard_normal((5, c1)).astype(np.float32)
    inits["fcb"] = rng.standard_normal(5).astype(np.float32) * 0.1
    model = make_model(nodes, [("x", ["N", c_in, hw, hw], FLOAT)], [("logits", None, FLOAT)],
                       inits)
    return load_model(model)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c_in=st.integers(1, 5), c1=st.sampled_from([3, 4, 8, 12]),
       k=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.integers(1, 2),
       pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), depthwise=st.booleans(),
       residual=st.booleans(), pool=st.sampled_from(["none", "max", "avg"]),
       bits=st.lists(st.sampled_from([3, 4, 6, 8, 11, 16]), min_size=6, max_size=6),
       pes=st.sampled_from([4, 8, 12]), folds=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_random_networks_equal_golden(c_in, c1, k, stride, pads, depthwise, residual, pool,
                                      bits, pes, folds, seed) -> None:
    """Convolutions of any kernel, stride and (asymmetric) padding, depthwise, residual adds,
    pools and a dense layer, every layer at its own bit width (mixed 3..16, so lanes of 4, 8
    and 16 bits meet in one program), on arrays of 4, 8 and 12 PEs computing up to 4 output
    channels each per pass."""
    hw = 9
    if residual and stride != 1:
        stride = 1
    if residual:  # the add needs the pointwise output shaped like the stem's
        k = (2 * (k[0] // 2) + 1, 2 * (k[1] // 2) + 1)
        pads = [k[0] // 2, k[1] // 2, k[0] // 2, k[1] // 2]
    rng = np.random.default_rng(seed)
    graph = _net(rng, c_in, c1, k, stride, pads, depthwise, residual, pool, hw)
    names = [la.name for la in graph.layers]
    layer_bits = dict(zip(names, bits * 4, strict=False))
    config = QuantConfig(weight_bits=bits[0], act_bits=bits[1], calibration="max",
                         layer_bits=layer_bits)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, c_in, hw, hw)).astype(np.float32), config)
    _check(qg, ArrayConfig(pes=pes, mem_words=1 << 20, wbuf_words=4096, folds=folds), n=2,
           seed=seed)


# ------------------------------------------------------------------ whole models


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_default_model_equal_golden_at_each_width(bits: int) -> None:
    from accelgen.cli import quantized_for

    qg = quantized_for("dscnn_fmnist", calib=None, bits=bits)
    modes = set(tensor_modes(qg).values())
    assert Mode.for_bits(bits) in modes
    _check(qg, n=3)


def _mlperf(fname: str, shape: tuple[int, ...], config: QuantConfig | None = None):
    graph = load_model(MLPERF / fname)
    rng = np.random.default_rng(0)
    calib = (rng.uniform(-1, 1, (16, *shape)) * (30 if "kws" in fname else 1)).astype(np.float32)
    qg, _ = quantize(graph, calib, config or QuantConfig())
    return qg


needs_mlperf = pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models absent")


@needs_mlperf
def test_resnet8_fits_the_up5k_memory_at_8_bits_and_equals_golden() -> None:
    """ResNet-8 (78 k parameters) in the iCEBreaker's 128 KB of SPRAM: 65,273 of 65,536 words
    (feature maps placed ping-pong, the residual add writing over its dying input)."""
    qg = _mlperf("pretrainedResnet.onnx", (3, 32, 32))
    program = _check(qg, UP5K, n=2)
    assert program.words <= UP5K.mem_words


@needs_mlperf
def test_resnet8_at_16_bits_does_not_fit_the_up5k() -> None:
    qg = _mlperf("pretrainedResnet.onnx", (3, 32, 32), QuantConfig(weight_bits=16,
                                                                   act_bits=16))
    with pytest.raises(NotOnArray, match=r"kernel is 576 words; the PE weight buffers hold 512"):
        compile_graph(qg, UP5K)
    with pytest.raises(DoesNotFitArray, match=r"needs 1[0-9,]+ memory words .*has 65,536"):
        compile_graph(qg, ArrayConfig(pes=8, mem_words=65536, wbuf_words=1024))
    _check(qg, BIG, n=1)


@needs_mlperf
@pytest.mark.parametrize("bits", [4, 8])
def test_resnet8_speedup_and_memory_accesses_against_16_bits(bits: int) -> None:
    """The seed-001 figures from the counters' model: fewer cycles and fewer memory words at
    lower widths (lanes per word), on an array whose 16-bit products take one cycle."""
    qgs = {b: _mlperf("pretrainedResnet.onnx", (3, 32, 32), QuantConfig(weight_bits=b,
                                                                        act_bits=b))
           for b in (16, bits)}
    costs = {b: cost(compile_graph(qg, BIG)) for b, qg in qgs.items()}
    cycles = {b: sum(c.cycles for c in cs) for b, cs in costs.items()}
    accesses = {b: sum(c.accesses for c in cs) for b, cs in costs.items()}
    speedup = cycles[16] / cycles[bits]
    reduction = 1 - accesses[bits] / accesses[16]
    assert speedup >= {8: 1.8, 4: 3.0}[bits]
    assert reduction >= {8: 0.49, 4: 0.70}[bits]


@needs_mlperf
@pytest.mark.parametrize(("fname", "shape"), [
    ("kws_ref_model_float32_tf2onnx.onnx", (49, 10, 1)),
    ("vww_96_float_tf2onnx.onnx", (96, 96, 3)),
])
def test_mlperf_models_equal_golden(fname: str, shape: tuple[int, ...]) -> None:
    qg = _mlperf(fname, shape)
    _check(qg, n=2)


# ------------------------------------------------------------------ errors


def test_unsupported_layer_is_named_before_anything_is_placed() -> None:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], dilations=[2, 2]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = {"w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "fc": rng.standard_normal((3, 4 * 4 * 4)).astype(np.float32)}
    model = make_model(nodes, [("x", ["N", 1, 8, 8], FLOAT)], [("y", None, FLOAT)], inits)
    qg, _ = quantize(load_model(model), rng.uniform(-1, 1, (8, 1, 8, 8)).astype(np.float32))
    with pytest.raises(NotOnArray, match=r"QConv\): dilation \(2, 2\).*--arch pipeline"):
        compile_graph(qg)


def test_kernel_larger_than_the_weight_buffer_is_refused() -> None:
    from accelgen.cli import quantized_for

    qg = quantized_for("dscnn_fmnist", calib=None, bits=8)
    with pytest.raises(NotOnArray, match=r"kernel is \d+ words; the PE weight buffers hold 8"):
        compile_graph(qg, ArrayConfig(pes=8, wbuf_words=8))


def test_array_shape_is_checked() -> None:
    with pytest.raises(Exception, match=r"pes 6 must be a multiple of 4"):
        ArrayConfig(pes=6)
