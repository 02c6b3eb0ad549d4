"""Bring-up against the simulated design: a `--no-synth` build folder, the design rebuilt from
it, `run_eval` over the host link in simulation, every image compared with golden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from accelgen import boards
from accelgen.bringup import BringUpError, BuildFolder, program_command, run_eval
from accelgen.cli import main
from accelgen.errors import UsageError
from accelgen.flow import make_design
from accelgen.host import Device, SimTransport
from tests.test_build import _tiny_model


@pytest.fixture(scope="module")
def build_folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bringup")
    out = tmp / "out"
    code = main(["build", "--no-synth", "--model", str(_tiny_model(tmp / "t.onnx")), "--out",
                 str(out), "--check-images", "1", "--baud", "2475000"])
    assert code == 0
    return out


def _device(build: BuildFolder, design_hash: str | None = None) -> Device:
    board = boards.board(build.report["board"])
    _, _, linked = make_design(build.qgraph, board, build.report["clock_mhz"],
                               build.report["baud"])
    if design_hash is not None:
        assert f"{linked.link.info.design_hash:08x}" == design_hash
    return Device(SimTransport(linked), timeout_s=0.05)


def test_no_synth_build_writes_what_bring_up_needs(build_folder: Path) -> None:
    report = json.loads((build_folder / "report.json").read_text())
    assert report["bitstream"] is None and report["self_check"]["equal"]
    build = BuildFolder.open(build_folder)
    assert len(build.weights) == report["load_bytes"]
    with pytest.raises(UsageError, match="no bitstream"):
        _ = build.bitstream


def test_run_eval_is_bit_exact_over_the_simulated_link(build_folder: Path) -> None:
    build = BuildFolder.open(build_folder)
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, size=(3, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2])
    with _device(build, build.report["design_hash"]) as device:
        report = run_eval(device, build, x, y)
    assert report.images == 3 and report.bit_exact == 3 and not report.mismatches
    assert all(c > 0 for c in report.device_cycles)
    assert "3/3 images bit-exact" in report.lines(int(build.report["clock_mhz"] * 1e6))[0]


def test_a_board_with_another_design_is_refused(build_folder: Path) -> None:
    build = BuildFolder.open(build_folder)
    other = dict(build.report, design_hash="deadbeef")
    wrong = BuildFolder(build.path, other, build.qgraph, build.weights)
    with _device(build) as device, pytest.raises(BringUpError, match="not this build's deadbeef"):
        run_eval(device, wrong, np.zeros((1, 1, 8, 8), np.float32))


def test_missing_programmer_names_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no programmer anywhere
    with pytest.raises(UsageError, match=r"no programmer for icebreaker.*iceprog.*install"):
        program_command(boards.board("ice40"), tmp_path / "top.bin")
