"""The default model built for the three default boards, and the wall time of the main command.

    python benchmarks/boards.py [--boards ice40 ecp5 gowin] [--seeds 3] [--no-cold] \\
        [--out benchmarks/results/boards.md]

For each board: ``accelgen build --board B --seeds N --no-cache`` in a fresh process (the
build cache is bypassed, so the tools really run), then its ``report.json`` — or, when timing
fails, the tools' own ``work/result.json`` in ``OUT.failed/`` — gives the resources against the
device's budget, the Fmax of every seed (min / median), whether timing met the planned clock,
the cycles per image (from the plan, checked against simulation by the test suite), the frames
per second at the planned clock and at Fmax, and the host-link frames per second (frame sizes
on the wire at the report's baud rate plus the simulated latency: computed, not measured on a
board).

Wall time: ``accelgen build --board ice40 --seeds 1 --no-cache`` (the README's main command,
with its two-image self-check) twice: with this machine's warm YoWASP cache (the tools'
WebAssembly already compiled), and cold (a fresh, empty ``YOWASP_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_build(board: str, out: Path, seeds: int, extra_env: dict | None = None,
              check_images: int | None = None) -> tuple[dict, float, int, str]:
    """One build in a fresh process: (facts, wall seconds, exit code, last stderr line)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".failed"), ignore_errors=True)
    cmd = [sys.executable, "-m", "accelgen", "build", "--board", board, "--seeds", str(seeds),
           "--no-cache", "--out", str(out)]
    if check_images is not None:
        cmd += ["--check-images", str(check_images)]
    env = dict(os.environ, **(extra_env or {}))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    err = (proc.stderr.strip().splitlines() or [""])[-1]
    report = out / "report.json"
    if report.is_file():
        return json.loads(report.read_text()), wall, proc.returncode, err
    result = out.with_name(out.name + ".failed") / "work" / "result.json"
    if result.is_file():
        r = json.loads(result.read_text())
        best = r["best"]
        fmaxes = list(r["seed_fmax"].values())
        return {"board": board, "resources": best["resources"], "fmax_mhz": best["fmax_mhz"],
                "fmax_min_mhz": min(fmaxes), "fmax_median_mhz": statistics.median(fmaxes),
                "clock_mhz": r["target_mhz"], "timing_met": False,
                "tool_seconds": r["seconds"]}, wall, proc.returncode, err
    return {"board": board}, wall, proc.returncode, err


def _res(r: dict, kind: str) -> str:
    v = (r.get("resources") or {}).get(kind)
    if not v or not v.get("available"):
        return "-"
    return f"{v['used']:,}/{v['available']:,}"


def _f(x, fmt: str = "{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", nargs="*", default=["ice40", "ecp5", "gowin"],
                    help="boards to build (none: only the wall times)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache wall time")
    ap.add_argument("--no-wall", action="store_true", help="skip both wall-time builds")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accelgen-bench-"))
    rows = []
    for board in args.boards:
        print(f"building for {board} ({args.seeds} seeds) ...", file=sys.stderr, flush=True)
        r, wall, rc, err = run_build(board, work / board, args.seeds, check_images=0)
        rows.append((board, r, wall, rc, err))

    title = (f"accelgen build of the default model, {args.seeds} place-and-route seeds, "
             f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    lines = [title, ""]
    if rows:
        lines += [("| board | hardware | LUT/LC | FF | BRAM | SPRAM | DSP | planned MHz | "
                   "Fmax best / min / median | timing | cycles/image | FPS at plan | "
                   "FPS at Fmax | link FPS | build s |"),
                  ("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | "
                   "---: | ---: | ---: | ---: |")]
    for board, r, wall, _rc, _err in rows:
        met = {True: "met", False: "FAILED", None: "-"}[r.get("timing_met")]
        link = (r.get("link") or {}).get("fps")
        lines.append(
            f"| {r.get('board', board)} | {(r.get('arch') or {}).get('chosen', '-')} | "
            f"{_res(r, 'lut')} | {_res(r, 'ff')} | "
            f"{_res(r, 'bram')} | {_res(r, 'spram')} | {_res(r, 'dsp')} | "
            f"{_f(r.get('clock_mhz'), '{:g}')} | {_f(r.get('fmax_mhz'))} / "
            f"{_f(r.get('fmax_min_mhz'))} / {_f(r.get('fmax_median_mhz'))} | {met} | "
            f"{_f(r.get('cycles_per_image'), '{:,}')} | {_f(r.get('fps'), '{:,.0f}')} | "
            f"{_f(r.get('fps_at_fmax'), '{:,.0f}')} | {_f(link, '{:,.0f}')} | {wall:,.0f} |")
    failures = [(b, rc, e) for b, _r, _w, rc, e in rows if rc != 0]
    if failures:
        lines.append("")
        lines += [f"- {b}: exit {rc}: {e}" for b, rc, e in failures]

    if not args.no_wall:
        lines += ["", ("| `accelgen build --board ice40 --seeds 1 --no-cache` | wall s | "
                       "synthesis s | place and route s | exit |"),
                  "| --- | ---: | ---: | ---: | --- |"]
        caches = [("warm YoWASP cache", {})]
        if not args.no_cold:
            caches.append(("cold YoWASP cache", {"YOWASP_CACHE_DIR": str(work / "yowasp")}))
        for label, env in caches:
            print(f"wall time, {label} ...", file=sys.stderr, flush=True)
            r, wall, rc, _err = run_build("ice40", work / "wall", 1, extra_env=env)
            t = r.get("tool_seconds") or {}
            lines.append(f"| {label} | {wall:,.0f} | {_f(t.get('synthesis'), '{:,.0f}')} | "
                         f"{_f(t.get('place_and_route'), '{:,.0f}')} | {rc} |")
    shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
