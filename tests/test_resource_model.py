"""The scheduler's iCE40 logic model against Yosys: a small network's whole accelerator is
synthesized (``synth_ice40``, about half a minute) and the plan's LUT and flip-flop totals must
be within 15 % of the cells Yosys reports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from amaranth import Signal
from amaranth.back import rtlil
from amaranth.lib import data
from onnx import helper

from accelgen.accelerator import Accelerator
from accelgen.boards import board
from accelgen.build import hermetic_env, tool_argv
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
