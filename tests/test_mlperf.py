"""The six MLPerf Tiny ONNX files: import, layer counts, and the float reference vs onnxruntime.

How the QDQ models are compared: the reference runs them in float with every QuantizeLinear /
DequantizeLinear pair applied as fake quantization on its tensor (the annotations the frontend
recorded). onnxruntime with graph optimizations disabled executes exactly that (Q and DQ as
separate float ops). We compare the int8 codes of the logits (the QuantizeLinear after the dense
layer) and of the model's int8 softmax output: top-1 must agree on every input and codes may
differ by at most 4 LSBs (measured: 3, on ResNet-8) where float32 summation order flips a
rounding tie upstream.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from accelgen import reference
from accelgen.frontend import load_model
from accelgen.ir import Add, Conv2d, Dense, GlobalAvgPool, Relu, Softmax
from tests.onnx_helpers import MLPERF, ort_run, rel_err

pytestmark = pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models/mlperf-tiny absent")

# file -> (Conv2d, of which depthwise, Relu, Add, GlobalAvgPool, Dense, Softmax)
EXPECTED = {
    "kws_ref_model_float32_tf2onnx.onnx": (9, 4, 9, 0, 1, 1, 1),
    "kws_ref_model_tf2onnx.onnx": (9, 4, 9, 0, 1, 1, 1),
    "pretrainedResnet.onnx": (9, 0, 7, 3, 1, 1, 1),
    "pretrainedResnet_quant_tf2onnx.onnx": (9, 0, 7, 3, 1, 1, 1),
    "vww_96_float_tf2onnx.onnx": (27, 13, 27, 0, 1, 1, 1),
    "vww_96_int8_tf2onnx.onnx": (27, 13, 27, 0, 1, 1, 1),
}
PARAMS = {"kws": 22_600, "Resnet": 77_700, "vww": 210_900}  # SOURCE.md, to 0.5 %


def _with_logits_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy of `model` that also outputs the tensor feeding its Softmax (integer codes for
    QDQ models: the QuantizeLinear output before the DequantizeLinear -> Softmax)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    logits = softmax.input[0]
    dq = producers.get(logits)
    if dq is not None and dq.op_type == "DequantizeLinear":
        logits = dq.input[0]
    out = onnx.shape_inference.infer_shapes(model)
    info = next(vi for vi in out.graph.value_info if vi.name == logits)
    out.graph.output.append(info)
    return out, logits


def _inputs(graph, n: int, seed: int) -> np.ndarray:
    gi = graph.inputs[0]
    rng = np.random.default_rng(seed)
    if gi.dtype == "int8":
        return rng.integers(-128, 128, size=(n, *gi.onnx_shape), dtype=np.int8)
    return rng.standard_normal((n, *gi.onnx_shape)).astype(np.float32)


@pytest.mark.parametrize("fname", sorted(EXPECTED))
def test_import_and_layer_counts(fname: str) -> None:
    graph = load_model(MLPERF / fname)
    conv, dw, relu, add, gap, dense, softmax = EXPECTED[fname]
    assert graph.count(Conv2d) == conv
    assert sum(isinstance(la, Conv2d) and la.is_depthwise for la in graph.layers) == dw
    assert graph.count(Relu) == relu
    assert graph.count(Add) == add
    assert graph.count(GlobalAvgPool) == gap
    assert graph.count(Dense) == dense
    assert graph.count(Softmax) == softmax
    assert len(graph.layers) == sum(EXPECTED[fname]) - dw
    key = next(k for k in PARAMS if k in fname)
    assert abs(graph.params - PARAMS[key]) <= 0.005 * PARAMS[key], graph.params
    if "int8" in fname or fname.startswith("kws_ref_model_tf2onnx") or "quant" in fname:
        assert graph.inputs[0].quant is not None
        assert all(la.weight_quant is not None for la in graph.layers if isinstance(la, Conv2d))


@pytest.mark.parametrize("fname", sorted(EXPECTED))
def test_reference_matches_onnxruntime(fname: str) -> None:
    model = onnx.load(MLPERF / fname)
    probe, logits = _with_logits_output(model)
    graph = load_model(probe)
    x = _inputs(graph, 20, seed=7)
    in_name = graph.inputs[0].onnx_name
    fixed_batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    runs = [ort_run(probe, {in_name: x[i : i + 1]}) for i in range(20)] if fixed_batch else None
    theirs = (
        [np.concatenate([r[k] for r in runs]) for k in range(2)]
        if runs else ort_run(probe, {in_name: x})
    )
    ours = reference.run(graph, x)
    out_name = model.graph.output[0].name
    if graph.outputs[0].quant is None:
        # float model: logits within 1e-4 relative error
        assert rel_err(ours[logits], theirs[1]) <= 1e-4
        assert rel_err(ours[out_name], theirs[0]) <= 1e-4
    else:
        lo, lt = ours[logits].astype(int), theirs[1].astype(int)
        assert np.abs(lo - lt).max() <= 4, np.abs(lo - lt).max()
        assert (lo == lt).mean() >= 0.9
        so, st = ours[out_name].astype(int), theirs[0].astype(int)
        assert np.abs(so - st).max() <= 8
    assert (ours[out_name].argmax(1) == theirs[0].argmax(1)).all()


def test_inspect_cli_reports_layer_counts() -> None:
    path = MLPERF / "vww_96_int8_tf2onnx.onnx"
    proc = subprocess.run([sys.executable, "-m", "accelgen", "inspect", str(path), "--json"],
                          capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["total_layers"] == 57
    assert info["counts"] == {"Conv2d": 27, "Dense": 1, "GlobalAvgPool": 1, "Relu": 27,
                              "Softmax": 1}
    assert abs(info["total_params"] - 210_900) < 1_000
    table = subprocess.run([sys.executable, "-m", "accelgen", "inspect", str(path)],
                           capture_output=True, text=True, check=True).stdout
    assert "total: 57 layers (27 Conv2d, 1 Dense, 1 GlobalAvgPool, 27 Relu, 1 Softmax)" in table
    assert "int8 per-channel (qdq)" in table


def test_resnet8_pipeline_plan_on_ecp5_flows() -> None:
    """ResNet-8's downsampling blocks: the skip-path FIFO is sized in the beats of the tensor's
    producer, where it sits (sized in the wider consumer's beats it held a quarter of the rows
    the main path reads first, and the coupled pipeline deadlocked)."""
    from accelgen.compress import QuantConfig, quantize
    from accelgen.devices import device
    from accelgen.scheduler import plan
    from accelgen.scheduler.flow import pipeline_flow

    graph = load_model(MLPERF / "pretrainedResnet.onnx")
    rng = np.random.default_rng(0)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32),
                     QuantConfig())
    p = plan(qg, device("ecp5"))
    assert p.fits
    lanes_out = {s.layer: s.lanes_out for s in p.stages}
    for (tensor, _user), depth in p.fifo_depths.items():
        t = qg.tensors[tensor]
        producer = qg.producer(tensor)
        lanes = lanes_out[producer.name] if producer is not None else p.input_lanes
        assert depth * lanes >= 3 * t.shape[1] * t.shape[2]  # rows of the tensor, not beats
    assert pipeline_flow(p).interval == p.ii_cycles


def test_kws_plan_on_ecp5_runs_at_its_slowest_stage() -> None:
    """KWS's four equally slow pointwise stages each hold the coupled pipeline back by the same
    amount, so adding line-buffer rows to one buffer at a time shortened nothing (the plan ran
    at 10,185 cycles for a slowest stage of 8,000). The scheduler then tries every buffer at its
    most rows, trims each to the fewest that keep that interval, and gets the stage interval."""
    from accelgen.compress import QuantConfig, quantize
    from accelgen.devices import device
    from accelgen.scheduler import plan
    from accelgen.scheduler.flow import pipeline_flow

    graph = load_model(MLPERF / "kws_ref_model_float32_tf2onnx.onnx")
    rng = np.random.default_rng(0)
    qg, _ = quantize(graph, (rng.uniform(-1, 1, (64, 49, 10, 1)) * 30).astype(np.float32),
                     QuantConfig())
    p = plan(qg, device("ecp5"))
    assert p.fits
    assert p.ii_cycles <= 1.01 * p.stage_interval
    assert pipeline_flow(p).interval == p.ii_cycles
    assert p.mac_utilization >= 0.8
