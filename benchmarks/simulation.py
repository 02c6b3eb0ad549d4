"""Simulation speed: Amaranth's Python simulator and the two compiled RTL backends (CXXRTL,
Verilator) side by side on the whole default model, and the full Fashion-MNIST test set through
the compiled RTL.

    python benchmarks/simulation.py [--boards ice40 ecp5] [--images 20]
                                    [--engines pysim cxxrtl verilator]
                                    [--test-set [--test-set-engine verilator]
                                     [--test-set-board B]]
                                    [--mlperf [--mlperf-inputs 100]]
                                    [--out benchmarks/results/simulation.md]

For each board's plan: pysim runs one image (its cycles per second over that image's
simulation), each compiled backend `--images` images back to back (the C++ model's cycles per
second, the compile time reported apart, and its outputs compared with golden), then the same
images split into one stream per core run at once (their cycles over the wall time). With
`--test-set`, every Fashion-MNIST test image (Debian's dataset-fashion-mnist) goes through
`accelgen evaluate` on the compiled RTL of a board's plan and is compared with the golden
model image by image. With `--mlperf`, the MLPerf Tiny KWS DS-CNN and ResNet-8 (random
calibration and inputs: their data sets are not shipped) through the compiled RTL where a
board's plan fits them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.boards import board as find_board
from accelgen.cli import quantized_for, resolve_model
from accelgen.data import shipped
from accelgen.errors import AccelgenError
from accelgen.scheduler import plan
from accelgen.sim import cxxrtl, pysim, verilator

STREAMS = os.cpu_count() or 1
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


def mlperf_rows(boards: list[str], n: int, engine: str = "verilator") -> list[str]:
    """KWS and ResNet-8, quantized on random data, `n` random inputs through the compiled RTL
    (`engine`) of each board's plan (where it fits), compared with the golden model."""
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
            r = {"cxxrtl": cxxrtl, "verilator": verilator}[engine].simulate(
                acc, x_ir, back_to_back=True)
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
    ap.add_argument("--engines", nargs="+", default=["pysim", "cxxrtl", "verilator"],
                    choices=["pysim", "cxxrtl", "verilator"])
    ap.add_argument("--test-set", action="store_true")
    ap.add_argument("--test-set-engine", default="verilator", choices=["cxxrtl", "verilator"])
    ap.add_argument("--test-set-board", default=None,
                    help="the plan the test set runs on (default: the first of --boards)")
    ap.add_argument("--mlperf", action="store_true",
                    help="also the MLPerf Tiny KWS DS-CNN and ResNet-8 (../shared/models)")
    ap.add_argument("--mlperf-inputs", type=int, default=100)
    ap.add_argument("--mlperf-engine", default="verilator", choices=["cxxrtl", "verilator"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    qg = quantized_for(None, bits=8)
    data = shipped(resolve_model(None), "eval")
    compiled_engines = [e for e in ("cxxrtl", "verilator") if e in args.engines]
    head = ["board (device)", "multipliers", "cycles/image", "pysim cycles/s"]
    for e in compiled_engines:
        head += [f"{e} cycles/s", "ratio to pysim", "bit-exact", "compile s",
                 f"{e} cycles/s, {STREAMS} streams"]
    rows = ["| " + " | ".join(head) + " |",
            "| --- | ---: | ---: | ---: |"
            + " ---: | ---: | --- | ---: | ---: |" * len(compiled_engines)]
    for name in args.boards:
        b = find_board(name)
        p = plan(qg, b.device)
        x = data.x[: args.images]
        x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
        want = golden.logits(qg, x)
        cells = [f"{b.name} ({p.device.name})", f"{p.multipliers}", f"{p.ii_cycles:,.0f}"]
        if "pysim" in args.engines:
            py = pysim.simulate(Accelerator(p), x_ir[:1])
            py_rate = py.total_cycles / py.run_seconds
            py_exact = bool(np.array_equal(py.logits, want[:1]))
            cells.append(f"{py_rate:,.0f}" + ("" if py_exact else " (NOT bit-exact)"))
        else:
            py_rate = None
            cells.append("-")
        for engine in compiled_engines:
            module = {"cxxrtl": cxxrtl, "verilator": verilator}[engine]
            acc = Accelerator(p)
            try:
                design = module.compile_design(acc)
            except AccelgenError as e:
                cells += [f"not run: {e}", "", "", "", ""]
                continue
            r = module.simulate(acc, x_ir, back_to_back=True)
            rate = r.total_cycles / r.run_seconds
            exact = bool(np.array_equal(r.logits, want))
            # as `accelgen evaluate` runs a data set: one image stream per core, the model's C
            # code letting go of the GIL; cycles of every stream over the wall time of all
            parts = [c for c in np.array_split(x_ir, STREAMS) if len(c)]
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                t0 = time.perf_counter()
                results = list(pool.map(
                    lambda part, a=acc, mod=module: mod.simulate(a, part, back_to_back=True),
                    parts))
                wall = time.perf_counter() - t0
            together = sum(q.total_cycles for q in results) / wall
            exact &= bool(np.array_equal(np.concatenate([q.logits for q in results]), want))
            cells += [f"{rate:,.0f}", f"{rate / py_rate:,.0f}x" if py_rate else "-",
                      f"{'yes' if exact else 'NO'} ({len(x)} images)",
                      f"{design.compile_seconds:,.0f}" if design.compile_seconds else "cached",
                      f"{together:,.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    versions = []
    vl = shutil.which("verilator")
    if vl:
        versions.append(subprocess.run([vl, "--version"], capture_output=True,
                                       text=True).stdout.strip())
    lines = ["# Simulation speed (default model)", "",
             (f"pysim: one image; compiled backends: {args.images} images back to back, one "
              f"thread, cycles/s over the run alone; then the same images as {STREAMS} streams "
              f"at once, one per core (as `accelgen evaluate` runs), cycles of all streams over "
              f"their wall time. {'; '.join(versions)}"), "", *rows]
    if args.test_set:
        from accelgen.cli import main as cli_main  # the evaluate command, as a user runs it

        xs, ys = fashion_test_set()
        npz = Path("/tmp/fashion_test.npz")
        np.savez(npz, x=xs, y=ys)
        accel = Path("/tmp/bench_sim.accel")
        cli_main(["compress", "-o", str(accel)])
        t0 = time.perf_counter()
        board = args.test_set_board or args.boards[0]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = cli_main(["evaluate", str(accel), "--engine", args.test_set_engine, "--board",
                           board, "--data", str(npz), "--json"])
        wall = time.perf_counter() - t0
        doc = json.loads(out.getvalue())
        c = doc["cycles_per_image"]
        lines += ["", (f"Full Fashion-MNIST test set: {doc['images']:,} images through the "
                       f"{args.test_set_engine} model of the {board} plan ({doc['device']}), "
                       f"`accelgen evaluate --engine {args.test_set_engine}` (compile included, "
                       f"{os.cpu_count()} image streams): exit {rc}, {wall:,.0f} s wall; "
                       f"hardware accuracy {100 * doc['accuracy']:.2f} % "
                       f"({doc['correct']:,}/{doc['images']:,}); images differing from golden: "
                       f"{doc['golden_mismatches']}; cycles per image min {c['min']:,} / median "
                       f"{c['median']:,.0f} / max {c['max']:,}")]
        print(lines[-1])
    if args.mlperf:
        lines += ["", ("MLPerf Tiny models (quantized by accelgen, random calibration and "
                       f"inputs) through the compiled RTL ({args.mlperf_engine}), compared with "
                       "golden:"), "",
                  ("| model | board (device) | inputs | bit-exact | cycles/image (plan) | "
                   "simulated interval | compiled cycles/s |"),
                  "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
        for row in mlperf_rows(args.boards, args.mlperf_inputs, args.mlperf_engine):
            lines.append(row)
            print(row, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
