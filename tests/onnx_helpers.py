"""Shared test helpers: building small ONNX models, running onnxruntime as the float peer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"


def tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[int | str], int]],
    outputs: Sequence[tuple[str, Sequence[int | str] | None, int]],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 13,
    name: str = "test",
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """A checked ONNX model. Shapes may use strings for symbolic dims; None = unknown shape."""
    graph = helper.make_graph(
        list(nodes),
        name,
        [helper.make_tensor_value_info(n, t, list(s)) for n, s, t in inputs],
        [helper.make_tensor_value_info(n, t, None if s is None else list(s))
         for n, s, t in outputs],
        [tensor(k, v) for k, v in (initializers or {}).items()],
    )
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    # IR version 8 is accepted by onnxruntime for every opset used here
    model = helper.make_model(graph, opset_imports=imports, ir_version=8)
    if any(s is None for _, s, _ in outputs):
        model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False) -> list:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = float(np.abs(b).max())
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return diff / scale if scale else diff


FLOAT = TensorProto.FLOAT
INT8 = TensorProto.INT8
UINT8 = TensorProto.UINT8
INT64 = TensorProto.INT64


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
