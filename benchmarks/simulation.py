"""Simulation speed: Amaranth's Python simulator and the compiled RTL (CXXRTL) side by side on
the whole default model, and the full Fashion-MNIST test set through the compiled RTL.

    python benchmarks/simulation.py [--boards ice40 ecp5] [--images 20] [--test-set]
                                    [--mlperf [--mlperf-inputs 100]]
                                    [--out benchmarks/results/simulation.md]

For each board's plan: pysim runs one image (its cycles per second over that image's
simulation), the compiled backend `--images` images back to back (the C++ model's cycles per
second, the compile time reported apart, and its outputs compared with golden). With
`--test-set`, every Fashion-MNIST test image (Debian's dataset-fashion-mnist) goes through the
compiled RTL of the first board's plan and is compared with the golden model image by image.
With `--mlperf`, the MLPerf Tiny KWS DS-CNN and ResNet-8 (random calibration and inputs: their
data sets are not shipped) through the compiled RTL where a board's plan fits them. Verilator
is listed when installed; a harness for it is not written yet.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.boards import board as find_board
from accelgen.cli import quantized_for, resolve_model
from accelgen.data import shipped
from accelgen.scheduler import plan
from accelgen.sim import cxxrtl, pysim

TEST_SET = Path("/usr/share/datasets/fashion-mnist")
MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"


def fashion_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images (N, 1, 28, 28) in [0, 1] and their labels."""
    import gzip

    def read(name: str, offset: int) -> np.ndarray:
        candidates = [TEST_SET / name, TEST_SET / f"{name}.gz"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise SystemExit(f"{TEST_SET} has no {name}: apt-get install dataset-fashion-mnist")
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
        return np.frombuffer(raw, dtype=np.uint8, offset=offset)

    x = read("t10k-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y = read("t10k-labels-idx1-ubyte", 8).astype(np.int64)
    return x, y


def mlperf_rows(boards: list[str], n: int) -> list[str]:
    """KWS and ResNet-8, quantized on random data, `n` random inputs through the compiled RTL
    of each board's plan (where it fits), compared with the golden model."""
    from accelgen.compress import QuantConfig, quantize
    from accelgen.frontend import load_model
    from accelgen.scheduler import DoesNotFit

    rows = []
    rng = np.random.default_rng(0)
    for name, file, scale in (("KWS DS-CNN", "kws_ref_model_float32_tf2onnx.onnx", 30.0),
                              ("ResNet-8", "pretrainedResnet.onnx", 1.0)):
        path = MLPERF / file
        if not path.is_file():
            rows.append(f"| {name} | | | {path} is missing | | | |")
            continue
        graph = load_model(path)
        shape = tuple(graph.inputs[0].onnx_shape)
        calib = (rng.uniform(-1, 1, (64, *shape)) * scale).astype(np.float32)
        x = (rng.uniform(-1, 1, (n, *shape)) * scale).astype(np.float32)
        qg, _ = quantize(graph, calib, QuantConfig())
        for b in boards:
            dev = find_board(b).device
            try:
                p = plan(qg, dev)
            except DoesNotFit:
                rows.append(f"| {name} | {b} ({dev.name}) | | does not fit | | | |")
                continue
            acc = Accelerator(p)
            x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
            r = cxxrtl.simulate(acc, x_ir, back_to_back=True)
            want = golden.logits(qg, x)
            exact = bool(np.array_equal(r.logits, want))
            rows.append(f"| {name} | {b} ({dev.name}) | {n} | {'yes' if exact else 'NO'} | "
                        f"{p.ii_cycles:,.0f} | {float(np.median(r.cycles[1:])):,.0f} | "
                        f"{r.total_cycles / r.run_seconds:,.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", nargs="+", default=["ice40", "ecp5"])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--test-set", action="store_true")
    ap.add_argument("--mlperf", action="store_true",
                    help="also the MLPerf Tiny KWS DS-CNN and ResNet-8 (../shared/models)")
    ap.add_argument("--mlperf-inputs", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    qg = quantized_for(None, bits=8)
    data = shipped(resolve_model(None), "eval")
    rows = [("| board (device) | multipliers | cycles/image | pysim cycles/s | compiled cycles/s "
             "| ratio | compiled images | bit-exact | compile s |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for name in args.boards:
        b = find_board(name)
        p = plan(qg, b.device)
        x = data.x[: args.images]
        x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
        want = golden.logits(qg, x)
        py = pysim.simulate(Accelerator(p), x_ir[:1])
        py_rate = py.total_cycles / py.run_seconds
        acc = Accelerator(p)
        t0 = time.perf_counter()
        design = cxxrtl.compile_design(acc)
        compile_s = time.perf_counter() - t0 if design.compile_seconds else 0.0
        cx = cxxrtl.simulate(acc, x_ir, back_to_back=True)
        cx_rate = cx.total_cycles / cx.run_seconds
        exact = bool(np.array_equal(cx.logits, want) and np.array_equal(py.logits, want[:1]))
        rows.append(
            f"| {b.name} ({p.device.name}) | {p.multipliers} | {p.ii_cycles:,.0f} | "
            f"{py_rate:,.0f} | {cx_rate:,.0f} | {cx_rate / py_rate:,.0f}x | {len(x)} | "
            f"{'yes' if exact else 'NO'} | {f'{compile_s:,.0f}' if compile_s else 'cached'} |")
        print(rows[-1], flush=True)
    verilator = shutil.which("verilator")
    if verilator:
        version = subprocess.run([verilator, "--version"], capture_output=True, text=True)
        note = f"Verilator: {version.stdout.strip()} installed; no harness yet, not run"
    else:
        note = "Verilator: not installed (apt-get install verilator); not run"
    lines = ["# Simulation speed (default model)", "", *rows, "", note]
    if args.test_set:
        from accelgen.cli import main as cli_main  # the evaluate command, as a user runs it

        xs, ys = fashion_test_set()
        npz = Path("/tmp/fashion_test.npz")
        np.savez(npz, x=xs, y=ys)
        accel = Path("/tmp/bench_sim.accel")
        cli_main(["compress", "-o", str(accel)])
        t0 = time.perf_counter()
        rc = cli_main(["evaluate", str(accel), "--engine", "cxxrtl", "--board", args.boards[0],
                       "--data", str(npz)])
        wall = time.perf_counter() - t0
        lines += ["", (f"Full Fashion-MNIST test set ({len(xs):,} images) through the compiled "
                       f"RTL of the {args.boards[0]} plan: exit {rc}, {wall:,.0f} s wall (see "
                       f"the evaluate line above for accuracy and the golden comparison)")]
        print(lines[-1])
    if args.mlperf:
        lines += ["", ("MLPerf Tiny models (quantized by accelgen, random calibration and "
                       "inputs) through the compiled RTL, compared with golden:"), "",
                  ("| model | board (device) | inputs | bit-exact | cycles/image (plan) | "
                   "simulated interval | compiled cycles/s |"),
                  "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
        for row in mlperf_rows(args.boards, args.mlperf_inputs):
            lines.append(row)
            print(row, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
