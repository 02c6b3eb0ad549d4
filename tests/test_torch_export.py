"""A CNN trained here in PyTorch and exported to ONNX (TorchScript exporter at several opsets, and
the dynamo exporter), imported and checked against PyTorch and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from accelgen import reference
from accelgen.frontend import load_model
from accelgen.ir import Add, Conv2d, Dense
from tests.onnx_helpers import ort_run, rel_err

torch = pytest.importorskip("torch", reason="PyTorch is in the `train` extra")
pytestmark = pytest.mark.torch
nn = torch.nn


class SmallNet(nn.Module):
    """Stem conv, a depthwise-separable block with a residual add, pooling, dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False),
                                nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 4))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.pw(self.dw(x)))
        return self.head(self.pool(x))


@pytest.fixture(scope="module")
def trained() -> tuple:
    """SmallNet trained for a few hundred steps on a synthetic 4-class pattern task."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 4, 2048)
    data = protos[labels] + 0.8 * rng.standard_normal((2048, 1, 16, 16)).astype(np.float32)
    x_all, y_all = torch.from_numpy(data), torch.from_numpy(labels)
    net = SmallNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _step in range(200):
        idx = torch.randint(0, 2048, (64,))
        loss = nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x_all).argmax(1) == y_all).float().mean().item()
    assert acc > 0.9, f"the test network did not learn ({acc:.2f})"
    return net, data[:32]


def _export(net, path, opset: int, dynamo: bool) -> None:
    x = torch.zeros(1, 1, 16, 16)
    kwargs = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    if dynamo:
        torch.onnx.export(net, (x,), str(path), dynamo=True, **kwargs)
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False,
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, **kwargs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("opset", "dynamo"), [(9, False), (11, False), (13, False), (17, False),
                                               (18, True)])
def test_pytorch_export_imports_and_matches(trained, tmp_path, opset: int, dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    net, x = trained
    path = tmp_path / f"net{opset}.onnx"
    _export(net, path, opset, dynamo)
    graph = load_model(path)
    # BatchNorm folded; depthwise recognised; residual add kept
    convs = [la for la in graph.layers if isinstance(la, Conv2d)]
    assert len(convs) == 3
    assert convs[1].is_depthwise and convs[1].depth_multiplier == 2
    assert graph.count(Add) == 1 and graph.count(Dense) == 1
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    batch = x if not dynamo else x[:1]
    ours = reference.run(graph, batch)[graph.outputs[0].onnx_name]
    assert rel_err(ours, expected[: len(batch)]) <= 1e-4
    import onnx

    theirs = ort_run(onnx.load(path), {graph.inputs[0].onnx_name: batch})[0]
    assert rel_err(ours, theirs) <= 1e-4
