"""The Verilator backend against Amaranth's simulator, CXXRTL and the golden model: the same
logits, classes and cycles per image; seeded random backpressure; the cache; the CLI over the
shipped evaluation subset; a missing Verilator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.devices import device
from accelgen.errors import UsageError
from accelgen.scheduler import plan
from accelgen.sim import compiled, simulate, verilator
from tests.test_cxxrtl import net  # the residual network and three inputs (a fixture)

__all__ = ["net"]

pytestmark = pytest.mark.skipif(
    shutil.which("verilator") is None and not os.environ.get("CI"),
    reason="Verilator is not installed (apt-get install verilator; .ci/run installs it)",
)


@pytest.mark.parametrize("board", ["ice40", "ecp5"])
def test_verilator_equals_pysim_and_cxxrtl(net: tuple, board: str) -> None:
    qg, x = net
    p = plan(qg, device(board))
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    want = golden.logits(qg, x)
    for back_to_back in (False, True):
        py = simulate(Accelerator(p), x_ir, backend="pysim", back_to_back=back_to_back)
        cx = simulate(Accelerator(p), x_ir, backend="cxxrtl", back_to_back=back_to_back)
        vl = simulate(Accelerator(p), x_ir, backend="verilator", back_to_back=back_to_back)
        assert np.array_equal(vl.logits, want)
        assert np.array_equal(vl.classes, want.argmax(1))
        assert vl.cycles.tolist() == py.cycles.tolist() == cx.cycles.tolist()
        assert vl.total_cycles == py.total_cycles == cx.total_cycles
        assert vl.counter_latency == py.counter_latency


def test_verilator_with_random_backpressure_equals_cxxrtl(net: tuple) -> None:
    """Both compiled drivers run the same loop with the same seeded draws: under the same
    random backpressure they take the same cycles."""
    qg, x = net
    p = plan(qg, device("gowin"))
    xs = np.concatenate([x] * 4)
    x_ir = golden.quantize_inputs(qg, xs)[qg.inputs[0].tensor]
    want = golden.logits(qg, xs)
    free = simulate(Accelerator(p), x_ir, backend="verilator", back_to_back=True)
    for seed in (1, 2, 3):
        opts = {"back_to_back": True, "seed": seed, "idle": 0.3, "busy": 0.4}
        vl = simulate(Accelerator(p), x_ir, backend="verilator", **opts)
        cx = simulate(Accelerator(p), x_ir, backend="cxxrtl", **opts)
        assert np.array_equal(vl.logits, want)
        assert vl.total_cycles > free.total_cycles  # the stalls did happen
        assert vl.cycles.tolist() == cx.cycles.tolist()


def test_verilator_model_is_cached(net: tuple) -> None:
    qg, _ = net
    p = plan(qg, device("ecp5"))
    first = verilator.compile_design(Accelerator(p))
    again = verilator.compile_design(Accelerator(p))
    assert again.library == first.library and again.compile_seconds == 0.0


def test_waveforms_are_the_cxxrtl_backends(net: tuple, tmp_path) -> None:
    qg, x = net
    with pytest.raises(UsageError, match="--engine cxxrtl"):
        verilator.simulate(Accelerator(plan(qg, device("ecp5"))), x, vcd=str(tmp_path / "w"))


def test_missing_verilator_is_one_clear_error(net: tuple, monkeypatch) -> None:
    qg, _ = net
    monkeypatch.setenv("VERILATOR", "")
    monkeypatch.setattr(verilator.shutil, "which", lambda name: None)
    with pytest.raises(compiled.CompilerMissing, match="apt-get install verilator"):
        verilator.compile_design(Accelerator(plan(qg, device("ecp5"))))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accelgen", *args], capture_output=True,
                          text=True, env=env)


def test_evaluate_verilator_equals_golden_on_the_default_board(tmp_path) -> None:
    """The default model's shipped evaluation images through the Verilator model of its
    iCEBreaker (UP5K) plan: the hardware's accuracy is the golden model's, image by image,
    and the cycles per image are the plan's within 5 %."""
    accel = tmp_path / "d.accel"
    assert _cli("compress", "--out", str(accel)).returncode == 0
    gold = json.loads(_cli("evaluate", str(accel), "--json", "--limit", "60").stdout)
    r = _cli("evaluate", str(accel), "--engine", "verilator", "--board", "ice40", "--json",
             "--limit", "60")
    assert r.returncode == 0, r.stderr
    hw = json.loads(r.stdout)
    assert hw["golden_mismatches"] == 0
    assert hw["images"] == gold["images"] == 60
    assert hw["correct"] == gold["correct"]
    cyc = hw["cycles_per_image"]
    assert abs(cyc["median"] - hw["plan_cycles_per_image"]) <= 0.05 * hw["plan_cycles_per_image"]


def test_cli_without_verilator_is_one_line_and_exit_2(tmp_path) -> None:
    accel = tmp_path / "d.accel"
    assert _cli("compress", "--out", str(accel)).returncode == 0
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 28, 28), np.float32))
    env = {**os.environ, "VERILATOR": "", "PATH": str(tmp_path)}
    r = _cli("run", str(accel), "--engine", "verilator", "--board", "ecp5", "--inputs", str(x),
             "-o", str(tmp_path / "y.npy"), env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install verilator" in lines[0], r.stderr
    assert not (tmp_path / "y.npy").exists()


def test_line_buffers_freed_by_columns_on_the_default_up5k_plan() -> None:
    """The default model's iCEBreaker plan with every compact line buffer freeing its oldest
    row column by column (`StagePlan.partial_release`; the UP5K has no logic left for it, so
    the scheduler does not choose it there): bit-exact, and the coupled pipeline's event model
    within 5 % of the simulated interval, which drops by over a quarter."""
    import dataclasses

    from accelgen.cli import quantized_for, resolve_model
    from accelgen.data import shipped
    from accelgen.scheduler.flow import pipeline_interval

    qg = quantized_for(None, bits=8)
    p = plan(qg, device("ice40"))
    freed = dataclasses.replace(p, stages=tuple(
        dataclasses.replace(s, partial_release=s.compact_ring) for s in p.stages))
    freed = dataclasses.replace(freed, interval=pipeline_interval(freed))
    assert freed.ii_cycles < 0.8 * p.ii_cycles
    x = shipped(resolve_model(None), "eval").x[:4]
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    r = simulate(Accelerator(freed), x_ir, backend="verilator", back_to_back=True)
    assert np.array_equal(r.logits, golden.logits(qg, x))
    steady = float(np.median(r.cycles[1:]))
    assert abs(steady - freed.ii_cycles) <= 0.05 * freed.ii_cycles, (steady, freed.ii_cycles)
    assert steady < 0.75 * p.ii_cycles
