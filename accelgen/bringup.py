"""Board bring-up: program a board, then run evaluation images through it over the host link,
comparing every result with the golden model.

`run_eval` works on any `accelgen.host.Device` — a board behind a serial port, or the simulated
design behind `SimTransport` (which is how it is tested) — and a build folder's contents: the
shape description (for the golden model and the input quantization), the weight image
(``weights.bin``) and the design hash from ``report.json`` (INFO must report the same, or the
board carries another build's bitstream).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accelgen.errors import AccelgenError, UsageError


class BringUpError(AccelgenError):
    """The board is not running the build it should, or disagrees with the golden model."""


@dataclass(frozen=True)
class BuildFolder:
    """What bring-up needs from an ``accelgen build`` output folder."""

    path: Path
    report: dict
    qgraph: object
    weights: bytes

    @classmethod
    def open(cls, path: str | Path) -> BuildFolder:
        from accelgen.quantized import load

        folder = Path(path)
        report_path = folder / "report.json"
        if not report_path.is_file():
            raise UsageError(f"{str(folder)!r} is not an accelgen build folder (no report.json)")
        report = json.loads(report_path.read_text())
        accels = sorted(folder.glob("*.accel"))
        if not accels:
            raise UsageError(f"build folder {str(folder)!r} has no .accel shape description")
        weights = folder / "weights.bin"
        return cls(folder, report, load(accels[0]),
                   weights.read_bytes() if weights.is_file() else b"")

    @property
    def bitstream(self) -> Path:
        if not self.report.get("bitstream"):
            raise UsageError(f"the build in {str(self.path)!r} has no bitstream (--no-synth?)")
        path = Path(self.report["bitstream"])
        return path if path.is_absolute() else self.path / path.name


@dataclass(frozen=True)
class EvalReport:
    images: int
    bit_exact: int  # images whose logits equal golden's
    correct: int  # images classified as labelled (when labels are known)
    labelled: bool
    device_cycles: list[int]
    host_seconds: list[float]
    mismatches: list[int]

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    def lines(self, clock_hz: int) -> list[str]:
        cyc = np.array(self.device_cycles, dtype=float)
        host = np.array(self.host_seconds)
        out = [f"{self.bit_exact}/{self.images} images bit-exact with the golden model"]
        if self.labelled:
            out.append(f"accuracy {100 * self.accuracy:.2f} % ({self.correct}/{self.images})")
        if len(cyc):
            out.append(f"device latency {np.median(cyc):,.0f} cycles median "
                       f"({np.median(cyc) / clock_hz * 1e3:.2f} ms at {clock_hz / 1e6:g} MHz); "
                       f"host round trip {np.median(host) * 1e3:.1f} ms median, "
                       f"{1 / np.mean(host):.1f} images/s")
        return out


def run_eval(device, build: BuildFolder, x: np.ndarray, y: np.ndarray | None = None,
             *, load: bool = True, progress=None) -> EvalReport:
    """Images `x` (model layout) through `device`; every result compared with golden."""
    from accelgen import golden

    qg = build.qgraph
    info = device.info(refresh=True)
    want_hash = int(build.report["design_hash"], 16)
    if info.design_hash != want_hash:
        raise BringUpError(
            f"the board runs design {info.design_hash:08x}, not this build's {want_hash:08x}: "
            f"program the bitstream of {build.path} first (platforms/program.py)"
        )
    if load and info.load_bytes:
        if len(build.weights) != info.load_bytes:
            raise BringUpError(
                f"weights.bin has {len(build.weights)} bytes; the design expects "
                f"{info.load_bytes}"
            )
        device.load_weights(build.weights)
    codes = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    want = golden.logits(qg, x)
    exact = correct = 0
    cycles: list[int] = []
    seconds: list[float] = []
    mismatches: list[int] = []
    order = qg.outputs[0].layout.reshape(-1)
    for k in range(len(x)):
        t0 = time.monotonic()
        result = device.infer(codes[k])
        seconds.append(time.monotonic() - t0)
        cycles.append(int(result.cycles))
        # the device reports the logits in beat order; golden is in the model's order
        got = np.asarray(result.logits, dtype=np.int64).reshape(-1)[order]
        if np.array_equal(got, want[k]):
            exact += 1
        else:
            mismatches.append(k)
        if y is not None and int(result.cls) == int(y[k]):
            correct += 1
        if progress is not None:
            progress(k + 1, len(x))
    return EvalReport(len(x), exact, correct, y is not None, cycles, seconds, mismatches)


PROGRAMMERS = {
    "ice40": [("iceprog", []), ("openFPGALoader", ["-b", "ice40_generic"])],
    "ecp5": [("openFPGALoader", ["-b", "ulx3s"])],
    "gowin": [("openFPGALoader", ["-b", "tangnano9k"])],
}


def program_command(board, bitstream: Path, programmer: str | None = None) -> list[str]:
    """The command that programs `bitstream` onto `board`: the board's own programmer if it is
    on PATH, else any known one for its family; a clear error naming them when none is."""
    candidates = [(board.programmer[0], list(board.programmer[1:]))] if board.programmer else []
    candidates += PROGRAMMERS.get(board.family, [])
    if programmer:
        candidates = [(programmer, [])]
    for tool, args in candidates:
        if shutil.which(tool):
            return [tool, *args, str(bitstream)]
    names = ", ".join(dict.fromkeys(t for t, _ in candidates))
    raise UsageError(
        f"no programmer for {board.name} found on PATH (tried {names}); install one "
        f"(e.g. apt-get install openfpgaloader, or fpga-icestorm for iceprog)"
    )


def program(board, bitstream: Path, programmer: str | None = None) -> None:
    cmd = program_command(board, bitstream, programmer)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise BringUpError(f"{cmd[0]} failed (exit {proc.returncode}): {tail[0]}")
