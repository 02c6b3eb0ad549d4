"""Run the shipped evaluation images through a programmed board and compare with golden.

    python platforms/run_eval.py BUILD_FOLDER --port /dev/ttyUSB1 [--limit 100] [--program]

BUILD_FOLDER is the output of `accelgen build` (report.json, the .accel shape description,
weights.bin, the bitstream). With --program the bitstream is programmed first (iceprog or
openFPGALoader; a clear message when neither is installed). Every image's logits are compared
with the golden model; the script prints bit-exactness, accuracy and the measured latency, and
exits non-zero if any image differs.
"""

from __future__ import annotations

import argparse
import sys

from accelgen.errors import AccelgenError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="the accelgen build output folder")
    ap.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB1")
    ap.add_argument("--baud", type=int, default=None, help="default: the build's rate")
    ap.add_argument("--data", default=None, help=".npz with x (and y); default: shipped set")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--program", action="store_true", help="program the bitstream first")
    ap.add_argument("--programmer", default=None, help="iceprog, openFPGALoader, ...")
    args = ap.parse_args(argv)
    try:
        from accelgen import boards
        from accelgen.bringup import BuildFolder, program, run_eval
        from accelgen.cli import default_data
        from accelgen.data import load_npz
        from accelgen.host import Device, SerialTransport

        build = BuildFolder.open(args.build)
        board = boards.board(build.report["board"])
        if args.program:
            print(f"programming {build.bitstream} onto {board.title}")
            program(board, build.bitstream, args.programmer)
        data = load_npz(args.data) if args.data else default_data(None, "eval", build.qgraph)
        if data is None:
            raise AccelgenError("no evaluation data: pass --data FILE.npz")
        data = data.limit(args.limit)
        baud = args.baud or build.report.get("baud", boards.DEFAULT_BAUD)
        with Device(SerialTransport(args.port, baud), timeout_s=2.0) as device:
            report = run_eval(device, build, data.x, data.y,
                              progress=lambda k, n: print(f"\r{k}/{n}", end="", flush=True))
        print()
        for line in report.lines(int(build.report["clock_mhz"] * 1e6)):
            print(line)
        return 0 if report.bit_exact == report.images else 1
    except AccelgenError as err:
        print(f"run_eval: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
