"""Frontend + float reference against onnxruntime on models built here, op by op and pattern by
pattern: what PyTorch and tf2onnx write, at opsets 8 through 21."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from accelgen import reference
from accelgen.frontend import load_model
from accelgen.ir import AvgPool2d, Conv2d, Dense, GlobalAvgPool, Pad2d
from tests.onnx_helpers import FLOAT, INT64, make_model, ort_run, rel_err


def check_against_ort(model, x: np.ndarray, tol: float = 1e-5):
    graph = load_model(model)
    name = model.graph.input[0].name
    ours = reference.run(graph, {name: x})
    theirs = ort_run(model, {name: x})
    for out, ref in zip(model.graph.output, theirs, strict=True):
        got = ours[out.name]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        assert rel_err(got, ref) <= tol, rel_err(got, ref)
    return graph


# ---------------------------------------------------------------------------------------------
# convolution, every configuration the IR claims
# ---------------------------------------------------------------------------------------------


@st.composite
def conv_configs(draw: st.DrawFn) -> dict:
    groups_kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if groups_kind == "depthwise":
        c_in = draw(st.integers(1, 6))
        groups, c_out = c_in, c_in * draw(st.integers(1, 3))
    elif groups_kind == "grouped":
        groups = draw(st.integers(2, 3))
        c_in = groups * draw(st.integers(1, 3))
        c_out = groups * draw(st.integers(1, 3))
    else:
        groups, c_in, c_out = 1, draw(st.integers(1, 5)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 3)) for _ in range(4)]
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 12))
    return {
        "groups": groups, "c_in": c_in, "c_out": c_out, "k": (kh, kw), "d": (dh, dw),
        "pads": pads, "s": (sh, sw), "h": h, "w": w, "bias": draw(st.booleans()),
        "batch": draw(st.integers(1, 3)),
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv_matches_onnxruntime(cfg: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (cfg["c_out"], cfg["c_in"] // cfg["groups"], *cfg["k"])
    w = rng.standard_normal(shape).astype(np.float32)
    inits = {"W": w}
    ins = ["x", "W"]
    if cfg["bias"]:
        inits["B"] = rng.standard_normal(cfg["c_out"]).astype(np.float32)
        ins.append("B")
    node = helper.make_node("Conv", ins, ["y"], group=cfg["groups"], kernel_shape=list(cfg["k"]),
                            strides=list(cfg["s"]), pads=cfg["pads"], dilations=list(cfg["d"]))
    model = make_model([node], [("x", ["N", cfg["c_in"], cfg["h"], cfg["w"]], FLOAT)],
                       [("y", None, FLOAT)], inits)
    x = rng.standard_normal((cfg["batch"], cfg["c_in"], cfg["h"], cfg["w"])).astype(np.float32)
    graph = check_against_ort(model, x, tol=1e-5)
    (conv,) = graph.layers
    assert isinstance(conv, Conv2d)
    assert conv.groups == cfg["groups"]
    assert conv.padding == tuple(cfg["pads"])
    if cfg["groups"] == cfg["c_in"] > 1:
        assert conv.is_depthwise and conv.depth_multiplier == cfg["c_out"] // cfg["c_in"]
    oh, ow, _ = conv.out_shape
    per_output = cfg["k"][0] * cfg["k"][1] * (cfg["c_in"] // cfg["groups"])
    assert conv.macs == oh * ow * cfg["c_out"] * per_output
    assert conv.params == w.size + cfg["c_out"]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(auto_pad: str, rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 3, 4, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W"], ["y"], auto_pad=auto_pad, strides=[2, 2])
    model = make_model([node], [("x", [1, 3, 9, 10], FLOAT)], [("y", None, FLOAT)], {"W": w})
    check_against_ort(model, rng.standard_normal((1, 3, 9, 10)).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    op=st.sampled_from(["MaxPool", "AveragePool"]),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.lists(st.integers(0, 1), min_size=4, max_size=4),
    ceil=st.booleans(),
    include=st.booleans(),
    hw=st.tuples(st.integers(4, 11), st.integers(4, 11)),
    seed=st.integers(0, 2**16),
)
def test_pool_matches_onnxruntime(op, k, s, pads, ceil, include, hw, seed) -> None:
    pads = [min(p, k[i % 2] - 1) for i, p in enumerate(pads)]  # ONNX: pad < kernel
    attrs = {"kernel_shape": list(k), "strides": list(s), "pads": pads, "ceil_mode": int(ceil)}
    if op == "AveragePool":
        attrs["count_include_pad"] = int(include)
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)],
                       [("x", ["N", 3, *hw], FLOAT)], [("y", None, FLOAT)], opset=13)
    x = np.random.default_rng(seed).standard_normal((2, 3, *hw)).astype(np.float32)
    check_against_ort(model, x)


def test_global_pools_and_full_window_average(rng: np.random.Generator) -> None:
    nodes = [
        helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[5, 7]),
        helper.make_node("GlobalMaxPool", ["x"], ["m"]),
        helper.make_node("Add", ["a", "m"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 4, 5, 7], FLOAT)], [("y", None, FLOAT)])
    graph = check_against_ort(model, rng.standard_normal((1, 4, 5, 7)).astype(np.float32))
    assert isinstance(graph.layers[0], GlobalAvgPool)  # a whole-input window is a global pool


# ---------------------------------------------------------------------------------------------
# what exporters write
# ---------------------------------------------------------------------------------------------


def _cbr(prefix: str, c_in: int, c_out: int, rng: np.random.Generator, inp: str, k: int = 3):
    w = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32) * 0.3
    bn = {
        f"{prefix}_s": rng.uniform(0.5, 2, c_out),
        f"{prefix}_b": rng.standard_normal(c_out),
        f"{prefix}_m": rng.standard_normal(c_out) * 0.1,
        f"{prefix}_v": rng.uniform(0.5, 2, c_out),
    }
    inits = {f"{prefix}_w": w, **{k_: v.astype(np.float32) for k_, v in bn.items()}}
    nodes = [
        helper.make_node("Conv", [inp, f"{prefix}_w"], [f"{prefix}_c"], pads=[k // 2] * 4),
        helper.make_node("BatchNormalization",
                         [f"{prefix}_{s}" for s in "csbmv"],
                         [f"{prefix}_n"], epsilon=1e-3),
        helper.make_node("Relu", [f"{prefix}_n"], [f"{prefix}_r"]),
    ]
    return nodes, inits, f"{prefix}_r"


def test_pytorch_style_conv_bn_relu_flatten_gemm(rng: np.random.Generator) -> None:
    n1, i1, out1 = _cbr("a", 3, 8, rng, "x")
    n2, i2, out2 = _cbr("b", 8, 6, rng, out1)
    fc = rng.standard_normal((10, 6 * 5 * 4)).astype(np.float32)
    nodes = [*n1, *n2,
             helper.make_node("Flatten", [out2], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    model = make_model(nodes, [("x", ["N", 3, 5, 4], FLOAT)], [("y", None, FLOAT)],
                       {**i1, **i2, "fc": fc, "fcb": rng.standard_normal(10).astype(np.float32)})
    graph = check_against_ort(model, rng.standard_normal((4, 3, 5, 4)).astype(np.float32))
    # BatchNorm folded; the NCHW flatten order moved into the dense weights
    assert [layer.op for layer in graph.layers] == ["Conv2d", "Relu", "Conv2d", "Relu", "Dense"]


def test_tf2onnx_style_nhwc_input_matmul_add(rng: np.random.Generator) -> None:
    """NHWC input behind a Transpose, NHWC flatten, MatMul + Add as the dense layer."""
    w = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    dense = rng.standard_normal((6 * 7 * 5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["rt", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    model = make_model(nodes, [("x", ["unk", 6, 7, 2], FLOAT)], [("y", None, FLOAT)],
                       {"w": w, "dense": dense, "shape": np.array([-1, 6 * 7 * 5], np.int64),
                        "bias": rng.standard_normal(4).astype(np.float32)})
    graph = check_against_ort(model, rng.standard_normal((3, 6, 7, 2)).astype(np.float32))
    assert graph.inputs[0].layout.shape == (6, 7, 2)  # the NHWC input was recognised
    assert [layer.op for layer in graph.layers] == ["Conv2d", "Relu", "Dense", "Softmax"]
    assert graph.layers[-1].host_side


def test_kws_style_reshape_of_single_channel_input(rng: np.random.Generator) -> None:
    """tf2onnx's KWS model reshapes an NHWC (N, 49, 10, 1) input straight to NCHW."""
    w = rng.standard_normal((4, 1, 10, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["xr"]),
        helper.make_node("Conv", ["xr", "w"], ["y"], strides=[2, 2], pads=[4, 1, 5, 1]),
    ]
    model = make_model(nodes, [("x", ["N", 49, 10, 1], FLOAT)], [("y", None, FLOAT)],
                       {"w": w, "shape": np.array([-1, 1, 49, 10], np.int64)})
    check_against_ort(model, rng.standard_normal((2, 49, 10, 1)).astype(np.float32))


