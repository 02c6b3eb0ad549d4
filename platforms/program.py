"""Program an `accelgen build` output onto its board.

    python platforms/program.py BUILD_FOLDER [--programmer iceprog|openFPGALoader|...]

Uses the board's programmer (iceprog for iCE40 boards, openFPGALoader for ULX3S and Tang Nano
9K, dfu-util for OrangeCrab) when it is on PATH; otherwise prints which to install.
"""

from __future__ import annotations

import argparse
import sys

from accelgen.errors import AccelgenError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="the accelgen build output folder")
    ap.add_argument("--programmer", default=None)
    args = ap.parse_args(argv)
    try:
        from accelgen import boards
        from accelgen.bringup import BuildFolder, program

        build = BuildFolder.open(args.build)
        board = boards.board(build.report["board"])
        program(board, build.bitstream, args.programmer)
        print(f"programmed {build.bitstream} onto {board.title}")
        return 0
    except AccelgenError as err:
        print(f"program: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
