"""`accelgen estimate --arch` and `accelgen run --arch array`: the PE array from the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accelgen import golden
from accelgen.array.compiler import compile_graph
from accelgen.array.machine import totals
from accelgen.array.targets import array_target
from accelgen.cli import load_accel
from accelgen.devices import device
from tests.onnx_helpers import MLPERF


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accelgen", *argv], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def accel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arr") / "m.accel"
    proc = _cli("compress", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_estimate_array_json_is_the_cycle_model(accel: Path) -> None:
    proc = _cli("estimate", str(accel), "--arch", "array", "--board", "ice40", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    qg = load_accel(accel)
    target = array_target(device("ice40"))
    program = compile_graph(qg, target.config)
    assert doc["fits"] and doc["arch"] == "array" and doc["pes"] == 8
    assert doc["cycles_per_image"] == totals(program)[0]
    assert doc["fps"] == pytest.approx(doc["clock_mhz"] * 1e6 / doc["cycles_per_image"])
    assert 0 < doc["mac_utilization"] <= 1
    assert doc["memory"]["used_words"] <= doc["memory"]["available_words"] == 65536
    assert doc["logic_checked"] is False
    assert len(doc["layers"]) == len(qg.layers)


def test_estimate_array_table_says_what_is_not_checked(accel: Path) -> None:
    proc = _cli("estimate", str(accel), "--arch", "array")
    assert proc.returncode == 0, proc.stderr
    assert "PE array on iCE40UP5K" in proc.stdout
    assert "not placed on this device yet" in proc.stdout


@pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models absent")
def test_auto_picks_the_array_where_the_pipeline_does_not_fit() -> None:
    # (the KWS DS-CNN: ResNet-8's array no longer fits the UP5K's logic cells)
    kws = str(MLPERF / "kws_ref_model_float32_tf2onnx.onnx")
    proc = _cli("estimate", kws, "--arch", "auto", "--board", "ice40", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["arch"] == "array"
    assert "the streaming pipeline does not fit" in doc["why"]
    model = str(MLPERF / "pretrainedResnet.onnx")
    proc = _cli("estimate", model, "--arch", "auto", "--board", "ecp5", "--json")
    doc = json.loads(proc.stdout)
    assert doc["arch"] == "pipeline" and "FPS against the PE array's" in doc["why"]


def test_array_on_a_device_without_dsp_blocks_is_one_clear_line(accel: Path) -> None:
    proc = _cli("estimate", str(accel), "--arch", "array", "--board", "iCE40HX8K")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "iCE40HX8K has no DSP blocks for the PE array; use --arch pipeline" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("verilator") is None and not os.environ.get("CI"),
                    reason="Verilator is not installed (apt-get install verilator)")
def test_run_array_on_verilator_equals_golden(accel: Path, tmp_path: Path) -> None:
    qg = load_accel(accel)
    qi = qg.inputs[0]
    x = np.random.default_rng(2).uniform(0, 1, (3, *qi.onnx_shape)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = _cli("run", str(accel), "--arch", "array", "--engine", "verilator", "--inputs",
                str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert proc.returncode == 0, proc.stderr
    assert "cycles per image (the array's counters)" in proc.stdout
    want = golden.run(qg, x)[qg.outputs[0].onnx_name]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)
    program = compile_graph(qg, array_target(device("ice40")).config)
    assert f"{totals(program)[0]:,}" in proc.stdout


def test_run_array_refuses_cxxrtl(accel: Path, tmp_path: Path) -> None:
    qg = load_accel(accel)
    np.save(tmp_path / "x.npy", np.zeros((1, *qg.inputs[0].onnx_shape), np.float32))
    proc = _cli("run", str(accel), "--arch", "array", "--engine", "cxxrtl", "--inputs",
                str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert proc.returncode == 2
    assert "--engine verilator" in proc.stderr and "Traceback" not in proc.stderr


def test_run_array_on_a_device_the_array_refuses_is_one_line_and_writes_nothing(
        accel: Path, tmp_path: Path) -> None:
    qg = load_accel(accel)
    np.save(tmp_path / "x.npy", np.zeros((1, *qg.inputs[0].onnx_shape), np.float32))
    out = tmp_path / "y.npy"
    proc = _cli("run", str(accel), "--arch", "array", "--engine", "verilator", "--board",
                "iCE40HX8K", "--inputs", str(tmp_path / "x.npy"), "-o", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "iCE40HX8K has no DSP blocks for the PE array" in proc.stderr
    assert not out.exists()
