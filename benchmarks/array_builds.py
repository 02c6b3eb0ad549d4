"""The PE array built through the real tools: MLPerf Tiny models the streaming pipeline cannot
hold, each on its board (`accelgen build --arch array`), with the report's figures in a table.

    python benchmarks/array_builds.py [--only resnet8-ice40 vww-ecp5 resnet8-ecp5 kws-ice40]
                                      [--seeds N] [--out FILE.md]

Per build: the model, board and clock, Fmax (best, and min/median over the seeds), whether
timing is met, cycles per image (the array's counters in the self-check, equal to the cycle
model), FPS at the clock and at Fmax, end-to-end images per second over the UART link (frame
sizes and latency), resources against the device, and the build's wall time. The quantization
uses random calibration (no data ships for these models), which does not change the hardware
figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from accelgen.cli import main as accelgen

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
# name -> (board, model file, model)
BUILDS = {"resnet8-ice40": ("ice40", "pretrainedResnet.onnx", "ResNet-8"),
          "vww-ecp5": ("ecp5", "vww_96_float_tf2onnx.onnx", "VWW MobileNet"),
          "resnet8-ecp5": ("ecp5", "pretrainedResnet.onnx", "ResNet-8"),
          "kws-ice40": ("ice40", "kws_ref_model_float32_tf2onnx.onnx", "KWS DS-CNN")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=list(BUILDS), nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lines = ["# PE array builds (`accelgen build --arch array`)", "",
             ("| model | board | clock (MHz) | Fmax best (min/median) | timing | cycles/image | "
              "FPS at clock | FPS at Fmax | link images/s | LUT | FF | EBR | SPRAM | DSP | "
              "per-layer counters over the link | self-check | wall (s) |"),
             ("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
              "---: | ---: | --- | --- | ---: |")]
    for key, (board, fname, name) in BUILDS.items():
        if args.only and key not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t0 = time.monotonic()
            code = accelgen(["build", "--arch", "array", "--board", board, "--model",
                             str(MLPERF / fname), "--out", str(out), "--check-images", "1",
                             "--seeds", str(args.seeds), "--no-cache"])
            wall = time.monotonic() - t0
            if code != 0:
                lines.append(f"| {name} | {board} | build failed (exit {code}) | | | | | | | "
                             "| | | | | | | |")
                print(lines[-1], flush=True)
                continue
            r = json.loads((out / "report.json").read_text())
        res = r["resources"]

        def used(kind: str, res=res) -> str:
            v = res.get(kind)
            return f"{v['used']:,}/{v['available']:,}" if v else "-"

        sc = r["self_check"]
        lines.append(
            f"| {name} | {r['board']} ({r['device']}) | {r['clock_mhz']:g} | "
            f"{r['fmax_mhz']:.1f} ({r['fmax_min_mhz']:.1f}/{r['fmax_median_mhz']:.1f}) | "
            f"{'met' if r['timing_met'] else 'FAILED'} | {r['cycles_per_image']:,} | "
            f"{r['fps']:.1f} | {r['fps_at_fmax']:.1f} | {r['link']['fps']:.1f} | "
            f"{used('lut')} | {used('ff')} | {used('bram')} | {used('spram')} | {used('dsp')} | "
            f"{'yes' if r.get('layer_counters_over_link') else 'no'} | "
            f"{'bit-exact' if sc.get('equal') else 'MISMATCH'} ({sc.get('engine')}) | "
            f"{wall:.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