def test_shape_subgraph_is_folded(rng: np.random.Generator) -> None:
    """PyTorch's old flatten export: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    model = make_model(
        nodes, [("x", ["N", 2, 6, 6], FLOAT)], [("y", None, FLOAT)],
        {"w": w, "zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
         "minus1": np.array([-1], np.int64),
         "fc": rng.standard_normal((5, 3 * 4 * 4)).astype(np.float32)},
    )
    graph = check_against_ort(model, rng.standard_normal((1, 2, 6, 6)).astype(np.float32))
    assert [layer.op for layer in graph.layers] == ["Conv2d", "Dense"]


def test_residual_add_concat_and_explicit_pad(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["xp"]),
        helper.make_node("Conv", ["xp", "w1"], ["c1"]),
        helper.make_node("Add", ["c1", "x"], ["res"]),
        helper.make_node("Relu", ["res"], ["r"]),
        helper.make_node("Concat", ["r", "x"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 4, 6, 6], FLOAT)], [("y", None, FLOAT)],
                       {"w1": w1, "w2": w2, "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    graph = check_against_ort(model, rng.standard_normal((1, 4, 6, 6)).astype(np.float32))
    assert graph.count(Pad2d) == 0  # fused into the convolution
    assert graph.layers[0].padding == (1, 1, 1, 1)
    assert [layer.op for layer in graph.layers] == ["Conv2d", "Add", "Relu", "Concat", "Conv2d"]


def test_standalone_affine_becomes_depthwise(rng: np.random.Generator) -> None:
    """Input normalisation (Sub, Div per channel) before the first conv cannot fold backwards."""
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xs"]),
        helper.make_node("Div", ["xs", "std"], ["xn"]),
        helper.make_node("Conv", ["xn", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = make_model(
        nodes, [("x", [1, 3, 5, 5], FLOAT)], [("y", None, FLOAT)],
        {"w": w, "mean": np.array([0.1, 0.2, 0.3], np.float32).reshape(1, 3, 1, 1),
         "std": np.array([0.5, 0.6, 0.7], np.float32).reshape(1, 3, 1, 1)},
    )
    graph = check_against_ort(model, rng.standard_normal((1, 3, 5, 5)).astype(np.float32))
    assert graph.layers[0].is_depthwise and graph.layers[0].kernel == (1, 1)


def test_clip_relu6_and_opset_forms(rng: np.random.Generator) -> None:
    for opset in (8, 10, 11, 13, 17, 21):
        if opset < 11:
            clip = helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0)
            inits = {}
        else:
            clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"])
            inits = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
        w = rng.standard_normal((3, 2, 1, 1)).astype(np.float32) * 4
        model = make_model([helper.make_node("Conv", ["x", "w"], ["c"]), clip],
                           [("x", [1, 2, 4, 4], FLOAT)], [("y", None, FLOAT)],
                           {"w": w, **inits}, opset=opset)
        graph = check_against_ort(model, rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
        assert graph.layers[-1].describe() == "relu6"


@pytest.mark.parametrize("opset", [8, 9, 11, 13, 15, 17, 19, 21])
def test_small_cnn_at_every_opset(opset: int, rng: np.random.Generator) -> None:
    """The same CNN written with each opset's forms of Squeeze/Unsqueeze/Dropout/Softmax."""
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((3, 4)).astype(np.float32)
    if opset >= 13:
        sq = helper.make_node("Squeeze", ["g", "axes"], ["s"])
        axes = {"axes": np.array([2, 3], np.int64)}
    else:
        sq = helper.make_node("Squeeze", ["g"], ["s"], axes=[2, 3])
        axes = {}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        sq,
        helper.make_node("Dropout", ["s"], ["d"]),
        helper.make_node("Gemm", ["d", "fc", "fcb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    model = make_model(nodes, [("x", ["N", 1, 8, 8], FLOAT)], [("y", None, FLOAT)],
                       {"w": w, "fc": fc, "fcb": np.ones(3, np.float32), **axes}, opset=opset)
    graph = check_against_ort(model, rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    assert [layer.op for layer in graph.layers] == [
        "Conv2d", "Relu", "MaxPool2d", "GlobalAvgPool", "Dense", "Softmax"]


def test_batch_dimension_optional_in_run(rng: np.random.Generator) -> None:
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])],
                       [("x", ["N", 1, 5, 5], FLOAT)], [("y", None, FLOAT)], {"w": w})
    graph = load_model(model)
    x = rng.standard_normal((1, 5, 5)).astype(np.float32)
    single = reference.run(graph, x)["y"]
    batched = reference.run(graph, x[None])["y"]
    assert single.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(single, batched)


