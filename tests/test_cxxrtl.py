"""The compiled simulator (CXXRTL) against Amaranth's simulator and the golden model: the same
logits, classes and cycles per image; seeded random backpressure; the CLI; a missing compiler."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.devices import device
from accelgen.scheduler import plan
from accelgen.sim import compiled, cxxrtl, simulate
from tests import test_accelerator


@pytest.fixture(scope="module")
def net() -> tuple:
    """`tests.test_accelerator`'s residual network (stem, depthwise, pointwise + add, pools,
    dense) and three inputs."""
    return test_accelerator.residual_net.__wrapped__()


@pytest.mark.parametrize("board", ["ice40", "ecp5"])
def test_compiled_equals_pysim_outputs_and_cycles(net: tuple, board: str) -> None:
    qg, x = net
    p = plan(qg, device(board))
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    want = golden.logits(qg, x)
    for back_to_back in (False, True):
        py = simulate(Accelerator(p), x_ir, backend="pysim", back_to_back=back_to_back)
        cx = simulate(Accelerator(p), x_ir, backend="cxxrtl", back_to_back=back_to_back)
        assert np.array_equal(cx.logits, want)
        assert np.array_equal(cx.classes, want.argmax(1))
        assert np.array_equal(cx.logits, py.logits)
        assert cx.cycles.tolist() == py.cycles.tolist()
        assert cx.total_cycles == py.total_cycles
        assert cx.counter_latency == py.counter_latency


def test_compiled_with_random_backpressure(net: tuple) -> None:
    qg, x = net
    p = plan(qg, device("gowin"))
    x_ir = golden.quantize_inputs(qg, np.concatenate([x] * 4))[qg.inputs[0].tensor]
    want = golden.logits(qg, np.concatenate([x] * 4))
    free = simulate(Accelerator(p), x_ir, backend="cxxrtl", back_to_back=True)
    for seed in (1, 2, 3):
        r = simulate(Accelerator(p), x_ir, backend="cxxrtl", back_to_back=True, seed=seed,
                     idle=0.3, busy=0.4)
        assert np.array_equal(r.logits, want)
        assert r.total_cycles > free.total_cycles  # the stalls did happen


def test_compiled_model_is_cached(net: tuple) -> None:
    qg, _ = net
    p = plan(qg, device("ecp5"))
    first = cxxrtl.compile_design(Accelerator(p))
    again = cxxrtl.compile_design(Accelerator(p))
    assert again.library == first.library and again.compile_seconds == 0.0


def test_waveform_of_one_image(net: tuple, tmp_path) -> None:
    qg, x = net
    p = plan(qg, device("ecp5"))
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    vcd = tmp_path / "image1.vcd"
    r = cxxrtl.simulate(Accelerator(p), x_ir, vcd=str(vcd), vcd_image=1)
    text = vcd.read_text()
    assert "$enddefinitions" in text and "ivalid" in text
    samples = [ln for ln in text.splitlines() if ln.startswith("#")]
    # one sample per cycle of image 1, from its first input beat to its last logit
    assert abs(len(samples) - int(r.cycles[1])) <= 2


def test_missing_compiler_is_one_clear_error(net: tuple, monkeypatch) -> None:
    qg, _ = net
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(cxxrtl.CompilerMissing, match="apt-get install g\\+\\+"):
        cxxrtl.compile_design(Accelerator(plan(qg, device("ecp5"))))


def test_unknown_backend(net: tuple) -> None:
    qg, x = net
    from accelgen.errors import UsageError

    with pytest.raises(UsageError, match="'iverilog' \\(one of pysim, cxxrtl, verilator\\)"):
        simulate(Accelerator(plan(qg, device("ecp5"))), x, backend="iverilog")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accelgen", *args], capture_output=True,
                          text=True)


def test_evaluate_compiled_equals_golden_on_the_shipped_subset(tmp_path) -> None:
    """The default model's shipped evaluation images through its compiled RTL (ULX3S-12F plan):
    the hardware's accuracy is the golden model's, image by image."""
    accel = tmp_path / "d.accel"
    r = _cli("compress", "--out", str(accel))
    assert r.returncode == 0, r.stderr
    gold = json.loads(_cli("evaluate", str(accel), "--json", "--limit", "200").stdout)
    r = _cli("evaluate", str(accel), "--engine", "cxxrtl", "--board", "ulx3s-12f", "--json",
             "--limit", "200")
    assert r.returncode == 0, r.stderr
    hw = json.loads(r.stdout)
    assert hw["golden_mismatches"] == 0
    assert hw["images"] == gold["images"] == 200
    assert hw["correct"] == gold["correct"]
    cyc = hw["cycles_per_image"]
    assert cyc["min"] <= cyc["median"] <= cyc["max"]
    assert abs(cyc["median"] - hw["plan_cycles_per_image"]) <= 0.05 * hw["plan_cycles_per_image"]


def test_cli_without_a_compiler_is_one_line_and_exit_2(tmp_path) -> None:
    """`accelgen run --engine cxxrtl` on a machine with no C++ compiler: one line naming what to
    install, exit code 2, no traceback, no output file."""
    import os

    accel = tmp_path / "d.accel"
    assert _cli("compress", "--out", str(accel)).returncode == 0
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 28, 28), np.float32))
    env = {**os.environ, "CXX": "", "PATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "accelgen", "run", str(accel), "--engine",
                        "cxxrtl", "--board", "ecp5", "--inputs", str(x), "-o",
                        str(tmp_path / "y.npy")], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install g++" in lines[0], r.stderr
    assert not (tmp_path / "y.npy").exists()


def test_run_writes_the_waveform_of_the_chosen_image(tmp_path) -> None:
    """`accelgen run --engine cxxrtl --vcd FILE --vcd-image N`: the waveform of image N only, no
    partial file left; another engine is one line and exit 2."""
    accel = tmp_path / "d.accel"
    assert _cli("compress", "--out", str(accel)).returncode == 0
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32))
    vcd = tmp_path / "w.vcd"
    r = _cli("run", str(accel), "--engine", "cxxrtl", "--board", "ulx3s-12f", "--inputs",
             str(x), "-o", str(tmp_path / "y.npy"), "--vcd", str(vcd), "--vcd-image", "1")
    assert r.returncode == 0, r.stderr
    assert f"waveform of image 1 -> {vcd}" in r.stdout
    text = vcd.read_text()
    assert "$enddefinitions" in text and "ivalid" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    r = _cli("run", str(accel), "--engine", "verilator", "--board", "ulx3s-12f", "--inputs",
             str(x), "-o", str(tmp_path / "z.npy"), "--vcd", str(tmp_path / "v.vcd"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "use --engine cxxrtl" in r.stderr and not (tmp_path / "z.npy").exists()


def test_run_vcd_image_outside_the_inputs_is_one_line_and_writes_nothing(tmp_path) -> None:
    accel = tmp_path / "d.accel"
    assert _cli("compress", "--out", str(accel)).returncode == 0
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 28, 28), np.float32))
    vcd = tmp_path / "w.vcd"
    r = _cli("run", str(accel), "--engine", "cxxrtl", "--board", "ulx3s-12f", "--inputs",
             str(x), "-o", str(tmp_path / "y.npy"), "--vcd", str(vcd), "--vcd-image", "2")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--vcd-image 2: the inputs hold images 0..1" in r.stderr and "Traceback" not in r.stderr
    assert not vcd.exists() and not (tmp_path / "y.npy").exists()
