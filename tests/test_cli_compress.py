"""`accelgen compress`, `accelgen evaluate` and `accelgen run --engine golden`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from accelgen.zoo import MODELS
from onnx import helper

from accelgen import golden
from accelgen.cli import main
from accelgen.quantized import load
from tests.onnx_helpers import FLOAT, make_model


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    """A 3-class model, a labelled data set and a calibration set, on disk."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    model = make_model(nodes, [("x", ["N", 1, 6, 6], FLOAT)], [("logits", None, FLOAT)],
                       {"w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
                        "fc": rng.standard_normal((3, 4)).astype(np.float32)})
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    x = rng.uniform(0, 1, (300, 1, 6, 6)).astype(np.float32)
    from accelgen import reference
    from accelgen.frontend import load_model

    y = reference.run(load_model(model), x)["logits"].argmax(1)
    y[::10] = (y[::10] + 1) % 3  # 90 % reachable accuracy
    np.savez(tmp_path / "eval.npz", x=x[:200], y=y[:200])
    np.savez(tmp_path / "calib.npz", x=x[200:], y=y[200:])
    return {"model": tmp_path / "m.onnx", "eval": tmp_path / "eval.npz",
            "calib": tmp_path / "calib.npz", "dir": tmp_path}


def test_compress_writes_description_and_report(small: dict, capsys: pytest.CaptureFixture) -> None:
    out = small["dir"] / "m.accel"
    code = main(["compress", str(small["model"]), "--bits", "8", "--calib-data",
                 str(small["calib"]), "--eval-data", str(small["eval"]), "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "weight memory" in text and "accuracy on 200 images" in text and "SQNR" in text
    report = json.loads((out / "report.json").read_text())
    for key in ("float_accuracy", "quantized_accuracy", "weight_bytes", "per_layer",
                "weight_memory", "top1_agreement"):
        assert key in report
    assert 0.0 <= report["quantized_accuracy"] <= 1.0
    assert report["float_accuracy"] == pytest.approx(0.9, abs=0.02)
    assert report["weight_memory"]["quantized"] * 2 == report["weight_memory"]["int16"]
    assert all(np.isfinite(r["rel_error"]) for r in report["per_layer"])
    qg = load(out)
    assert [la.op for la in qg.layers] == ["QConv", "QGlobalAvgPool", "QDense"]

    # evaluate the shape description and the float model, as JSON
    assert main(["evaluate", str(out), "--data", str(small["eval"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 200 and doc["engine"] == "golden"
    assert doc["accuracy"] == pytest.approx(report["quantized_accuracy"])
    assert main(["evaluate", str(small["model"]), "--data", str(small["eval"]), "--json",
                 "--limit", "50"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 50 and doc["engine"] == "reference"

    # run the golden model from the command line; it equals the library call
    x = np.load(small["eval"])["x"][:7]
    np.save(small["dir"] / "x.npy", x)
    assert main(["run", str(out), "--engine", "golden", "--inputs", str(small["dir"] / "x.npy"),
                 "-o", str(small["dir"] / "y.npy")]) == 0
    y = np.load(small["dir"] / "y.npy")
    assert np.array_equal(y, golden.run(qg, x)["logits"])


def test_layer_bits_and_calibration_options(small: dict, capsys: pytest.CaptureFixture) -> None:
    out = small["dir"] / "m4.accel"
    from accelgen.frontend import load_model

    first = load_model(small["model"]).layers[0].name
    code = main(["compress", str(small["model"]), "--weight-bits", "4", "--act-bits", "8",
                 "--layer-bits", f"{first}=6", "--calibration", "percentile", "--rounding",
                 "stochastic", "--seed", "3", "--calib-data", str(small["calib"]), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    qg = load(out)
    assert qg.layers[0].w_bits == 6 and qg.layers[-1].w_bits == 4
    assert qg.meta["config"]["rounding"] == "stochastic"


@pytest.mark.parametrize(("bits", "rounding"), [(4, "adaptive"), (6, "adaptive"),
                                               (8, "nearest")])
def test_default_rounding_is_adaptive_below_8_bits(small: dict, bits: int, rounding: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = small["dir"] / f"m{bits}.accel"
    code = main(["compress", str(small["model"]), "--bits", str(bits), "--calib-data",
                 str(small["calib"]), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert load(out).meta["config"]["rounding"] == rounding


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--bits", "1"], "= 1"),
        (["--bits", "17"], "17"),
        (["--layer-bits", "conv=abc"], "'abc'"),
        (["--layer-bits", "nonsense"], "NAME=BITS"),
        (["--layer-bits", "no_such=4"], "'no_such'"),
        (["--calib-data", "/no/such.npz"], "/no/such.npz"),
        (["--calibration", "entropy"], "'entropy'"),
    ],
)
def test_compress_bad_arguments(small: dict, extra: list[str], phrase: str,
                                capsys: pytest.CaptureFixture) -> None:
    args = ["compress", str(small["model"]), "-o", str(small["dir"] / "bad.accel")]
    if "--calib-data" not in extra:
        args += ["--calib-data", str(small["calib"])]
    try:
        code = main(args + extra)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err
    assert not (small["dir"] / "bad.accel").exists()


def test_compress_without_calibration_data_says_what_to_do(small: dict,
                                                           capsys: pytest.CaptureFixture) -> None:
    code = main(["compress", str(small["model"]), "-o", str(small["dir"] / "x.accel")])
    err = capsys.readouterr().err
    assert code == 2 and "--calib-data" in err and len(err.strip().splitlines()) == 1
    code = main(["compress", str(small["model"]), "--calib-data", "random",
                 "-o", str(small["dir"] / "r.accel")])
    captured = capsys.readouterr()
    assert code == 0 and "meaningless" in captured.err
    assert (small["dir"] / "r.accel" / "graph.json").exists()


def test_evaluate_errors(small: dict, capsys: pytest.CaptureFixture) -> None:
    np.savez(small["dir"] / "nolabels.npz", x=np.zeros((3, 1, 6, 6), np.float32))
    np.savez(small["dir"] / "wrongshape.npz", x=np.zeros((3, 1, 5, 5), np.float32),
             y=np.zeros(3, np.int64))
    for data, phrase in [("nolabels.npz", "labels"), ("wrongshape.npz", "(3, 1, 5, 5)")]:
        code = main(["evaluate", str(small["model"]), "--data", str(small["dir"] / data)])
        err = capsys.readouterr().err
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1
    code = main(["evaluate", str(small["model"]), "--engine", "golden", "--data",
                 str(small["eval"])])
    assert code == 2 and "compress" in capsys.readouterr().err


@pytest.mark.skipif(not MODELS["dscnn_fmnist"].available, reason="default model not shipped")
def test_default_model_compress_and_evaluate_from_a_fresh_process(tmp_path: Path) -> None:
    """`accelgen compress` with no model compresses the default model with its shipped data."""
    proc = subprocess.run([sys.executable, "-m", "accelgen", "compress", "-o",
                           str(tmp_path / "d.accel")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "d.accel" / "report.json").read_text())
    assert report["images"] == 1000
    assert report["quantized_accuracy"] >= report["float_accuracy"] - 0.01
    proc = subprocess.run([sys.executable, "-m", "accelgen", "evaluate",
                           str(tmp_path / "d.accel"), "--json"], capture_output=True, text=True)
    doc = json.loads(proc.stdout)
    assert doc["accuracy"] == pytest.approx(report["quantized_accuracy"])
    assert doc["images"] == 1000
