"""Quantizer, integer arithmetic contract, golden model and shape-description format."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from accelgen import golden, reference
from accelgen.compress import QuantConfig, adaptive, calibrate, quantize
from accelgen.compress.quantize import quantize_weights
from accelgen.errors import AccelgenError, UsageError
from accelgen.frontend import load_model
from accelgen.ir import Conv2d, Dense
from accelgen.quantized import (
    AccelFileError,
    QConv,
    QDense,
    QTensor,
    accumulator_bounds,
    bits_for_range,
    load,
    save,
)
from tests.onnx_helpers import FLOAT, MLPERF, make_model

# ---------------------------------------------------------------------------------------------
# arithmetic primitives
# ---------------------------------------------------------------------------------------------


def test_requantize_is_round_half_up_then_saturate() -> None:
    acc = np.arange(-40, 41, dtype=np.int64)
    for s in range(5):
        want = [int(np.floor(Fraction(int(a), 2**s) + Fraction(1, 2))) for a in acc]
        got = golden.requantize(acc, s, -1000, 1000)
        assert got.tolist() == want, s
    assert golden.requantize(np.array([3, -3]), -2, -100, 100).tolist() == [12, -12]
    assert golden.requantize(np.array([1000, -1000]), 1, -128, 127).tolist() == [127, -128]
    # per-channel shifts on the last axis
    got = golden.requantize(np.array([[6, 6, 6]]), [1, 2, -1], -100, 100)
    assert got.tolist() == [[3, 2, 12]]


@pytest.mark.parametrize("sum_bits", [2, 4, 8, 12, 16])
def test_average_division_rule_reciprocal_is_exact_exhaustively(sum_bits: int) -> None:
    """The hardware's multiply-shift equals floor((2 sum + n) / 2n) for every sum in range."""
    for n in [*range(1, 34), 49, 64, 100, 125, 144, 196, 625]:
        assert golden.check_reciprocal(n, sum_bits), (n, sum_bits)


def test_division_rule_is_round_half_up() -> None:
    sums = np.arange(-20, 21)
    for n in (1, 2, 3, 4, 6, 9):
        want = [int(np.floor(Fraction(int(s), n) + Fraction(1, 2))) for s in sums]
        assert golden.divide_round_half_up(sums, n).tolist() == want


def test_accumulator_bound_is_attained_and_tight() -> None:
    """The proved width is attained by an adversarial input and never exceeded (brute force)."""
    rng = np.random.default_rng(3)
    for trial in range(30):
        bits_x, signed = int(rng.integers(2, 5)), bool(rng.integers(0, 2))
        x = QTensor("x", (1, 1, 3), bits_x, signed, 0)
        w = rng.integers(-8, 8, size=(2, 3))
        bias = rng.integers(-20, 20, size=2)
        lo, hi = accumulator_bounds(w, bias, x)
        values = range(x.qmin, x.qmax + 1)
        accs = np.array([[int(w[c] @ np.array(v)) + int(bias[c]) for c in range(2)]
                         for v in itertools.product(values, repeat=3)])
        assert (accs.min(axis=0) == lo).all() and (accs.max(axis=0) == hi).all(), trial
        width = bits_for_range(int(lo.min()), int(hi.max()))
        assert accs.min() >= -(1 << (width - 1)) and accs.max() <= (1 << (width - 1)) - 1
        assert not (accs.min() >= -(1 << (width - 2)) and accs.max() <= (1 << (width - 2)) - 1)