def test_onnx_int64_shape_input_is_rejected_cleanly() -> None:
    from accelgen.errors import UnsupportedError

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 3], INT64)],
                       [("y", None, INT64)])
    with pytest.raises(UnsupportedError, match="integer arithmetic"):
        load_model(model)


def test_dense_layer_counts(rng: np.random.Generator) -> None:
    fc = rng.standard_normal((7, 12)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "fc"], ["y"])],
                       [("x", ["N", 12], FLOAT)], [("y", None, FLOAT)], {"fc": fc.T.copy()})
    graph = check_against_ort(model, rng.standard_normal((5, 12)).astype(np.float32))
    (dense,) = graph.layers
    assert isinstance(dense, Dense) and dense.macs == 84 and dense.params == 84 + 7


def test_avgpool_count_include_pad_fused_from_pad(rng: np.random.Generator) -> None:
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"]),
             helper.make_node("AveragePool", ["xp"], ["y"], kernel_shape=[3, 3])]
    model = make_model(nodes, [("x", [1, 2, 5, 5], FLOAT)], [("y", None, FLOAT)],
                       {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    graph = check_against_ort(model, rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    (pool,) = graph.layers
    assert isinstance(pool, AvgPool2d) and pool.count_include_pad and pool.padding == (1, 1, 1, 1)
