"""Streaming-pipeline plans measured in simulation: MAC utilisation, cycles per image, FPS.

    python benchmarks/pipeline.py [--images 4] [--engine verilator|cxxrtl|pysim]
                                  [--out benchmarks/results/pipeline.md]

For the default model (dscnn_fmnist, 8-bit) and the MLPerf Tiny KWS DS-CNN (quantized by
accelgen; random calibration, its data set is not public), on iCEBreaker (UP5K) and ULX3S-85F:
the slowest stage's cycles per image, the plan's (the coupled pipeline's,
`accelgen.scheduler.flow`), and the *simulated* steady-state interval between images (the last
two of `--images` sent back to back through the compiled RTL or Amaranth's simulator, which
give the same cycles, bit-exact against golden),
the plan's error against it, the MAC utilisation measured from it (useful MACs per image /
(multipliers x simulated cycles per image)) and the FPS at the plan's clock. Plans that do not
fit are reported as such.

Also the seed-002 point of reference: a DS-CNN of about 16 M operations (random weights and
inputs) planned for the ECP5-85F and simulated like the others (with the compiled engines; with
pysim only planned).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from accelgen.zoo import MODELS

from accelgen import golden
from accelgen.accelerator import Accelerator
from accelgen.compress import QuantConfig, quantize
from accelgen.data import load_npz
from accelgen.devices import device
from accelgen.frontend import load_model
from accelgen.ir import Conv2d, Dense, GlobalAvgPool, Graph, GraphInput, GraphOutput, Relu, Tensor
from accelgen.scheduler import DoesNotFit, plan
from accelgen.sim import simulate

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"


def _models() -> dict:
    entry = MODELS["dscnn_fmnist"]
    calib = load_npz(entry.path("calib_data"))
    evaluation = load_npz(entry.path("eval_data"))
    default = load_model(entry.path())
    models = {"dscnn_fmnist": (default, calib.x, evaluation.x)}
    if MLPERF.is_dir():
        kws = load_model(MLPERF / "kws_ref_model_float32_tf2onnx.onnx")
        rng = np.random.default_rng(0)
        models["KWS DS-CNN"] = (kws, (rng.uniform(-1, 1, (64, 49, 10, 1)) * 30).astype(
            np.float32), (rng.uniform(-1, 1, (8, 49, 10, 1)) * 30).astype(np.float32))
    return models


def seed002_sized_dscnn() -> Graph:
    """A MobileNet-style DS-CNN of about 8.3 M MACs and 79 k parameters, random weights."""
    rng = np.random.default_rng(2)
    layers, tensors = [], {}
    h = w = 64
    c = 3
    cur = "x"
    tensors[cur] = Tensor(cur, (h, w, c))

    def add(layer, shape) -> str:
        tensors[layer.output] = Tensor(layer.output, shape)
        layers.append(layer)
        return layer.output

    def conv(name: str, cout: int, k: int, stride: int, groups: int) -> None:
        nonlocal cur, h, w, c
        oh, ow = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
        wt = rng.standard_normal((cout, k, k, c // groups)).astype(np.float32)
        wt *= np.sqrt(2.0 / (k * k * c / groups))
        out = add(Conv2d(name=name, inputs=(cur,), output=name, in_shapes=((h, w, c),),
                         out_shape=(oh, ow, cout), weight=wt,
                         bias=(rng.standard_normal(cout) * 0.1).astype(np.float32),
                         stride=(stride, stride), padding=(k // 2,) * 4, groups=groups),
                  (oh, ow, cout))
        cur = add(Relu(name=name + "_relu", inputs=(out,), output=name + "_relu",
                       in_shapes=((oh, ow, cout),), out_shape=(oh, ow, cout)), (oh, ow, cout))
        h, w, c = oh, ow, cout

    conv("stem", 24, 3, 2, 1)
    for i, (cout, stride) in enumerate([(40, 1), (64, 2), (80, 1), (112, 2), (128, 1),
                                        (160, 1), (176, 2)]):
        conv(f"dw{i}", c, 3, stride, c)
        conv(f"pw{i}", cout, 1, 1, 1)
    gap = add(GlobalAvgPool(name="gap", inputs=(cur,), output="gap", in_shapes=((h, w, c),),
                            out_shape=(1, 1, c)), (1, 1, c))
    fc = add(Dense(name="fc", inputs=(gap,), output="fc", in_shapes=((1, 1, c),),
                   out_shape=(1, 1, 10), weight=rng.standard_normal((10, c)).astype(np.float32),
                   bias=np.zeros(10, np.float32)), (1, 1, 10))
    layout = np.arange(64 * 64 * 3).reshape(3, 64, 64).transpose(1, 2, 0)
    return Graph("seed002_sized_dscnn", (GraphInput("x", "x", (3, 64, 64), layout),),
                 (GraphOutput(fc, "y", (10,), np.arange(10)),), tensors, tuple(layers))


def measure(name: str, graph: Graph, calib: np.ndarray, x: np.ndarray, board: str,
            images: int, simulate_it: bool = True, engine: str = "verilator") -> str:
    qg, _ = quantize(graph, calib, QuantConfig())
    dev = device(board)
    try:
        p = plan(qg, dev)
    except DoesNotFit as err:
        return f"| {name} | {dev.name} | does not fit: {str(err)[:90]}… | | | | | | | |"
    head = (f"| {name} | {dev.name} | {p.multipliers} | {p.stage_interval:,.0f} | "
            f"{p.ii_cycles:,.0f} |")
    if not simulate_it:
        return (f"{head} (not simulated) | | {100 * p.mac_utilization:.0f} % (plan) | "
                f"{p.fps:,.0f} (plan) | {p.clock_mhz:g} |")
    acc = Accelerator(p)
    x_ir = golden.quantize_inputs(qg, x[:images])[qg.inputs[0].tensor]
    t0 = time.perf_counter()
    result = simulate(acc, x_ir, back_to_back=True, backend=engine)
    wall = time.perf_counter() - t0
    exact = bool(np.array_equal(result.logits, golden.logits(qg, x[:images])))
    # the interval between the last two images (the first ones fill the pipeline)
    interval = float(result.cycles[-1]) if images > 1 else float(result.cycles[0])
    util = p.macs / (p.multipliers * interval)
    fps = p.clock_mhz * 1e6 / interval
    check = "bit-exact" if exact else "MISMATCH"
    return (f"{head} {interval:,.0f} ({check}, {engine} {wall:.0f} s) "
            f"| {100 * (p.ii_cycles / interval - 1):+.1f} % | {100 * util:.0f} % | {fps:,.0f} | "
            f"{p.clock_mhz:g} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--engine", choices=("verilator", "cxxrtl", "pysim"), default="verilator",
                    help="the simulator (all give the same cycles; the compiled ones compile "
                    "first)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    header = ("| model | device | multipliers | slowest stage cycles | plan cycles/image "
              "(coupled) | simulated cycles/image | plan vs simulated | MAC utilisation "
              "(simulated) | FPS (simulated) | clock MHz |")
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print("\n".join(lines), flush=True)
    for name, (graph, calib, x) in _models().items():
        for board in ("ice40", "ecp5"):
            lines.append(measure(name, graph, calib, x, board, args.images,
                                 engine=args.engine))
            print(lines[-1], flush=True)
    seed = seed002_sized_dscnn()
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, (32, 3, 64, 64)).astype(np.float32)
    intro = (f"Seed 002 reference (16.64 M ops at 366 FPS): a DS-CNN of "
             f"{2 * seed.macs / 1e6:.2f} M ops ({seed.macs / 1e6:.2f} M MACs, {seed.params:,} "
             f"parameters) on ECP5-85F:")
    lines += ["", intro, "", lines[0], lines[1]]
    lines.append(measure("seed-002-sized DS-CNN", seed, calib, calib[:4], "ecp5", args.images,
                         simulate_it=args.engine != "pysim", engine=args.engine))
    print("\n".join(lines[-5:]), flush=True)
    text = "\n".join(lines)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
