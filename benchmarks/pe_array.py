"""The PE array (seed 001) on one model at 16, 8 and 4 bits and mixed widths, from its counters.

    python benchmarks/pe_array.py [--inputs 10] [--model PATH] [--out FILE.md]

The model (MLPerf Tiny ResNet-8 by default, quantized by accelgen with random calibration, its
data set not being shipped; weights rounded as accelgen does by default, adaptively at 6 bits or
fewer, to nearest above) is compiled for two arrays and run through the compiled
(Verilator) model of `ArrayCore`; every output is compared with golden, and the figures come
from the hardware's own counters (cycles, memory reads and writes, per layer):

* the seed-001 table: cycles per image and the speedup against 16 bits, the execution-time
  reduction, memory accesses and their reduction, the relative error of the logits against the
  float model's with the weights rounded to nearest and adaptively (||q - f|| / ||f||, mean
  over the inputs, from golden's outputs: the hardware equals golden, so this is the
  post-training quantization's error, on random inputs and calibration) and how often the top
  class agrees, the weight memory in bytes (weights and parameters);
* MAC utilisation per layer and overall: useful MACs / (PEs x lanes x cycles), lanes being
  the products a PE makes per cycle at that width (on iCE40 a 16-bit product, and a word of
  four 4-bit lanes, take two cycles);
* cycles per image and the frames per second at the clock each array is planned for (not yet
  an Fmax: the array has not been through place and route).

Arrays (`accelgen.array.targets`, as `accelgen estimate --arch array` plans them): iCEBreaker
(UP5K): 8 PEs on the 8 SB_MAC16 blocks, 65,536 words of memory (the 128 KB of SPRAM), 512-word
weight buffers; ULX3S-85F: 16 PEs (two MULT18X18D each) of up to two output channels per pass
(`ArrayConfig.folds`), 188,416 words of block RAM, 1,024-word weight buffers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from accelgen import golden, reference
from accelgen.array.compiler import (
    GENERAL_CORE,
    DoesNotFitArray,
    NotOnArray,
    compile_graph,
)
from accelgen.array.isa import Mode
from accelgen.array.targets import array_target
from accelgen.boards import board
from accelgen.compress import QuantConfig, quantize
from accelgen.compress.quantize import default_rounding
from accelgen.frontend import load_model
from accelgen.sim.array import simulate_array

GENERAL = GENERAL_CORE
MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
ARRAYS = {"iCEBreaker (UP5K)": "ice40", "ULX3S-85F": "ecp5"}  # board -> its array_target


def _logits_real(qg, codes: np.ndarray) -> np.ndarray:
    """Hardware output codes (N, OH, OW, OC) -> real logits (N, K), before any softmax."""
    n = codes.shape[0]
    return qg.tensors[qg.outputs[0].tensor].dequantize(codes.reshape(n, -1))


def _widths(graph) -> dict[str, QuantConfig]:
    names = [la.name for la in graph.layers]
    convs = [la.name for la in graph.layers if type(la).__name__ in ("Conv2d", "Dense")]
    mixed = dict.fromkeys(names, 4)
    mixed.update({convs[0]: 8, convs[-1]: 8})  # first and last layers at 8 bits
    return {"16": QuantConfig(weight_bits=16, act_bits=16),
            "8": QuantConfig(weight_bits=8, act_bits=8),
            "4": QuantConfig(weight_bits=4, act_bits=4),
            "mixed (8 first/last, 4 between)": QuantConfig(layer_bits=mixed)}


def _rel_error(qg, x: np.ndarray, float_all: dict) -> tuple[float, float]:
    """(mean ||q - f|| / ||f|| of the logits, top-1 agreement) of `qg`'s golden outputs
    against the float model's tensor the quantized model outputs (`float_all`: every tensor
    of the float model; a softmax, if any, runs on the host)."""
    float_out = float_all[qg.outputs[0].tensor].reshape(len(x), -1)
    codes = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    real = _logits_real(qg, golden.run_ir(qg, {qg.inputs[0].tensor: codes})[qg.outputs[0].tensor])
    rel = np.linalg.norm(real - float_out, axis=1) / np.linalg.norm(float_out, axis=1)
    return float(rel.mean()), float(np.mean(real.argmax(1) == float_out.argmax(1)))


def _err(e: tuple[float, float]) -> str:
    return f"{100 * e[0]:.2f} % ({100 * e[1]:.0f} %)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=10)
    ap.add_argument("--model", type=Path, default=MLPERF / "pretrainedResnet.onnx")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    graph = load_model(args.model)
    gi = graph.inputs[0]
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (64, *gi.onnx_shape)).astype(np.float32)
    x = rng.uniform(-1, 1, (args.inputs, *gi.onnx_shape)).astype(np.float32)
    # the float model's logits: the tensor the quantized model outputs (its softmax, if any,
    # runs on the host)
    float_all = reference.run_ir(graph, {gi.tensor: reference.prepare_input(gi, x)},
                                 fake_quant=False, keep="all")
    lines = [f"# PE array: {args.model.stem}, {args.inputs} random inputs per width", ""]
    for array_name, board_name in ARRAYS.items():
        target = array_target(board(board_name).device)
        cfg, family, clock = target.config, target.family, target.clock_mhz
        lines += [(f"## {array_name}: {cfg.pes} PEs (up to {cfg.folds} output channel"
                   f"{'s' if cfg.folds > 1 else ''} each per pass), {cfg.mem_words:,} memory "
                   f"words, planned clock {clock:g} MHz"), "",
                  ("| width | cycles/image | speedup vs 16-bit | execution time reduction | "
                  "memory accesses/image | access reduction | weight memory (bytes) | "
                  "relative error vs float, rounded to nearest / adaptively (top-1 agreement) | "
                  "MAC utilisation | "
                  "FPS at the planned clock | bit-exact | sim cycles/s |"),
                  ("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | "
                  "---: |")]
        base = None
        layer_rows: list[str] = []
        for width, qcfg in _widths(graph).items():
            # both roundings' errors; the hardware runs the one accelgen picks by default
            # (`default_rounding`)
            qgs = {r: quantize(graph, calib, replace(qcfg, rounding=r))[0]
                   for r in ("nearest", "adaptive")}
            errors = {r: _rel_error(q, x, float_all) for r, q in qgs.items()}
            qg = qgs[default_rounding(qcfg, calibrated=True)]
            try:
                program = compile_graph(qg, cfg)
            except (DoesNotFitArray, NotOnArray) as e:
                lines.append(f"| {width} | does not fit: {e} | | | | | | | | | | |")
                print(lines[-1], flush=True)
                continue
            codes = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
            t0 = time.perf_counter()
            # (one general core per array: a program's counters do not depend on how its
            # core is specialised, and the widths share one compiled model)
            r = simulate_array(program, codes, family=family, build=GENERAL)
            want = golden.run_ir(qg, {qg.inputs[0].tensor: codes})[qg.outputs[0].tensor]
            exact = bool(np.array_equal(r.outputs, want))
            cycles = int(np.median(r.counters[:, 0]))
            accesses = int(np.median(r.counters[:, 1] + r.counters[:, 2]))
            weights = 2 * program.regions["weights and parameters"]
            macs = qg.macs
            # capacity: products per cycle at each layer's width, summed over its cycles
            per_layer = r.layer_counters[0]
            capacity = 0
            rows = []
            for lc, (cyc, _rd, _wr) in zip(program.code, per_layer, strict=False):
                lanes = Mode(lc.instr.mode).lanes
                slots = cfg.pes * lanes / (cfg.word16_cycles if lanes != 2 else 1)
                capacity += cyc * slots
                if lc.macs:
                    rows.append(f"| {width} | {lc.layer} | {cyc:,} | "
                                f"{100 * lc.macs / (cyc * slots):.0f} % |")
            util = macs / capacity
            if width == "16":
                base = (cycles, accesses)
            speed = f"{base[0] / cycles:.2f}" if base else "-"
            red_t = f"{100 * (1 - cycles / base[0]):.1f} %" if base else "-"
            red_m = f"{100 * (1 - accesses / base[1]):.1f} %" if base else "-"
            lines.append(
                f"| {width} | {cycles:,} | {speed} | {red_t} | {accesses:,} | {red_m} | "
                f"{weights:,} | {_err(errors['nearest'])} / {_err(errors['adaptive'])} | "
                f"{100 * util:.0f} % | "
                f"{clock * 1e6 / cycles:,.1f} | {'yes' if exact else 'NO'} | "
                f"{r.cycles_per_second:,.0f} |")
            print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if width == "8":
                layer_rows = rows
        lines += ["", (f"MAC utilisation per layer at 8 bits ({array_name}), from the per-layer "
                  "counters:"), "", "| width | layer | cycles | MAC utilisation |",
                  "| --- | --- | ---: | ---: |", *layer_rows, ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
