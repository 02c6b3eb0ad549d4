"""The default model built through the real tools for the three default boards: timing met at
the planned clock, the self-check equal to golden, and the scheduler's resource model against
nextpnr's report (LUTs within 15 %, block RAM, SPRAM and DSP exactly).

These builds take 6 (iCEBreaker), 10 (Tang Nano 9K) and 45 (ULX3S-85F) minutes of place and
route on a 2-core machine, more than CI's budget for the whole suite: they run when
``ACCELGEN_BOARD_BUILDS=1`` (``=ice40,gowin`` for some). A build is cached by the hash of its
design, so on a machine that built a board before its test checks the cached result in
seconds. CI builds a small model for every family (`tests/test_build.py`) through the same
flow; `benchmarks/boards.py` measures these builds with several seeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from accelgen.cli import main

_WANTED = os.environ.get("ACCELGEN_BOARD_BUILDS", "")


def _wanted(board: str) -> bool:
    return _WANTED in ("1", "all") or board in _WANTED.split(",")


@pytest.mark.slow
@pytest.mark.parametrize("board", ["ice40", "gowin", "ecp5"])
def test_default_model_build_meets_timing_and_the_resource_model(board: str, tmp_path: Path,
                                                                 capsys) -> None:
    if not _wanted(board):
        pytest.skip(f"the default model's {board} build takes minutes to most of an hour: set "
                    f"ACCELGEN_BOARD_BUILDS=1 (or ={board}) to run it")
    out = tmp_path / "out"
    assert main(["build", "--board", board, "--out", str(out), "--check-images", "2"]) == 0, \
        capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())
    assert r["timing_met"] and r["fmax_mhz"] >= r["clock_mhz"]
    assert r["self_check"]["equal"] and r["self_check"]["images"] == 2
    assert Path(out / r["bitstream"]).is_file()
    used, planned = r["resources"], r["resources_planned"]
    lut = used["lut"]["used"]
    assert abs(planned["lut"]["used"] - lut) <= 0.15 * lut, (planned["lut"], used["lut"])
    for kind in ("bram", "spram", "dsp"):
        assert planned[kind]["used"] == used[kind]["used"], (kind, planned[kind], used[kind])