def test_quantized_conv_accumulators_reach_their_bound(rng: np.random.Generator) -> None:
    """On a real quantized layer, the adversarial input makes the golden accumulator hit the
    bound exactly, and the bound fits the layer's acc_bits."""
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])],
                       [("x", ["N", 3, 5, 5], FLOAT)], [("y", None, FLOAT)], {"w": w})
    graph = load_model(model)
    qg, _ = quantize(graph, rng.standard_normal((32, 3, 5, 5)).astype(np.float32))
    (conv,) = qg.layers
    assert isinstance(conv, QConv)
    x_t = qg.tensors[conv.inputs[0]]
    lo, hi = accumulator_bounds(conv.weight, conv.bias, x_t)
    for c in range(4):
        adversarial = np.where(conv.weight[c] > 0, x_t.qmax, x_t.qmin)  # (3, 3, C_in)
        image = np.zeros((1, 5, 5, 3), np.int64)
        image[0, 1:4, 1:4, :] = adversarial
        acc = golden.conv_accumulate(conv, image)
        assert acc[0, 1, 1, c] == hi[c]
    assert bits_for_range(int(lo.min()), int(hi.max())) == conv.acc_bits


def test_golden_conv_matches_exact_integer_arithmetic(rng: np.random.Generator) -> None:
    """The float64 BLAS path of the golden model equals python-integer arithmetic."""
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 1],
                                         pads=[1, 0, 1, 2])],
                       [("x", ["N", 4, 7, 6], FLOAT)], [("y", None, FLOAT)], {"w": w, "b": b})
    graph = load_model(model)
    qg, _ = quantize(graph, rng.standard_normal((16, 4, 7, 6)).astype(np.float32),
                     QuantConfig(weight_bits=12, act_bits=12))
    (conv,) = qg.layers
    x = rng.integers(-2048, 2048, size=(2, 7, 6, 4))
    acc = golden.conv_accumulate(conv, x)
    xp = np.pad(x, ((0, 0), (1, 1), (0, 2), (0, 0))).tolist()
    for n, oy, ox, co in itertools.product(range(2), range(acc.shape[1]), range(acc.shape[2]),
                                           range(6)):
        g = co // 3
        total = int(conv.bias[co])
        for i, j, c in itertools.product(range(3), range(3), range(2)):
            total += int(conv.weight[co, i, j, c]) * xp[n][oy * 2 + i][ox + j][g * 2 + c]
        assert acc[n, oy, ox, co] == total


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------


def test_kl_threshold_differs_from_max_on_heavy_tails() -> None:
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_cauchy(200_000)).astype(np.float32)  # heavy-tailed
    stats = calibrate.Statistics()
    stats.observe_range("t", x)
    stats.observe_hist("t", x)
    s = stats.tensors["t"]
    t_max = calibrate.threshold(s, "max", 256)
    t_kl = calibrate.threshold(s, "kl", 256)
    t_pct = calibrate.threshold(s, "percentile", 256, 99.9)
    assert t_kl < 0.2 * t_max
    assert t_pct < t_max
    # on a bounded, uniform distribution KL keeps (almost) the whole range
    u = rng.uniform(0, 1, 100_000)
    stats.observe_range("u", u)
    stats.observe_hist("u", u)
    assert calibrate.threshold(stats.tensors["u"], "kl", 128) > 0.9


def test_best_frac_minimises_error_given_the_threshold() -> None:
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(0, 1, 50_000))
    stats = calibrate.Statistics()
    stats.observe_range("t", x)
    stats.observe_hist("t", x)
    s = stats.tensors["t"]
    t = 3.0
    f = calibrate.best_frac(s, t, 255)
    errors = {g: calibrate.quant_error(s.centers, s.hist, g, 255, t) for g in range(f - 1, f + 3)}
    assert errors[f] == min(errors.values())


def test_stochastic_rounding_reproducible_and_unbiased() -> None:
    w = np.full((1, 200_000), 0.3, np.float64)  # 0.3 * 2**f is never an integer for these f
    fracs = np.array([3])
    a, _ = quantize_weights(w, 8, "stochastic", np.random.default_rng(42), fracs)
    b, _ = quantize_weights(w, 8, "stochastic", np.random.default_rng(42), fracs)
    c, _ = quantize_weights(w, 8, "stochastic", np.random.default_rng(43), fracs)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    mean = a.mean() / 2**3
    assert abs(mean - 0.3) < 0.002  # unbiased: E[q] * 2**-f = w
    nearest, _ = quantize_weights(w, 8, "nearest", np.random.default_rng(0), fracs)
    assert abs(nearest.mean() / 8 - 0.3) > 0.04  # nearest rounding is biased here (2.4 -> 2)
    assert set(np.unique(a)) == {2, 3}


