"""QONNX `Quant` models: one built here in Brevitas' export style, one exported by Brevitas itself.

Peers: the `qonnx` package's own executor (`qonnx.core.onnx_exec.execute_onnx`, numpy
implementations of the custom ops) and, for the Brevitas model, Brevitas' PyTorch forward pass.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from accelgen import reference
from accelgen.frontend import load_model
from accelgen.ir import Conv2d, Dense
from tests.onnx_helpers import FLOAT, make_model, rel_err

QONNX_DOMAIN = "qonnx.custom_op.general"


def _quant(inp: str, out: str, prefix: str, signed: int, narrow: int) -> onnx.NodeProto:
    return helper.make_node(
        "Quant", [inp, f"{prefix}_scale", f"{prefix}_zp", f"{prefix}_bits"], [out],
        domain=QONNX_DOMAIN, signed=signed, narrow=narrow, rounding_mode="ROUND",
    )


def brevitas_style_model(rng: np.random.Generator):
    """8-bit input, 4-bit per-channel narrow weights, 4-bit unsigned ReLU, 3-bit dense weights."""
    c_out = 6
    w = rng.standard_normal((c_out, 2, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((5, c_out * 3 * 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(c_out, -1).max(1) / 7).reshape(c_out, 1, 1, 1).astype(np.float32)
    inits = {
        "in_scale": np.float32(2 / 128), "in_zp": np.float32(0), "in_bits": np.float32(8),
        "w": w, "w_scale": w_scale, "w_zp": np.float32(0), "w_bits": np.float32(4),
        "b": rng.standard_normal(c_out).astype(np.float32) * 0.1,
        "act_scale": np.float32(0.25), "act_zp": np.float32(0), "act_bits": np.float32(4),
        "fc": fc, "fc_scale": np.float32(np.abs(fc).max() / 3), "fc_zp": np.float32(0),
        "fc_bits": np.float32(3), "shape": np.array([-1, c_out * 9], np.int64),
    }
    nodes = [
        _quant("x", "xq", "in", signed=1, narrow=0),
        _quant("w", "wq", "w", signed=1, narrow=1),
        helper.make_node("Conv", ["xq", "wq", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        _quant("r", "rq", "act", signed=0, narrow=0),
        helper.make_node("MaxPool", ["rq"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        _quant("fc", "fcq", "fc", signed=1, narrow=1),
        helper.make_node("Gemm", ["f", "fcq"], ["y"], transB=1),
    ]
    return make_model(nodes, [("x", [1, 2, 6, 6], FLOAT)], [("y", [1, 5], FLOAT)], inits,
                      opset=13, extra_opsets={QONNX_DOMAIN: 1})


def test_brevitas_style_qonnx_matches_qonnx_executor(rng: np.random.Generator) -> None:
    qonnx_exec = pytest.importorskip("qonnx.core.onnx_exec")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    model = brevitas_style_model(rng)
    graph = load_model(model)
    conv = next(la for la in graph.layers if isinstance(la, Conv2d))
    dense = next(la for la in graph.layers if isinstance(la, Dense))
    wq = conv.weight_quant
    assert wq.bits == 4 and wq.per_channel and wq.narrow
    assert dense.weight_quant.bits == 3
    assert graph.inputs[0].layout.shape == (6, 6, 2)
    assert graph.tensors[graph.inputs[0].tensor].quant.bits == 8
    relu_out = next(la.output for la in graph.layers if la.op == "Relu")
    act = graph.tensors[relu_out].quant
    assert act.bits == 4 and not act.signed and act.source == "qonnx"

    wrapper = ModelWrapper(model).transform(InferShapes())
    for seed in range(5):
        x = np.random.default_rng(seed).uniform(-2, 2, (1, 2, 6, 6)).astype(np.float32)
        theirs = qonnx_exec.execute_onnx(wrapper, {"x": x})["y"]
        ours = reference.run(graph, x)["y"]
        assert rel_err(ours, theirs) <= 1e-5


def test_qonnx_weights_fold_to_their_quantized_values(rng: np.random.Generator) -> None:
    model = brevitas_style_model(rng)
    graph = load_model(model)
    conv = next(la for la in graph.layers if isinstance(la, Conv2d))
    q = conv.weight_quant
    scale = np.asarray(q.scale, np.float32).reshape(-1, 1, 1, 1)
    codes = conv.weight / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert np.abs(np.round(codes)).max() <= 7  # 4-bit narrow range


@pytest.mark.torch
def test_brevitas_exported_qonnx_matches_brevitas(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    qnn = pytest.importorskip("brevitas.nn")
    pytest.importorskip("onnxscript")
    from brevitas.export import export_qonnx

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(1, 8, 3, padding=1, weight_bit_width=4, bias=True)
            self.relu = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(8 * 4 * 4, 10, bias=True, weight_bit_width=6)

        def forward(self, x):
            x = self.pool(self.relu(self.conv(self.inp(x))))
            return self.fc(torch.flatten(x, 1))

    net = Net()
    net.train()
    with torch.no_grad():  # let the activation quantizers calibrate their scales
        for _ in range(8):
            net(torch.randn(16, 1, 8, 8))
    net.eval()
    path = tmp_path / "brevitas.onnx"
    export_qonnx(net, torch.randn(1, 1, 8, 8), str(path))
    graph = load_model(path)
    assert graph.count(Conv2d) == 1 and graph.count(Dense) == 1
    conv = next(la for la in graph.layers if isinstance(la, Conv2d))
    assert conv.weight_quant is not None and conv.weight_quant.bits == 4
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        expected = net(x)
    expected = getattr(expected, "value", expected).numpy()
    ours = reference.run(graph, x.numpy())[graph.outputs[0].onnx_name]
    assert rel_err(ours, expected) <= 1e-4
