"""Bad input gets one clear line, exit code 2, no traceback — for a corpus of bad models and bad
command lines generated here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from accelgen.cli import main
from tests.onnx_helpers import FLOAT, MLPERF, make_model


def _conv_model(**overrides: object) -> onnx.ModelProto:
    w = np.ones((2, 1, 3, 3), np.float32)
    nodes = overrides.get("nodes") or [helper.make_node("Conv", ["x", "W"], ["y"], name="conv1")]
    inputs = overrides.get("inputs") or [("x", ["N", 1, 6, 6], FLOAT)]
    inits = overrides.get("inits", {"W": w})
    return make_model(nodes, inputs, overrides.get("outputs", [("y", None, FLOAT)]), inits)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _bad_models(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (file, phrases the one-line error must contain)."""
    corpus: dict[str, tuple[Path, list[str]]] = {}
    # an unsupported op, with a name to find it by
    m = _conv_model(nodes=[helper.make_node("Conv", ["x", "W"], ["c"], name="conv1"),
                           helper.make_node("Sin", ["c"], ["y"], name="the_sine")])
    corpus["unsupported_op"] = (_save(m, tmp / "sin.onnx"), ["'Sin'", "'the_sine'", "supports:",
                                                             "Conv"])
    # LeakyReLU: rejected with the reason
    m = _conv_model(nodes=[helper.make_node("Conv", ["x", "W"], ["c"]),
                           helper.make_node("LeakyRelu", ["c"], ["y"], name="leaky")])
    corpus["leaky_relu"] = (_save(m, tmp / "leaky.onnx"), ["LeakyRelu", "'leaky'", "ReLU"])
    # a dynamic spatial dimension
    m = _conv_model(inputs=[("x", ["N", 1, "height", 6], FLOAT)])
    corpus["dynamic_shape"] = (_save(m, tmp / "dyn.onnx"), ["'x'", "dynamic", "'height'",
                                                            "axis 2"])
    # no shape at all
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "noshape",
        [helper.make_value_info("x", helper.make_tensor_type_proto(FLOAT, shape=None))],
        [helper.make_tensor_value_info("y", FLOAT, [1, 3])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    corpus["unknown_shape"] = (_save(m, tmp / "noshape.onnx"), ["'x'"])
    # the weight is run-time data, not an initializer
    m = _conv_model(inputs=[("x", ["N", 1, 6, 6], FLOAT), ("W", [2, 1, 3, 3], FLOAT)], inits={})
    corpus["weight_not_constant"] = (_save(m, tmp / "wgraph.onnx"),
                                     ["'conv1'", "weight", "'W'", "stored in the model"])
    # a missing initializer (hand-made: make_model's checker would refuse it)
    good = _conv_model()
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    del bad.graph.initializer[:]
    corpus["missing_initializer"] = (_save(bad, tmp / "noinit.onnx"),
                                     ["'conv1'", "'W'", "missing initializer"])
    # a weight of the wrong shape
    m = _conv_model(inits={"W": np.ones((2, 3, 3, 3), np.float32)})
    corpus["inconsistent_weight"] = (_save(m, tmp / "wshape.onnx"), ["conv1", "group", "channels"])
    # not ONNX at all, empty, and truncated at many points
    (tmp / "garbage.onnx").write_bytes(b"\x08\x07this is not a protobuf\xff\xfe" * 40)
    corpus["garbage"] = (tmp / "garbage.onnx", ["not a readable ONNX model"])
    (tmp / "empty.onnx").write_bytes(b"")
    corpus["empty"] = (tmp / "empty.onnx", ["empty"])
    real = _save(_conv_model(), tmp / "real.onnx").read_bytes()
    if MLPERF.is_dir():
        real = (MLPERF / "pretrainedResnet.onnx").read_bytes()
    for frac in (0.1, 0.5, 0.9, 0.999):
        p = tmp / f"truncated_{frac}.onnx"
        p.write_bytes(real[: int(len(real) * frac)])
        corpus[f"truncated_{frac}"] = (p, [p.name])
    return corpus


def _run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return int(code), out, err


def _assert_one_line_error(code: int, err: str, phrases: list[str]) -> None:
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("accelgen"), err
    assert "error" in lines[0]
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def test_bad_model_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = _bad_models(tmp_path)
    assert len(corpus) >= 12
    for name, (path, phrases) in corpus.items():
        run = ["run", str(path), "--inputs", "x.npy", "-o", "y.npy"]
        for command in (["inspect", str(path)], run):
            code, _, err = _run_cli(capsys, command)
            try:
                _assert_one_line_error(code, err, phrases)
            except AssertionError as failure:
                raise AssertionError(f"{name}: {failure}") from None


@pytest.mark.parametrize(
    ("argv", "phrases"),
    [
        (["frobnicate"], ["invalid choice", "frobnicate"]),
        (["inspect"], ["model"]),
        (["inspect", "--no-such-flag", "m.onnx"], ["--no-such-flag"]),
        (["inspect", "/no/such/model.onnx"], ["'/no/such/model.onnx'"]),
        (["inspect", "no_such_zoo_model"], ["'no_such_zoo_model'", "dscnn_fmnist"]),
        (["run", "m.onnx", "--inputs", "x.npy", "-o", "y.npy", "--engine", "fpga"],
         ["--engine", "'fpga'"]),
        (["build", "--board", "virtex"], ["'virtex'", "ice40"]),
    ],
)
def test_bad_command_lines(
    argv: list[str], phrases: list[str], capsys: pytest.CaptureFixture
) -> None:
    code, _, err = _run_cli(capsys, argv)
    _assert_one_line_error(code, err, phrases)


def test_bad_inputs_for_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _save(_conv_model(), tmp_path / "m.onnx")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 1, 5, 5), np.float32))
    code, _, err = _run_cli(capsys, ["run", str(model), "--inputs", str(tmp_path / "wrong.npy"),
                                     "-o", str(tmp_path / "y.npy")])
    _assert_one_line_error(code, err, ["(2, 1, 5, 5)", "(1, 6, 6)"])
    assert not (tmp_path / "y.npy").exists()
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    code, _, err = _run_cli(capsys, ["run", str(model), "--inputs", str(tmp_path / "junk.npy"),
                                     "-o", str(tmp_path / "y.npy")])
    _assert_one_line_error(code, err, ["junk.npy"])
    code, _, err = _run_cli(capsys, ["run", str(model), "--inputs", str(tmp_path / "none.npy"),
                                     "-o", str(tmp_path / "y.npy")])
    _assert_one_line_error(code, err, ["none.npy", "does not exist"])
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 6, 6), np.float32))
    code, _, err = _run_cli(capsys, ["run", str(model), "--inputs", str(tmp_path / "x.npy"),
                                     "-o", str(tmp_path / "no_dir" / "y.npy")])
    _assert_one_line_error(code, err, ["no_dir"])


def test_real_process_prints_one_line_and_exit_code_2(tmp_path: Path) -> None:
    """The installed entry point, in its own process: no traceback, exit code 2."""
    corpus = _bad_models(tmp_path)
    for name in ("unsupported_op", "truncated_0.5", "dynamic_shape"):
        path, phrases = corpus[name]
        proc = subprocess.run([sys.executable, "-m", "accelgen", "inspect", str(path)],
                              capture_output=True, text=True)
        _assert_one_line_error(proc.returncode, proc.stderr, phrases)
        assert proc.stdout == ""