# ---------------------------------------------------------------------------------------------
# the quantizer on small graphs
# ---------------------------------------------------------------------------------------------


def _cnn(rng: np.random.Generator):
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw"], ["c2"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("Conv", ["r2", "pw"], ["c3"]),
        helper.make_node("Add", ["c3", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r3"]),
        helper.make_node("AveragePool", ["r3"], ["p"], kernel_shape=[3, 3], strides=[1, 1],
                         pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["m"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    inits = {
        "w1": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
        "dw": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5,
        "pw": rng.standard_normal((4, 4, 1, 1)).astype(np.float32) * 0.5,
        "zero": np.array(0, np.float32), "six": np.array(6, np.float32),
        "fc": rng.standard_normal((5, 4)).astype(np.float32),
        "fcb": rng.standard_normal(5).astype(np.float32) * 0.1,
    }
    model = make_model(nodes, [("x", ["N", 1, 12, 12], FLOAT)], [("y", None, FLOAT)], inits)
    return load_model(model)


def test_quantizer_structure_and_agreement(rng: np.random.Generator) -> None:
    graph = _cnn(rng)
    calib = rng.uniform(0, 1, (128, 1, 12, 12)).astype(np.float32)
    qg, report = quantize(graph, calib, QuantConfig())
    ops = [la.op for la in qg.layers]
    assert ops == ["QConv", "QConv", "QConv", "QAdd", "QAvgPool", "QMaxPool", "QGlobalAvgPool",
                   "QDense"]
    acts = [getattr(la, "activation", None) for la in qg.layers]
    assert acts[:4] == ["relu", "relu6", "none", "relu"]
    assert qg.outputs[0].host_softmax
    # unsigned after ReLU/ReLU6, the input unsigned because the data is non-negative
    assert not qg.tensors[qg.inputs[0].tensor].signed
    assert not qg.tensors[qg.layers[0].output].signed
    relu6 = qg.layers[1]
    assert relu6.hi == min(qg.tensors[relu6.output].qmax, 6 * 2 ** qg.tensors[relu6.output].frac)
    # pools keep their input's format
    for la in qg.layers[4:7]:
        assert qg.tensors[la.output].describe() == qg.tensors[la.inputs[0]].describe()
    test = rng.uniform(0, 1, (200, 1, 12, 12)).astype(np.float32)
    ref = reference.run(graph, test)["y"].argmax(1)
    gold = golden.run(qg, test)["y"]
    assert gold.shape == (200, 5) and np.allclose(gold.sum(1), 1.0)
    assert (gold.argmax(1) == ref).mean() >= 0.9
    assert report["layers"]


def test_bit_widths_and_overrides(rng: np.random.Generator) -> None:
    graph = _cnn(rng)
    calib = rng.uniform(0, 1, (64, 1, 12, 12)).astype(np.float32)
    name = graph.layers[2].name
    qg, _ = quantize(graph, calib, QuantConfig(weight_bits=4, act_bits=6, layer_bits={name: 3}))
    convs = [la for la in qg.layers if isinstance(la, QConv)]
    assert convs[0].w_bits == 4 and convs[1].w_bits == 3 and convs[2].w_bits == 4
    assert qg.tensors[convs[1].output].bits == 3
    assert qg.tensors[convs[0].output].bits == 6
    assert np.abs(convs[0].weight).max() <= 8
    dense = qg.layers[-1]
    assert isinstance(dense, QDense) and qg.tensors[dense.output].bits == 8  # logits >= 8 bits
    for bad, phrase in [({"weight_bits": 1}, "weight_bits = 1"), ({"act_bits": 17}, "17"),
                        ({"calibration": "entropy"}, "'entropy'"),
                        ({"rounding": "up"}, "'up'")]:
        with pytest.raises(UsageError, match=phrase):
            QuantConfig(**bad)
    with pytest.raises(UsageError, match="no_such_layer"):
        quantize(graph, calib, QuantConfig(layer_bits={"no_such_layer": 4}))
    with pytest.raises(UsageError, match="calibration data"):
        quantize(graph, None, QuantConfig())


def test_sixteen_bits_is_near_lossless(rng: np.random.Generator) -> None:
    graph = _cnn(rng)
    calib = rng.uniform(0, 1, (64, 1, 12, 12)).astype(np.float32)
    qg, _ = quantize(graph, calib, QuantConfig(weight_bits=16, act_bits=16,
                                               calibration="max"))
    test = rng.uniform(0, 1, (50, 1, 12, 12)).astype(np.float32)
    ref = reference.run(graph, test)["y"]
    gold = golden.run(qg, test)["y"]
    assert np.abs(ref - gold).max() < 5e-3


def _layer_error(w: np.ndarray, q: np.ndarray, fracs: np.ndarray, groups: int,
                 cols: np.ndarray, correction: np.ndarray | float = 0.0) -> float:
    """Sum of squared output errors of integer weights `q` (after a bias `correction`)."""
    rows = w.reshape(groups, w.shape[0] // groups, -1)
    q_real = (q.reshape(w.shape[0], -1) * np.exp2(-fracs.astype(float))[:, None]).reshape(
        rows.shape)
    err = np.matmul(cols, (rows - q_real).transpose(0, 2, 1))
    err -= np.reshape(correction, (groups, 1, -1)) if np.ndim(correction) else 0.0
    return float(np.sum(err**2))


@pytest.mark.parametrize(("kind", "bits"), [("dense", 3), ("dense", 4), ("depthwise", 4),
                                            ("grouped", 3)])
def test_adaptive_rounding_lowers_the_output_error(rng: np.random.Generator, kind: str,
                                                   bits: int) -> None:
    """On correlated inputs, adaptive rounding's output error is well below round-to-nearest's,
    its integers stay in range, and its bias correction removes the mean output error."""
    if kind == "dense":
        layer = Dense("d", ("x",), "y", weight=rng.standard_normal((12, 40)).astype(np.float32),
                      bias=np.zeros(12, np.float32), in_shapes=((1, 1, 40),), out_shape=(1, 1, 12))
        mix = rng.standard_normal((40, 40)) * 0.3 + np.eye(40)
        x = (np.abs(rng.standard_normal((2000, 40)) @ mix)).reshape(2000, 1, 1, 40)
        groups = 1
    else:
        c = 6
        groups = c if kind == "depthwise" else 2
        c_out = c * 2
        weight = rng.standard_normal((c_out, 3, 3, c // groups)).astype(np.float32)
        layer = Conv2d("c", ("x",), "y", weight=weight, bias=np.zeros(c_out, np.float32),
                       kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1),
                       groups=groups, in_shapes=((8, 8, c),), out_shape=(8, 8, c_out))
        base = rng.standard_normal((300, 8, 8, c))
        x = np.abs(base + np.roll(base, 1, axis=2) + 0.5 * np.roll(base, 1, axis=1))
    x = x.astype(np.float32)
    moments = adaptive.InputMoments.of(layer, x, x)
    w = layer.weight
    near, fracs = quantize_weights(w, bits, "nearest", rng)
    q, q_fracs, correction = adaptive.round_weights(w, groups, bits, fracs, moments, 30)
    qmax = (1 << (bits - 1)) - 1
    assert q.dtype == np.int64 and q.min() >= -qmax - 1 and q.max() <= qmax
    assert np.all(np.abs(q_fracs - fracs) <= 1)
    cols = adaptive._columns(layer, x)
    e_near = _layer_error(w, near, fracs, groups, cols)
    e_adapt = _layer_error(w, q, q_fracs, groups, cols, correction)
    assert e_adapt < 0.6 * e_near, (e_adapt, e_near)
    # the correction is the mean output error: after it the mean error is zero
    rows = w.reshape(groups, -1, w.shape[-1] if kind == "dense" else cols.shape[-1])
    q_real = (q.reshape(w.shape[0], -1) * np.exp2(-q_fracs.astype(float))[:, None])
    err = np.matmul(cols, (rows - q_real.reshape(rows.shape)).transpose(0, 2, 1))
    assert np.allclose(err.mean(axis=1).reshape(-1), correction, atol=1e-9)


def test_adaptive_rounding_on_a_network(rng: np.random.Generator) -> None:
    """Through a residual network at 3-bit weights, adaptive rounding follows the quantized
    layers and its logits track the float model's more closely than round-to-nearest's."""
    graph = _cnn(rng)
    calib = rng.uniform(0, 1, (256, 1, 12, 12)).astype(np.float32)
    test = rng.uniform(0, 1, (200, 1, 12, 12)).astype(np.float32)
    ref = reference.run(graph, test)["y"]
    errors = {}
    for rounding in ("nearest", "adaptive"):
        qg, _ = quantize(graph, calib, QuantConfig(weight_bits=3, act_bits=8, rounding=rounding))
        errors[rounding] = float(np.abs(golden.run(qg, test)["y"] - ref).mean())
    assert errors["adaptive"] < errors["nearest"], errors
    with pytest.raises(UsageError, match="adaptive rounding needs calibration data"):
        quantize(graph, None, QuantConfig(rounding="adaptive"))


def test_adaptive_rounding_when_a_tensor_feeds_two_convolutions(
        rng: np.random.Generator) -> None:
    """A ResNet block with a projection shortcut: the block's input feeds both its first
    convolution and the shortcut's (MLPerf Tiny ResNet-8's layout; adaptive rounding used to
    drop the input's float copy after the first reader and fail on the second)."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["r", "ws"], ["s"], strides=[2, 2]),
             helper.make_node("Add", ["b", "s"], ["y0"]),
             helper.make_node("Relu", ["y0"], ["y1"]),
             helper.make_node("GlobalAveragePool", ["y1"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = {"w0": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5,
             "w1": rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3,
             "ws": rng.standard_normal((6, 4, 1, 1)).astype(np.float32) * 0.5,
             "fc": rng.standard_normal((3, 6)).astype(np.float32)}
    graph = load_model(make_model(nodes, [("x", ["N", 1, 8, 8], FLOAT)], [("y", None, FLOAT)],
                                  inits))
    calib = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    qg, _ = quantize(graph, calib, QuantConfig(weight_bits=4, act_bits=8, rounding="adaptive"))
    conv_inputs = [la.inputs[0] for la in qg.layers if la.op == "QConv"]
    assert any(conv_inputs.count(t) == 2 for t in conv_inputs)
    test = rng.uniform(0, 1, (50, 1, 8, 8)).astype(np.float32)
    ref = reference.run(graph, test)["y"]
    assert np.abs(golden.run(qg, test)["y"] - ref).mean() < 0.25 * np.abs(ref).mean()


# ---------------------------------------------------------------------------------------------
# the shape description on disk
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    graph = _cnn(rng)
    qg, _ = quantize(graph, rng.uniform(0, 1, (64, 1, 12, 12)).astype(np.float32))
    folder = save(qg, tmp_path / "m.accel", extra={"report.json": "{}"})
    back = load(folder)
    assert [la.op for la in back.layers] == [la.op for la in qg.layers]
    for a, b in zip(qg.layers, back.layers, strict=True):
        assert a.fields() == b.fields()
        for key, arr in a.arrays().items():
            assert np.array_equal(arr, b.arrays()[key])
    assert back.tensors == qg.tensors
    x = rng.uniform(0, 1, (10, 1, 12, 12)).astype(np.float32)
    assert np.array_equal(golden.logits(qg, x), golden.logits(back, x))
    doc = json.loads((folder / "graph.json").read_text())
    assert doc["schema_version"] == 1
    conv = doc["layers"][0]
    for key in ("w_frac", "shift", "acc_bits", "w_bits", "pruned_channels", "sparsity"):
        assert key in conv
    assert doc["tensors"][0]["frac"] is not None


def test_corrupt_shape_descriptions_are_one_clear_error(tmp_path: Path,
                                                         rng: np.random.Generator) -> None:
    graph = _cnn(rng)
    qg, _ = quantize(graph, rng.uniform(0, 1, (32, 1, 12, 12)).astype(np.float32))
    good = save(qg, tmp_path / "good.accel")

    def variant(name: str, edit) -> Path:
        import shutil

        d = tmp_path / f"{name}.accel"
        shutil.copytree(good, d)
        edit(d)
        return d

    doc = json.loads((good / "graph.json").read_text())
    cases = {
        "no_json": (lambda d: (d / "graph.json").unlink(), "no graph.json"),
        "no_npz": (lambda d: (d / "weights.npz").unlink(), "no weights.npz"),
        "truncated_json": (lambda d: (d / "graph.json").write_text(
            (good / "graph.json").read_text()[:500]), "corrupt or truncated"),
        "truncated_npz": (lambda d: (d / "weights.npz").write_bytes(
            (good / "weights.npz").read_bytes()[:300]), "corrupt or truncated"),
        "version": (lambda d: (d / "graph.json").write_text(
            json.dumps({**doc, "schema_version": 99})), "schema version 99"),
        "foreign": (lambda d: (d / "graph.json").write_text('{"hello": 1}'),
                    "not an accelgen shape description"),
        "bad_shift": (lambda d: (d / "graph.json").write_text(json.dumps(
            {**doc, "layers": [{**doc["layers"][0], "shift": [99] * 4}, *doc["layers"][1:]]})),
            "shifts"),
        "bad_bits": (lambda d: (d / "graph.json").write_text(json.dumps(
            {**doc, "tensors": [{**doc["tensors"][0], "bits": 40}, *doc["tensors"][1:]]})),
            "bit width 40"),
        "unknown_op": (lambda d: (d / "graph.json").write_text(json.dumps(
            {**doc, "layers": [{**doc["layers"][0], "op": "QMagic"}, *doc["layers"][1:]]})),
            "'QMagic'"),
        "small_acc": (lambda d: (d / "graph.json").write_text(json.dumps(
            {**doc, "layers": [{**doc["layers"][0], "acc_bits": 3}, *doc["layers"][1:]]})),
            "can overflow"),
    }
    for name, (edit, phrase) in cases.items():
        path = variant(name, edit)
        with pytest.raises(AccelFileError) as info:
            load(path)
        message = str(info.value)
        assert phrase in message and "\n" not in message, (name, message)
    with pytest.raises(AccelFileError, match="not a shape description"):
        load(tmp_path / "absent.accel")


# ---------------------------------------------------------------------------------------------
# QDQ models keep their bit widths
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models/mlperf-tiny absent")
def test_qdq_model_keeps_its_bit_widths() -> None:
    graph = load_model(MLPERF / "vww_96_int8_tf2onnx.onnx")
    qg, report = quantize(graph, None)  # fully annotated: no calibration data needed
    for la in qg.layers:
        if isinstance(la, (QConv, QDense)):
            assert la.w_bits == 8
        assert qg.tensors[la.output].bits in (8, 9)
    assert qg.inputs[0].codes_scale is not None  # the host dequantizes the int8 input codes
    notes = [t.get("note", "") for t in report["tensors"].values()]
    assert any("not a power of two" in n for n in notes)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (40, 96, 96, 3)).astype(np.int8)
    ref = reference.run(graph, x)[graph.outputs[0].onnx_name].argmax(1)
    assert (golden.logits(qg, x).argmax(1) == ref).mean() >= 0.9


def test_unknown_accel_path_in_cli_is_one_line(tmp_path: Path, capsys) -> None:
    from accelgen.cli import main

    (tmp_path / "x.npy").write_bytes(b"")
    code = main(["run", str(tmp_path / "nope.accel"), "--engine", "golden", "--inputs",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope.accel" in err
    assert isinstance(AccelFileError("x"), AccelgenError)
