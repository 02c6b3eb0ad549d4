"""`accelgen inspect` and `accelgen run` on models written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from accelgen.cli import main
from tests.onnx_helpers import FLOAT, make_model, ort_run


def _model(tmp_path: Path, two_outputs: bool = False) -> Path:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["c"], ["r"], name="act"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc"),
    ]
    outputs = [("y", None, FLOAT)] + ([("r", None, FLOAT)] if two_outputs else [])
    model = make_model(nodes, [("x", ["N", 2, 5, 5], FLOAT)], outputs,
                       {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
                        "fc": rng.standard_normal((4, 3)).astype(np.float32)})
    path = tmp_path / ("two.onnx" if two_outputs else "m.onnx")
    path.write_bytes(model.SerializeToString())
    return path


def test_inspect_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _model(tmp_path)
    assert main(["inspect", str(path)]) == 0
    table = capsys.readouterr().out
    assert "stem" in table and "Conv2d" in table and "gap" in table
    total = "total: 4 layers (1 Conv2d, 1 Dense, 1 GlobalAvgPool, 1 Relu); 73 params; 1,362 MACs"
    assert total in table
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_params"] == 3 * 2 * 9 + 3 + 4 * 3 + 4 == 73  # bias-free Gemm: zero bias
    assert info["total_macs"] == 5 * 5 * 3 * 2 * 9 + 12
    assert [r["op"] for r in info["layers"]] == ["Conv2d", "Relu", "GlobalAvgPool", "Dense"]
    assert info["inputs"][0]["shape"] == [2, 5, 5] and info["inputs"][0]["ir_shape"] == [5, 5, 2]


def test_run_npy_with_and_without_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import onnx

    path = _model(tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 2, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "--inputs", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    expected = ort_run(onnx.load(path), {"x": x})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "x1.npy", x[0])  # no batch axis
    assert main(["run", str(path), "--inputs", str(tmp_path / "x1.npy"),
                 "-o", str(tmp_path / "y1.npy"), "--engine", "reference"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), expected[:1], rtol=1e-5, atol=1e-6)
    assert "(1, 4) float32" in capsys.readouterr().out


def test_run_npz_in_and_out(tmp_path: Path) -> None:
    path = _model(tmp_path, two_outputs=True)
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["run", str(path), "--inputs", str(tmp_path / "x.npz"),
                 "-o", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as out:
        assert set(out.files) == {"y", "r"}
        assert out["r"].shape == (2, 3, 5, 5) and out["y"].shape == (2, 4)
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.onnx", "x.npz", "y.npz"]


def test_output_into_a_closed_pipe_is_quiet() -> None:
    """`accelgen estimate | head -1` when the reader has already gone: no traceback, exit 0."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write of the child fails (EPIPE)
    proc = subprocess.run([sys.executable, "-m", "accelgen", "estimate", "--board", "ecp5"],
                          stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
