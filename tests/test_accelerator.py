"""Whole networks: the generated accelerator against the golden model in Amaranth's simulator,
the cycle model against simulated cycles, the scheduler's decisions, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from accelgen.zoo import MODELS
from onnx import helper

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.compress import quantize
from accelgen.devices import device
from accelgen.frontend import load_model
from accelgen.scheduler import DoesNotFit, plan
from accelgen.sim import simulate
from tests.onnx_helpers import FLOAT, MLPERF, make_model


@pytest.fixture(scope="module")
def residual_net() -> tuple:
    """Stem, depthwise, pointwise with a residual add, max pool, global pool, dense."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "pw"], ["c3"]),
        helper.make_node("Add", ["c3", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r3"]),
        helper.make_node("MaxPool", ["r3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    inits = {
        "w1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "dw": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5,
        "pw": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.5,
        "fc": rng.standard_normal((5, 8)).astype(np.float32),
        "fcb": rng.standard_normal(5).astype(np.float32) * 0.1,
    }
    model = make_model(nodes, [("x", ["N", 1, 12, 12], FLOAT)], [("logits", None, FLOAT)], inits)
    graph = load_model(model)
    qg, _ = quantize(graph, rng.uniform(0, 1, (64, 1, 12, 12)).astype(np.float32))
    x = rng.uniform(0, 1, (3, 1, 12, 12)).astype(np.float32)
    return qg, x


@pytest.mark.parametrize("board", ["ice40", "ecp5", "gowin"])
def test_residual_network_bit_exact_and_cycle_model(residual_net: tuple, board: str) -> None:
    qg, x = residual_net
    p = plan(qg, device(board))
    assert p.fits
    assert p.fifo_depths  # the residual skip path has its FIFO
    acc = Accelerator(p)
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    want = golden.logits(qg, x)
    one = simulate(acc, x_ir)
    assert np.array_equal(one.logits, want)
    assert np.array_equal(one.classes, want.argmax(1))
    # the hardware's latency counter measures what the testbench measured
    assert abs(one.counter_latency - int(one.cycles[-1])) <= 1
    # seeded random backpressure on input and output changes nothing
    for seed in (1, 2):
        stressed = simulate(acc, x_ir, back_to_back=True, seed=seed, idle=0.3, busy=0.4)
        assert np.array_equal(stressed.logits, want)


@pytest.mark.parametrize("board", ["ice40", "ecp5", "gowin"])
def test_residual_network_steady_state_interval(residual_net: tuple, board: str) -> None:
    """The interval between images is the plan's (the coupled pipeline's,
    `accelgen.scheduler.flow`), within 5 %."""
    qg, x = residual_net
    p = plan(qg, device(board))
    acc = Accelerator(p)
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    steady = simulate(acc, np.concatenate([x_ir] * 2), back_to_back=True)
    interval = float(np.median(steady.cycles[2:]))
    assert abs(interval - p.ii_cycles) <= 0.05 * p.ii_cycles, (interval, p.ii_cycles)


def test_fps_target_and_utilisation(residual_net: tuple) -> None:
    qg, _ = residual_net
    fast = plan(qg, device("ecp5"))
    slow = plan(qg, device("ecp5"), fps=fast.fps / 4)
    assert slow.fps >= fast.fps / 4 * 0.999
    assert slow.multipliers < fast.multipliers
    assert 0.0 < fast.mac_utilization <= 1.0
    s = fast.summary()
    for key in ("fits", "clock_mhz", "cycles_per_image", "fps", "mac_utilization", "resources"):
        assert key in s
    assert set(s["resources"]) == {"lut", "ff", "bram", "spram", "dsp"}


@pytest.mark.skipif(not MLPERF.is_dir(), reason="MLPerf Tiny models absent")
def test_does_not_fit_names_layers_and_remedies() -> None:
    graph = load_model(MLPERF / "pretrainedResnet.onnx")
    rng = np.random.default_rng(0)
    qg, _ = quantize(graph, rng.uniform(0, 1, (16, 3, 32, 32)).astype(np.float32))
    with pytest.raises(DoesNotFit) as info:
        plan(qg, device("ice40"))
    err = info.value
    assert "iCE40UP5K" in str(err) and "bigger device" in str(err)
    assert len(err.table) >= len(qg.layers)
    assert {"layer", "lut", "bram", "dsp"} <= set(err.table[0])


def test_estimate_cli_json_and_does_not_fit(tmp_path) -> None:
    if not MLPERF.is_dir():
        pytest.skip("MLPerf Tiny models absent")
    kws = str(MLPERF / "kws_ref_model_float32_tf2onnx.onnx")
    proc = subprocess.run([sys.executable, "-m", "accelgen", "estimate", kws, "--board", "ecp5",
                           "--json", "--calib-data", "random", "--arch", "pipeline"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fits"] and doc["fps"] > 0 and 0 < doc["mac_utilization"] <= 1
    assert doc["resources"]["dsp"]["available"] == 156
    res = str(MLPERF / "pretrainedResnet.onnx")
    proc = subprocess.run([sys.executable, "-m", "accelgen", "estimate", res, "--board", "ice40",
                           "--calib-data", "random", "--arch", "pipeline"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "does not fit" in proc.stdout and "budget" in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not MLPERF.is_dir(), reason="MLPerf Tiny models absent")
def test_kws_dscnn_bit_exact_in_pysim() -> None:
    """The MLPerf Tiny KWS DS-CNN, quantized by accelgen, on three inputs (10x4 stem kernel)
    sent back to back: bit-exact, and the third image follows the second after the plan's
    interval (the whole network's cycle model), within 5 %."""
    graph = load_model(MLPERF / "kws_ref_model_float32_tf2onnx.onnx")
    rng = np.random.default_rng(0)
    qg, _ = quantize(graph, (rng.uniform(-1, 1, (64, 49, 10, 1)) * 30).astype(np.float32))
    p = plan(qg, device("ecp5"))
    x = (rng.uniform(-1, 1, (3, 49, 10, 1)) * 30).astype(np.float32)
    result = simulate(Accelerator(p), golden.quantize_inputs(qg, x)[qg.inputs[0].tensor],
                      back_to_back=True)
    assert np.array_equal(result.logits, golden.logits(qg, x))
    assert abs(result.cycles[2] - p.ii_cycles) <= 0.05 * p.ii_cycles, (result.cycles, p)


@pytest.mark.slow
@pytest.mark.skipif(not MODELS["dscnn_fmnist"].available, reason="default model not shipped")
def test_default_model_bit_exact_in_pysim_on_real_images() -> None:
    from accelgen.data import load_npz

    entry = MODELS["dscnn_fmnist"]
    graph = load_model(entry.path())
    qg, _ = quantize(graph, load_npz(entry.path("calib_data")).x)
    evaluation = load_npz(entry.path("eval_data"))
    # the ULX3S-85F plan (the fastest to simulate: 7,056 cycles per image); four images back
    # to back, each overlapping the one before in the pipeline
    p = plan(qg, device("ecp5"))
    x = evaluation.x[:4]
    result = simulate(Accelerator(p), golden.quantize_inputs(qg, x)[qg.inputs[0].tensor],
                      back_to_back=True)
    assert np.array_equal(result.logits, golden.logits(qg, x))
    # the whole network's cycle model: the interval between the last images
    assert abs(result.cycles[3] - p.ii_cycles) <= 0.05 * p.ii_cycles, (result.cycles, p)


def test_dsp_block_shared_by_two_stages_bit_exact(residual_net: tuple) -> None:
    """Two stages with a product left over share one DSP block (its two halves): here the stem
    puts 7 of its 8 products on DSPs, the last in a block shared with the dense layer."""
    qg, x = residual_net
    p = plan(qg, device("ice40"))
    stages = []
    for s in p.stages:
        if s.layer == "Conv_0":
            assert s.multipliers == 8
            s = dataclasses.replace(s, dsp_blocks=3, shared_dsp=0)
        elif s.kind == "dense":
            s = dataclasses.replace(s, dsp_blocks=0, shared_dsp=0)
        stages.append(s)
    shared = dataclasses.replace(p, stages=tuple(stages))
    acc = Accelerator(shared)
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    result = simulate(acc, x_ir, back_to_back=True, seed=3, idle=0.2, busy=0.3)
    assert np.array_equal(result.logits, golden.logits(qg, x))


def test_scheduler_pairs_odd_products_into_shared_blocks() -> None:
    """The default model on the UP5K: every 8-bit product on a DSP block, two to a block (the
    single products of depthwise and dense stages paired into shared blocks), no block half
    empty."""
    from accelgen.cli import quantized_for

    p = plan(quantized_for(None), device("ice40"))
    on_dsp = sum(2 * s.dsp_blocks + (s.shared_dsp >= 0) for s in p.stages)
    assert on_dsp == p.multipliers and p.multipliers % 2 == 0
    assert p.resources.dsp == p.multipliers // 2 <= 8
    blocks: dict[int, int] = {}
    for s in p.stages:
        if s.shared_dsp >= 0:
            blocks[s.shared_dsp] = blocks.get(s.shared_dsp, 0) + 1
    assert blocks and all(n == 2 for n in blocks.values())
