"""The PE array's logic model (`accelgen.array.resources`) against Yosys, and the estimate's
refusal of an array the model puts above the device's LUTs.

The network is a residual block with a max pool (`tests.test_array._net`), a program the
iCE40 fit never saw; its `ArrayAccelerator` (the array without the host link) is synthesized
with each family's flow and the model must be within 15 % on LUTs (the family's LUT-budget
units) and flip-flops, and the block memories, SPRAM and DSP blocks the estimate counts
exactly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth import Signal
from amaranth.back import rtlil
from amaranth.lib import data

from accelgen.array.compiler import compile_graph
from accelgen.array.resources import array_logic
from accelgen.array.targets import array_target, estimate_array, layer_counters_kept
from accelgen.boards import board
from accelgen.build import hermetic_env, synthesized_logic, tool_argv, yosys_cell_counts
from accelgen.compress import QuantConfig, quantize
from accelgen.cores.array_accelerator import ArrayAccelerator
from tests.test_array import _net

_FLOWS = {"ice40": ("synth_ice40 -spram", r"SB_DFF\w*", {"dsp": "SB_MAC16",
                                                           "spram": "SB_SPRAM256KA",
                                                           "bram": "SB_RAM40_4K"}),
          "ecp5": ("synth_ecp5", r"TRELLIS_FF", {"bram": "DP16KD"})}


def _residual_block(bits: int, channels: int = 8):
    rng = np.random.default_rng(3)
    graph = _net(rng, 3, channels, (3, 3), 1, [1, 1, 1, 1], True, True, "max", 8)
    qg, _ = quantize(graph, rng.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32),
                     QuantConfig(weight_bits=bits, act_bits=bits, calibration="max"))
    return qg


@pytest.mark.parametrize(("family", "channels"), [("ice40", 8), ("ecp5", 8), ("ecp5", 32)])
def test_array_logic_model_within_15_percent_of_synthesis(family: str, channels: int,
                                                          tmp_path: Path) -> None:
    """(32 channels on ECP5's 16 PEs: two accumulators a PE, `ArrayConfig.folds`.)"""
    qg = _residual_block(8, channels)
    dev = board(family).device
    target = array_target(dev)
    program = compile_graph(qg, target.config)
    assert program.folds == (2 if channels > target.config.pes else 1)
    kept = layer_counters_kept(family)
    acc = ArrayAccelerator(program, family=target.family, layer_counters=kept)
    values = [v.as_value() if isinstance(v, data.View) else v
              for _, _, v in acc.signature.flatten(acc)]
    ports = [v for v in values if isinstance(v, Signal)]
    text = rtlil.convert(acc, name="top", platform=board(family).platform(), ports=ports)
    (tmp_path / "top.il").write_text(text)
    synth, ff_cells, exact = _FLOWS[family]
    script = f"read_rtlil top.il; {synth} -top top; tee -q -o synth_stat.txt stat"
    subprocess.run([*tool_argv("yosys"), "-q", "-p", script], cwd=tmp_path, env=hermetic_env(),
                   check=True, timeout=900)
    counts = yosys_cell_counts(tmp_path)
    lut = synthesized_logic(family, counts)
    ff = sum(n for cell, n in counts.items() if re.fullmatch(ff_cells, cell))
    model = array_logic(family, target.config.pes, program.needs(), kept)
    assert abs(model.lut - lut) <= 0.15 * lut, (model, lut)
    assert abs(model.ff - ff) <= 0.15 * ff, (model, ff)
    est = estimate_array(qg, dev)
    for kind, cell in exact.items():
        assert est.resources[kind]["used"] == counts.get(cell, 0), (kind, est.resources)


def test_an_array_above_the_device_luts_does_not_fit_and_auto_says_why() -> None:
    """The default model at 16 bits: its array needs about 7,000 of the UP5K's 5,280 LUTs."""
    proc = subprocess.run([sys.executable, "-m", "accelgen", "estimate", "--arch", "array",
                           "--bits", "16"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert re.search(r"array needs about [\d,]+ of the 5,280 LUTs of iCE40UP5K", proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "accelgen", "estimate", "--arch", "auto",
                           "--bits", "16"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fits neither template" in proc.stderr and "LUTs of iCE40UP5K" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "accelgen", "estimate", "--arch", "array",
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert 0 < doc["resources"]["lut"]["used"] <= doc["resources"]["lut"]["available"] == 5280
