"""The IR's own contract: shape rules, validation messages, counts, annotations."""

from __future__ import annotations

import numpy as np
import pytest

from accelgen.errors import ShapeError
from accelgen.ir import (
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    Dense,
    Graph,
    GraphInput,
    GraphOutput,
    MaxPool2d,
    QuantParams,
    Relu,
    Softmax,
    Tensor,
    window_output_size,
)


def conv(name: str = "c", c_in: int = 4, c_out: int = 8, k: int = 3, groups: int = 1,
         hw: tuple[int, int] = (8, 8), **kw: object) -> Conv2d:
    w = np.zeros((c_out, k, k, c_in // groups), np.float32)
    stride = kw.get("stride", (1, 1))
    out_hw = (1, 1) if min(stride) < 1 else window_output_size(
        hw, (k, k), stride, kw.get("padding", (0, 0, 0, 0)), kw.get("dilation", (1, 1)))
    out_hw = (max(out_hw[0], 1), max(out_hw[1], 1))
    return Conv2d(name=name, inputs=("x",), output="y", in_shapes=((*hw, c_in),),
                  out_shape=(*out_hw, c_out), weight=w, bias=np.zeros(c_out, np.float32),
                  groups=groups, **kw)


def test_conv_kinds_and_counts() -> None:
    dw = conv(c_in=8, c_out=16, groups=8, padding=(1, 1, 1, 1))
    assert dw.is_depthwise and dw.depth_multiplier == 2 and dw.kind == "depthwise"
    assert dw.out_shape == (8, 8, 16)
    assert dw.macs == 8 * 8 * 16 * 9 * 1 and dw.params == 16 * 9 + 16
    pw = conv(k=1)
    assert pw.is_pointwise and not pw.is_depthwise and pw.kind == "pointwise"
    stem = conv(c_in=1, c_out=4, groups=1)
    assert not stem.is_depthwise  # one input channel is not depthwise
    grouped = conv(c_in=4, c_out=8, groups=2)
    assert grouped.kind == "grouped" and grouped.macs == 6 * 6 * 8 * 9 * 2


def test_conv_rejects_bad_values_quoting_them() -> None:
    with pytest.raises(ShapeError, match="groups=3"):
        conv(c_in=4, c_out=8, groups=3)
    with pytest.raises(ShapeError, match=r"does not follow.*\(6, 6, 8\)"):
        Conv2d(name="c", inputs=("x",), output="y", in_shapes=((8, 8, 4),), out_shape=(8, 8, 8),
               weight=np.zeros((8, 3, 3, 4), np.float32), bias=np.zeros(8, np.float32))
    with pytest.raises(ShapeError, match="stride"):
        conv(stride=(0, 1))
    with pytest.raises(ShapeError, match="does not fit"):
        conv(k=3, hw=(2, 2))


def test_asymmetric_padding_and_dilation() -> None:
    c = conv(k=3, hw=(7, 5), padding=(1, 0, 2, 1), stride=(2, 1), dilation=(2, 1))
    # H: (7 + 3 - 5) // 2 + 1 = 3; W: (5 + 1 - 3) // 1 + 1 = 4
    assert c.out_shape[:2] == (3, 4)


def test_ceil_mode_drops_windows_starting_in_padding() -> None:
    # a ceil-mode window that would start in the bottom/right padding is dropped (ONNX, PyTorch):
    # 3 + 2 padding, kernel 2, stride 2: ceil gives 3 windows, the third starts on the padding
    assert window_output_size((3, 3), (2, 2), (2, 2), (1, 1, 1, 1), (1, 1), True) == (2, 2)
    assert window_output_size((4, 4), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True) == (3, 3)
    assert window_output_size((5, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True) == (3, 3)
    assert window_output_size((5, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False) == (2, 2)
    p = AvgPool2d(name="p", inputs=("x",), output="y", in_shapes=((5, 5, 2),), out_shape=(3, 3, 2),
                  kernel=(2, 2), stride=(2, 2), ceil_mode=True)
    assert p.describe() == "k2x2 s2x2 ceil"


def test_dense_and_simple_layers() -> None:
    d = Dense(name="fc", inputs=("x",), output="y", in_shapes=((2, 2, 3),), out_shape=(1, 1, 5),
              weight=np.zeros((5, 12), np.float32), bias=np.zeros(5, np.float32))
    assert d.macs == 60 and d.params == 65
    with pytest.raises(ShapeError, match="flattened input"):
        Dense(name="fc", inputs=("x",), output="y", in_shapes=((2, 2, 3),), out_shape=(1, 1, 5),
              weight=np.zeros((5, 11), np.float32), bias=np.zeros(5, np.float32))
    with pytest.raises(ShapeError, match="differ"):
        Add(name="a", inputs=("x", "z"), output="y", in_shapes=((2, 2, 3), (2, 2, 4)),
            out_shape=(2, 2, 3))
    cat = Concat(name="c", inputs=("x", "z"), output="y", in_shapes=((2, 2, 3), (2, 2, 4)),
                 out_shape=(2, 2, 7))
    assert cat.out_shape == (2, 2, 7)
    assert Softmax.host_side and not Relu.host_side
    mp = MaxPool2d(name="m", inputs=("x",), output="y", in_shapes=((4, 4, 2),),
                   out_shape=(2, 2, 2), kernel=(2, 2), stride=(2, 2))
    assert mp.macs == 0 and mp.params == 0


def test_weights_are_read_only() -> None:
    c = conv()
    with pytest.raises(ValueError, match="read-only"):
        c.weight[0, 0, 0, 0] = 1.0


def test_graph_validation() -> None:
    t = {"x": Tensor("x", (4, 4, 2)), "y": Tensor("y", (4, 4, 2))}
    gi = GraphInput("x", "in", (2, 4, 4), np.zeros((4, 4, 2), np.int64))
    go = GraphOutput("y", "out", (2, 4, 4), np.zeros((2, 4, 4), np.int64))
    relu = Relu(name="r", inputs=("x",), output="y", in_shapes=((4, 4, 2),), out_shape=(4, 4, 2))
    g = Graph("g", (gi,), (go,), t, (relu,))
    assert g.producer("y") is relu and g.consumers("x") == [relu]
    bad = Relu(name="r2", inputs=("z",), output="y", in_shapes=((4, 4, 2),), out_shape=(4, 4, 2))
    with pytest.raises(ShapeError, match="before anything defines it"):
        Graph("g", (gi,), (go,), {**t, "z": Tensor("z", (4, 4, 2))}, (bad,))
    with pytest.raises(ShapeError, match="written twice"):
        Graph("g", (gi,), (go,), t, (relu, relu.replace(name="r2")))
    with pytest.raises(ShapeError, match="two layers are named"):
        Graph("g", (gi,), (go,), {**t, "w": Tensor("w", (4, 4, 2))},
              (relu, relu.replace(output="w")))


def test_quant_params_rounding_follows_the_source() -> None:
    """ONNX rounds x/scale then adds the zero point; QONNX adds first (different at ties)."""
    x = np.array([0.5, 1.5, 2.5, -0.5], np.float32)
    qdq = QuantParams(scale=(1.0,), zero_point=(1.0,), bits=8, signed=True)
    qonnx = QuantParams(scale=(1.0,), zero_point=(1.0,), bits=8, signed=True, source="qonnx")
    np.testing.assert_array_equal(qdq.quantize(x), [1, 3, 3, 1])  # rint(x) + 1
    np.testing.assert_array_equal(qonnx.quantize(x), [2, 2, 4, 0])  # rint(x + 1)
    narrow = QuantParams(scale=(1.0,), zero_point=(0.0,), bits=4, signed=True, narrow=True)
    assert (narrow.qmin, narrow.qmax) == (-7, 7)
    u = QuantParams(scale=(1.0,), zero_point=(0.0,), bits=4, signed=False)
    assert (u.qmin, u.qmax) == (0, 15)
    with pytest.raises(ShapeError, match="positive"):
        QuantParams(scale=(0.0,), zero_point=(0.0,), bits=8, signed=True)


def test_graph_io_layouts_round_trip(rng: np.random.Generator) -> None:
    # an NCHW input: IR element (h, w, c) sits at model position c*H*W + h*W + w
    layout = np.arange(2 * 3 * 4).reshape(2, 3, 4).transpose(1, 2, 0)
    gi = GraphInput("x", "in", (2, 3, 4), layout)
    x = rng.standard_normal((5, 2, 3, 4)).astype(np.float32)
    ir = gi.to_ir(x)
    np.testing.assert_array_equal(ir, x.transpose(0, 2, 3, 1))
    go = GraphOutput("x", "out", (2, 3, 4), np.arange(24).reshape(3, 4, 2).transpose(2, 0, 1))
    np.testing.assert_array_equal(go.from_ir(ir), x)
