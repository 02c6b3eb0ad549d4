"""The scheduler's logic models against Yosys: a small network's whole accelerator is
synthesized with each family's flow (``synth_ice40`` / ``synth_ecp5`` / ``synth_gowin``, under
a minute each) and the plan's LUT and flip-flop totals must be within 15 % of what Yosys
reports, in the units of the family's LUT budget (`accelgen.build.synthesized_logic`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from amaranth import Signal
from amaranth.back import rtlil
from amaranth.lib import data
from onnx import helper

from accelgen.accelerator import Accelerator
from accelgen.boards import board
from accelgen.build import hermetic_env, synthesized_logic, tool_argv, yosys_cell_counts
from accelgen.compress import quantize
from accelgen.devices import device
from accelgen.frontend import load_model
from accelgen.scheduler import plan
from tests.onnx_helpers import FLOAT, make_model


def _small_network():
    """Stem, depthwise (stride 2), pointwise, global average pool, dense: every stage kind of
    the default model, on 12x12 images."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                         group=8),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "pw"], ["c3"]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    inits = {
        "w1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "dw": rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5,
        "pw": rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * 0.5,
        "fc": rng.standard_normal((5, 16)).astype(np.float32),
        "fcb": rng.standard_normal(5).astype(np.float32) * 0.1,
    }
    model = make_model(nodes, [("x", ["N", 1, 12, 12], FLOAT)], [("logits", None, FLOAT)],
                       inits)
    qg, _ = quantize(load_model(model), rng.uniform(0, 1, (32, 1, 12, 12)).astype(np.float32))
    return qg


def _synth_ice40(acc: Accelerator, workdir: Path) -> dict[str, int]:
    """SB_LUT4 and flip-flop counts of ``synth_ice40`` on the accelerator alone."""
    argv = tool_argv("yosys")  # a dependency: missing it is a failure, not a skip
    values = [v.as_value() if isinstance(v, data.View) else v
              for _, _, v in acc.signature.flatten(acc)]
    ports = [v for v in values if isinstance(v, Signal)]
    # the platform selects the iCE40 primitives (SB_MAC16, SB_SPRAM256KA) the build uses
    text = rtlil.convert(acc, name="top", platform=board("ice40").platform(), ports=ports)
    (workdir / "top.il").write_text(text)
    # YoWASP tools see their working directory: run there, with relative names
    script = "read_rtlil top.il; synth_ice40 -spram -top top; tee -q -o stat.txt stat"
    subprocess.run([*argv, "-q", "-p", script], cwd=workdir, env=hermetic_env(), check=True,
                   timeout=900)
    stat = (workdir / "stat.txt").read_text()

    def count(pattern: str) -> int:
        return sum(int(n) for n in re.findall(rf"^\s+(\d+)\s+{pattern}\s*$", stat, re.M))

    return {"lut": count("SB_LUT4"), "ff": count(r"SB_DFF\w*"), "dsp": count("SB_MAC16"),
            "bram": count("SB_RAM40_4K")}


def test_ice40_logic_model_within_15_percent_of_synthesis(tmp_path: Path) -> None:
    p = plan(_small_network(), device("ice40"))
    assert p.fits
    got = _synth_ice40(Accelerator(p), tmp_path)
    model = p.accelerator_resources  # synthesized without the host link
    assert abs(model.lut - got["lut"]) <= 0.15 * got["lut"], (model, got)
    assert abs(model.ff - got["ff"]) <= 0.15 * got["ff"], (model, got)
    # block memories and DSP blocks are counted exactly
    assert (model.bram, model.dsp) == (got["bram"], got["dsp"]), (model, got)


# the cells of each family's flow: flip-flops, block RAMs and multipliers (a Gowin DSP block's
# MULT9X9 halves are counted one by one: `_dsp_products`)
_FAMILY_CELLS = {
    "ecp5": {"synth": "synth_ecp5", "ff": r"TRELLIS_FF", "bram": r"DP16KD",
             "dsp": r"MULT18X18D"},
    "gowin": {"synth": "synth_gowin", "ff": r"DFF\w*", "bram": r"(?:S?DPX?9?B?|SPX?9?|pROMX?9?)",
              "dsp": r"MULT9X9"},
}


def _synth(acc: Accelerator, family: str, workdir: Path) -> dict[str, int]:
    """LUT positions (`synthesized_logic`), flip-flops, block RAMs and DSP multipliers of the
    family's synthesis of the accelerator alone."""
    cells = _FAMILY_CELLS[family]
    values = [v.as_value() if isinstance(v, data.View) else v
              for _, _, v in acc.signature.flatten(acc)]
    ports = [v for v in values if isinstance(v, Signal)]
    text = rtlil.convert(acc, name="top", platform=board(family).platform(), ports=ports)
    (workdir / "top.il").write_text(text)
    script = f"read_rtlil top.il; {cells['synth']} -top top; tee -q -o synth_stat.txt stat"
    subprocess.run([*tool_argv("yosys"), "-q", "-p", script], cwd=workdir, env=hermetic_env(),
                   check=True, timeout=900)
    counts = yosys_cell_counts(workdir)

    def count(pattern: str) -> int:
        return sum(n for cell, n in counts.items() if re.fullmatch(pattern, cell))

    return {"lut": synthesized_logic(family, counts), "ff": count(cells["ff"]),
            "bram": count(cells["bram"]), "dsp": count(cells["dsp"])}


@pytest.mark.parametrize("family", ["ecp5", "gowin"])
def test_logic_model_within_15_percent_of_synthesis(family: str, tmp_path: Path) -> None:
    """The ECP5 and Gowin models (`MODELS`, fitted per family) against their own flows."""
    p = plan(_small_network(), device(family))
    assert p.fits
    got = _synth(Accelerator(p), family, tmp_path)
    model = p.accelerator_resources  # synthesized without the host link
    assert abs(model.lut - got["lut"]) <= 0.15 * got["lut"], (model, got)
    assert abs(model.ff - got["ff"]) <= 0.15 * got["ff"], (model, got)
    # block memories and DSP multipliers are counted exactly
    assert (model.bram, p.dsp_products) == (got["bram"], got["dsp"]), (model, got)
