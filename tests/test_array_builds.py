"""The PE array built through the real tools for models the streaming pipeline cannot hold:
the MLPerf Tiny KWS DS-CNN on the iCEBreaker (UP5K; ResNet-8's array no longer fits its
logic cells since the timing registers of 2026-12) and the visual-wake-words MobileNet on the
ULX3S-85F, each with its self-check bit-exact in simulation, timing met at the array's planned
clock, and the exactly known resources (DSP, SPRAM) equal to nextpnr's report.

Each build places and routes a nearly full device (5 to 15 minutes on two cores), so these run
when ``ACCELGEN_ARRAY_BUILDS=1`` is set (the CI suite keeps within its 30-minute budget
without them); `benchmarks/results/pe_array.md` records their latest figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from accelgen.cli import main
from tests.onnx_helpers import MLPERF

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("ACCELGEN_ARRAY_BUILDS"),
                       reason="set ACCELGEN_ARRAY_BUILDS=1: a whole-device place and route"),
    pytest.mark.skipif(not MLPERF.is_dir(), reason="../shared/models absent"),
]


def _build(tmp_path: Path, board: str, model: str) -> dict:
    out = tmp_path / "out"
    code = main(["build", "--arch", "array", "--board", board, "--model", str(MLPERF / model),
                 "--out", str(out), "--check-images", "1", "--no-cache"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["arch"]["chosen"] == "array"
    assert report["timing_met"] and report["fmax_mhz"] >= report["clock_mhz"]
    assert report["self_check"]["equal"]
    assert report["self_check"]["cycles"] == [report["cycles_per_image"]]
    assert Path(report["bitstream"]).is_file()
    for kind, planned in report["resources_planned"].items():
        assert report["resources"][kind]["used"] == planned["used"], kind
    return report


def test_kws_on_the_icebreaker(tmp_path: Path) -> None:
    report = _build(tmp_path, "ice40", "kws_ref_model_float32_tf2onnx.onnx")
    assert set(report["resources_planned"]) == {"dsp", "spram"}


def test_vww_mobilenet_on_the_ulx3s_85f(tmp_path: Path) -> None:
    _build(tmp_path, "ecp5", "vww_96_float_tf2onnx.onnx")
