"""The `accelgen` command line.

Every user error ends as one line on stderr (``accelgen: error: ...``) and exit code 2; an
unfinished pipeline stage ends with exit code 3. Output files are written atomically: a file that
exists is complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import numpy as np

from accelgen import __version__
from accelgen.errors import AccelgenError, NotBuiltYet, UsageError

log = logging.getLogger("accelgen")

ENGINES = ("reference", "golden", "pysim", "cxxrtl", "verilator")
HARDWARE_ENGINES = ("pysim", "cxxrtl", "verilator")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def resolve_model(arg: str | None) -> Path:
    """A model argument: a path to an .onnx file, or the name of a shipped example model."""
    from accelgen import zoo

    if arg is None:
        arg = zoo.DEFAULT_MODEL
    path = Path(arg)
    if path.exists():
        return path
    if arg in zoo.MODELS:
        entry = zoo.MODELS[arg]
        if not entry.available:
            raise NotBuiltYet(
                f"the example model {arg!r} is not trained and shipped yet "
                f"(models/train_{arg}.py makes it)"
            )
        return entry.path()
    raise UsageError(
        f"model {arg!r} is neither a file nor a shipped model ({', '.join(sorted(zoo.MODELS))})"
    )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename into place."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder {str(parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_inputs(path: str, graph) -> dict[str, np.ndarray]:
    """Inputs from .npy (a single-input model) or .npz (keys = input names)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"input file {path!r} does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"input file {path!r} is not a readable .npy/.npz file ({err})") from None
    if isinstance(data, np.ndarray):
        if len(graph.inputs) != 1:
            raise UsageError(
                f"the model has {len(graph.inputs)} inputs; pass an .npz keyed by "
                f"{[gi.onnx_name for gi in graph.inputs]}"
            )
        return {graph.inputs[0].onnx_name: data}
    with data:
        arrays = {k: data[k] for k in data.files}
    if len(graph.inputs) == 1 and len(arrays) == 1:
        return {graph.inputs[0].onnx_name: next(iter(arrays.values()))}
    return arrays


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _shape(s: Sequence[int]) -> str:
    return "x".join(str(d) for d in s)


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------


def layer_rows(graph) -> list[dict]:
    rows = []
    for i, layer in enumerate(graph.layers):
        notes = []
        q = graph.tensors[layer.output].quant
        if q is not None:
            notes.append(f"out {q.describe()}")
        wq = getattr(layer, "weight_quant", None)
        if wq is not None:
            notes.append(f"w {wq.describe()}")
        rows.append(
            {
                "index": i,
                "name": layer.name,
                "op": layer.op,
                "attrs": layer.describe(),
                "inputs": list(layer.inputs),
                "output": layer.output,
                "in_shapes": [list(s) for s in layer.in_shapes],
                "out_shape": list(layer.out_shape),
                "params": layer.params,
                "macs": layer.macs,
                "host_side": layer.host_side,
                "annotations": notes,
            }
        )
    return rows


def cmd_inspect(args: argparse.Namespace) -> int:
    from accelgen.frontend import load_model

    path = resolve_model(args.model)
    graph = load_model(path)
    rows = layer_rows(graph)
    summary = {
        "model": str(path),
        "name": graph.name,
        "inputs": [
            {"name": gi.onnx_name, "shape": list(gi.onnx_shape), "ir_shape": list(gi.layout.shape),
             "dtype": gi.dtype, "quant": gi.quant.describe() if gi.quant else None}
            for gi in graph.inputs
        ],
        "outputs": [
            {"name": go.onnx_name, "shape": list(go.onnx_shape), "dtype": go.dtype,
             "quant": go.quant.describe() if go.quant else None}
            for go in graph.outputs
        ],
        "layers": rows,
        "counts": {op: sum(r["op"] == op for r in rows) for op in sorted({r["op"] for r in rows})},
        "total_layers": len(rows),
        "total_params": graph.params,
        "total_macs": graph.macs,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{graph.name}: {len(rows)} layers, {graph.params:,} parameters, {graph.macs:,} MACs")
    for gi in summary["inputs"]:
        q = f", {gi['quant']}" if gi["quant"] else ""
        print(f"  input  {gi['name']!r}: {_shape(gi['shape'])} {gi['dtype']}{q} "
              f"-> IR (H,W,C) {_shape(gi['ir_shape'])}")
    for go in summary["outputs"]:
        q = f", {go['quant']}" if go["quant"] else ""
        print(f"  output {go['name']!r}: {_shape(go['shape'])} {go['dtype']}{q}")
    header = (
        f"{'#':>3} {'layer':<28} {'op':<13} {'attributes':<24} {'in (HxWxC)':<12} "
        f"{'out':<10} {'params':>8} {'MACs':>11}  annotations"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ins = ",".join(_shape(s) for s in r["in_shapes"])
        host = " [host]" if r["host_side"] else ""
        print(
            f"{r['index']:>3} {_short(r['name'], 28):<28} {r['op']:<13} "
            f"{_short(r['attrs'], 24):<24} {_short(ins, 12):<12} {_shape(r['out_shape']):<10} "
            f"{r['params']:>8,} {r['macs']:>11,}  {'; '.join(r['annotations'])}{host}"
        )
    print("-" * len(header))
    counts = ", ".join(f"{n} {op}" for op, n in summary["counts"].items())
    print(f"total: {len(rows)} layers ({counts}); {graph.params:,} params; {graph.macs:,} MACs")
    return 0


# --------------------------------------------------------------------------------------------
# models and shape descriptions
# --------------------------------------------------------------------------------------------


def is_accel(path: Path) -> bool:
    return path.is_dir() and (path / "graph.json").exists()


def load_accel(arg: str):
    from accelgen.quantized import load

    path = Path(arg)
    if not path.exists():
        raise UsageError(f"shape description {arg!r} does not exist (make one with "
                         f"`accelgen compress`)")
    return load(path)


def zoo_entry_for(path: Path):
    from accelgen import zoo

    for entry in zoo.MODELS.values():
        if entry.available and entry.path().resolve() == path.resolve():
            return entry
    return None


def default_data(model_path: Path | None, which: str, qg=None):
    """The shipped subset for an example model (by path, or by the .accel's recorded source)."""
    from accelgen import zoo
    from accelgen.data import load_npz

    entry = zoo_entry_for(model_path) if model_path is not None else None
    if entry is None and qg is not None:
        name = qg.meta.get("zoo_model")
        entry = zoo.MODELS.get(name) if name else None
    if entry is None or not entry.available:
        return None
    path = entry.path("eval_data" if which == "eval" else "calib_data")
    return load_npz(path) if path.is_file() else None


def parse_layer_bits(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, bits = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"--layer-bits item {item!r} is not NAME=BITS")
        try:
            out[name] = int(bits)
        except ValueError:
            raise UsageError(f"--layer-bits item {item!r}: {bits!r} is not an integer") from None
    return out


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def _write_outputs(outputs: dict[str, np.ndarray], target: str) -> Path:
    out = Path(target)
    if len(outputs) == 1:
        (value,) = outputs.values()
        if out.suffix != ".npy":
            raise UsageError(f"output {target!r} must end in .npy (one model output)")
        atomic_write(out, lambda p: np.save(p, value))
    else:
        if out.suffix != ".npz":
            raise UsageError(f"output {target!r} must end in .npz (several model outputs)")
        atomic_write(out, lambda p: np.savez(p, **outputs))
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from accelgen import golden, reference
    from accelgen.frontend import load_model

    if args.engine in HARDWARE_ENGINES:
        return _run_hardware(args)
    if args.engine == "golden":
        if not is_accel(Path(args.model)):
            raise UsageError(
                f"--engine golden runs a shape description (NAME.accel/); {args.model!r} is not "
                f"one: run `accelgen compress {args.model}` first"
            )
        qg = load_accel(args.model)
        feeds = load_inputs(args.inputs, qg)
        outputs = golden.run(qg, feeds)
    else:
        if is_accel(Path(args.model)):
            raise UsageError(f"{args.model!r} is a shape description; run it with --engine golden")
        graph = load_model(resolve_model(args.model))
        feeds = load_inputs(args.inputs, graph)
        outputs = reference.run(graph, feeds)
    out = _write_outputs(outputs, args.output)
    for name, value in outputs.items():
        print(f"{name}: {value.shape} {value.dtype} -> {out}")
    return 0


def _run_array(args: argparse.Namespace, qg) -> int:
    """`run --arch array`: the inputs through the PE array's RTL, cycles from its counters."""
    from accelgen import golden
    from accelgen.array.compiler import compile_graph
    from accelgen.array.targets import DoesNotFitArray, NotOnArray, array_target
    from accelgen.devices import device
    from accelgen.sim.array import simulate_array, simulate_array_pysim

    dev = device(args.board)
    try:
        target = array_target(dev)
        program = compile_graph(qg, target.config)
    except (NotOnArray, DoesNotFitArray) as err:
        raise UsageError(f"the PE array cannot run this model: {err}") from None
    if args.engine == "cxxrtl":
        raise UsageError("the PE array runs on --engine verilator (whole models) or pysim")
    feeds = load_inputs(args.inputs, qg)
    x_ir = golden.quantize_inputs(qg, feeds)[qg.inputs[0].tensor]
    run = simulate_array if args.engine == "verilator" else simulate_array_pysim
    result = run(program, x_ir, family=target.family)
    qo = qg.outputs[0]
    codes = result.logits(qo)
    real = golden.real_output(qg, qo, codes)
    out = _write_outputs({qo.onnx_name: real}, args.output)
    print(f"{qo.onnx_name}: {real.shape} -> {out}; classes {codes.argmax(axis=1).tolist()}")
    cyc = result.counters[:, 0]
    print(f"cycles per image (the array's counters): {', '.join(f'{int(c):,}' for c in cyc)} "
          f"on the {target.config.pes}-PE array for {dev.name}; memory accesses "
          f"{int(result.counters[0, 1] + result.counters[0, 2]):,} per image")
    return 0


def _run_hardware(args: argparse.Namespace) -> int:
    from accelgen import golden
    from accelgen.accelerator import Accelerator
    from accelgen.devices import device
    from accelgen.scheduler import plan
    from accelgen.sim import simulate

    if not is_accel(Path(args.model)):
        raise UsageError(f"--engine {args.engine} runs a shape description (NAME.accel/); "
                         f"{args.model!r} is not one: run `accelgen compress {args.model}` first")
    qg = load_accel(args.model)
    if args.arch == "array":
        return _run_array(args, qg)
    p = plan(qg, device(args.board))
    feeds = load_inputs(args.inputs, qg)
    x_ir = golden.quantize_inputs(qg, feeds)[qg.inputs[0].tensor]
    options = {}
    if args.vcd:
        if args.engine != "cxxrtl":
            raise UsageError(f"--vcd: the {args.engine} engine writes no waveforms; use "
                             "--engine cxxrtl")
        if not 0 <= args.vcd_image < x_ir.shape[0]:
            raise UsageError(f"--vcd-image {args.vcd_image}: the inputs hold images "
                             f"0..{x_ir.shape[0] - 1}")
        vcd = Path(args.vcd)
        partial = vcd.with_name(f".{vcd.name}.partial")
        options = {"vcd": str(partial), "vcd_image": args.vcd_image}
    try:
        result = simulate(Accelerator(p), x_ir, backend=args.engine, **options)
    except BaseException:
        if args.vcd:  # (a waveform cut short is not left looking complete)
            partial.unlink(missing_ok=True)
        raise
    if args.vcd:
        partial.replace(vcd)
        print(f"waveform of image {args.vcd_image} -> {vcd} (GTKWave or Surfer)")
    qo = qg.outputs[0]
    real = golden.real_output(qg, qo, result.logits)
    out = _write_outputs({qo.onnx_name: real}, args.output)
    print(f"{qo.onnx_name}: {real.shape} -> {out}; classes {result.classes.tolist()}")
    cycles = result.cycles
    print(f"cycles per image: {', '.join(str(int(c)) for c in cycles)} (latency, one image at a "
          f"time; plan interval {p.ii_cycles:,.0f}) on {p.device.name} at {p.clock_mhz:g} MHz")
    return 0


# --------------------------------------------------------------------------------------------
# compress
# --------------------------------------------------------------------------------------------


def _calibration(args: argparse.Namespace, model_path: Path, graph):
    from accelgen.data import load_npz, random_inputs

    gi = graph.inputs[0]
    if args.calib_data == "random":
        print("accelgen: warning: calibrating on random inputs; accuracy figures are "
              "meaningless (use this for fit and speed studies only)", file=sys.stderr)
        return random_inputs(gi.onnx_shape, gi.dtype, 256, seed=args.seed)
    if args.calib_data:
        return load_npz(args.calib_data, gi.onnx_shape)
    return default_data(model_path, "calib")  # None: the quantizer says what it needs


def cmd_compress(args: argparse.Namespace) -> int:
    from accelgen.compress.pipeline import compress, summary_lines, write
    from accelgen.compress.quantize import QuantConfig, default_rounding
    from accelgen.data import load_npz
    from accelgen.frontend import load_model

    model_path = resolve_model(args.model)
    config = QuantConfig(
        weight_bits=args.weight_bits if args.weight_bits is not None else args.bits,
        act_bits=args.act_bits if args.act_bits is not None else args.bits,
        layer_bits=parse_layer_bits(args.layer_bits),
        calibration=args.calibration,
        rounding=args.rounding or "nearest",
        seed=args.seed,
    )
    graph = load_model(model_path)
    calib = _calibration(args, model_path, graph)
    if args.rounding is None:
        config = replace(config, rounding=default_rounding(config, calib is not None))
    if args.eval_data:
        evaluation = load_npz(args.eval_data, graph.inputs[0].onnx_shape)
    else:
        evaluation = default_data(model_path, "eval")
    result = compress(graph, config, calib, evaluation)
    entry = zoo_entry_for(model_path)
    result.qgraph.meta["zoo_model"] = entry.name if entry else None
    result.qgraph.meta["source_path"] = str(model_path)
    out = Path(args.output) if args.output else Path(f"{graph.name}.accel")
    write(result, out)
    for line in summary_lines(result.report):
        print(line)
    print(f"wrote {out}/ (graph.json, weights.npz, report.json)")
    return 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from accelgen import evaluate
    from accelgen.frontend import load_model

    target = Path(args.model) if args.model else None
    accel = target is not None and is_accel(target)
    engine = args.engine or ("golden" if accel else "reference")
    if accel and engine in HARDWARE_ENGINES:
        return _evaluate_hardware(args, engine)
    if accel:
        qg = load_accel(args.model)
        if engine != "golden":
            raise UsageError(f"a shape description runs on --engine golden, pysim, cxxrtl or "
                             f"verilator, not {engine!r}")
        data = _evaluation_data(args, qg.inputs[0].onnx_shape, None, qg)
        scores = lambda x: evaluate.golden_scores(qg, x)  # noqa: E731
    else:
        model_path = resolve_model(args.model)
        if engine != "reference":
            raise UsageError(
                f"--engine {engine} needs a shape description: run `accelgen compress` first"
            )
        graph = load_model(model_path)
        data = _evaluation_data(args, graph.inputs[0].onnx_shape, model_path)
        scores = lambda x: evaluate.float_scores(graph, x)  # noqa: E731
    result = evaluate.accuracy(scores, data, engine)
    doc = {**result.as_dict(), "data": data.source}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{engine}: {result.correct:,}/{result.images:,} correct = "
              f"{100 * result.accuracy:.2f} % on {data.source}")
    return 0


def _evaluation_data(args: argparse.Namespace, shape, model_path: Path | None, qg=None):
    """``--data`` or the model's shipped evaluation subset, with labels, ``--limit``-ed."""
    from accelgen.data import load_npz

    data = load_npz(args.data, shape, need_labels=True) if args.data else default_data(
        model_path, "eval", qg)
    if data is None:
        raise UsageError("this model has no shipped evaluation data: pass --data FILE.npz")
    if data.y is None:
        raise UsageError(f"{data.source!r} has no labels 'y'; accuracy needs them")
    return data.limit(args.limit)


def _evaluate_hardware(args: argparse.Namespace, engine: str) -> int:
    """The generated design's accuracy over the evaluation data, simulated image by image and
    compared with the golden model's (they must be equal), and its cycles per image."""
    from accelgen import golden
    from accelgen.accelerator import Accelerator
    from accelgen.devices import device
    from accelgen.scheduler import plan
    from accelgen.sim import SimulationError, simulate

    qg = load_accel(args.model)
    data = _evaluation_data(args, qg.inputs[0].onnx_shape, None, qg)
    p = plan(qg, device(args.board))
    acc = Accelerator(p)
    # the compiled model runs one image stream per core (ctypes lets go of the GIL), pysim one
    workers = (os.cpu_count() or 1) if engine != "pysim" else 1
    batch = 50 if engine == "pysim" else 500 * workers
    classes, cycles, mismatched = [], [], []
    progress = _progress(len(data), f"{engine} on {p.device.name}", quiet=args.json)

    def run(x_ir: np.ndarray):
        return simulate(acc, x_ir, backend=engine, back_to_back=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(data), batch):
            x = data.x[start:start + batch]
            want = golden.logits(qg, x)
            x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
            parts = [c for c in np.array_split(x_ir, workers) if len(c)]
            results = list(pool.map(run, parts))
            got_logits = np.concatenate([r.logits for r in results])
            got_classes = np.concatenate([r.classes for r in results])
            same = np.all(got_logits == want, axis=1) & (got_classes == want.argmax(1))
            mismatched += [start + int(k) for k in np.flatnonzero(~same)]
            classes.append(got_classes)
            # each stream's first figure is a latency; the rest are intervals between images
            cycles += [r.cycles[1:] for r in results]
            progress(len(x))
    progress(0, done=True)
    hw = np.concatenate(classes)
    correct = int(np.sum(hw == data.y))
    per_image = np.concatenate(cycles) if sum(len(c) for c in cycles) else np.array([0])
    median = float(np.median(per_image))
    doc = {
        "engine": engine, "board": args.board, "device": p.device.name, "images": len(data),
        "correct": correct, "accuracy": correct / len(data), "data": data.source,
        "golden_mismatches": len(mismatched), "mismatched_images": mismatched[:20],
        "cycles_per_image": {"min": int(per_image.min()), "median": median,
                             "max": int(per_image.max())},
        "clock_mhz": p.clock_mhz, "fps": p.clock_mhz * 1e6 / median if median else 0.0,
        "plan_cycles_per_image": p.ii_cycles,
    }
    if args.json:
        print(json.dumps(doc))
    else:
        c = doc["cycles_per_image"]
        agree = ("equal to golden on every image" if not mismatched else
                 f"{len(mismatched)} images DIFFER from golden (first: {mismatched[:5]})")
        print(f"{engine}: {correct:,}/{len(data):,} correct = {100 * doc['accuracy']:.2f} % on "
              f"{data.source}; {agree}")
        print(f"cycles per image (steady state): min {c['min']:,}, median {c['median']:,.0f}, "
              f"max {c['max']:,} (plan {p.ii_cycles:,.0f}); {doc['fps']:,.0f} FPS at "
              f"{p.clock_mhz:g} MHz on {p.device.name}")
    if mismatched:
        raise SimulationError(
            f"the simulated hardware differs from the golden model on {len(mismatched)} of "
            f"{len(data)} images (first: {mismatched[:5]}): a bug in accelgen, please report it")
    return 0


def _progress(total: int, label: str, quiet: bool = False):
    """A progress line on stderr when it is a terminal; call with the images just done."""
    if quiet or total < 2 or not sys.stderr.isatty():
        return lambda n, done=False: None
    seen = [0]

    def update(n: int, done: bool = False) -> None:
        seen[0] += n
        end = "\n" if done else ""
        print(f"\r{label}: {seen[0]:,}/{total:,} images", end=end, file=sys.stderr, flush=True)
    return update


# --------------------------------------------------------------------------------------------
# estimate
# --------------------------------------------------------------------------------------------


def quantized_for(arg: str | None, *, calib: str | None = None, bits: int = 8):
    """A shape description: loaded if `arg` is one, else the model compressed with defaults
    (its shipped calibration data, or `calib`; random inputs as a last resort for planning;
    rounded by `default_rounding`)."""
    from accelgen.compress.quantize import QuantConfig, default_rounding, quantize
    from accelgen.data import load_npz, random_inputs
    from accelgen.frontend import load_model

    if arg is not None and is_accel(Path(arg)):
        return load_accel(arg)
    path = resolve_model(arg)
    graph = load_model(path)
    gi = graph.inputs[0]
    if calib == "random":
        data = random_inputs(gi.onnx_shape, gi.dtype, 256).x
    elif calib:
        data = load_npz(calib, gi.onnx_shape).x
    else:
        shipped = default_data(path, "calib")
        data = shipped.x if shipped is not None else None
        if data is None and any(graph.tensors[t].quant is None for t in graph.tensors):
            print("accelgen: warning: no calibration data for this model; planning with "
                  "random inputs (accuracy figures would be meaningless)", file=sys.stderr)
            data = random_inputs(gi.onnx_shape, gi.dtype, 256).x
    config = QuantConfig(weight_bits=bits, act_bits=bits)
    config = replace(config, rounding=default_rounding(config, data is not None))
    qg, _ = quantize(graph, data, config)
    entry = zoo_entry_for(path)
    qg.meta["zoo_model"] = entry.name if entry else None
    return qg


def print_plan(p) -> None:
    s = p.summary()
    print(f"{p.qgraph.name} on {p.device.name} at {p.clock_mhz:g} MHz: "
          f"{s['cycles_per_image']:,} cycles per image, {s['fps']:,.0f} FPS, MAC utilisation "
          f"{100 * s['mac_utilization']:.0f} % ({s['multipliers']} multipliers), "
          f"slowest stage {s['bottleneck']!r} ({s['slowest_stage_cycles']:,} cycles"
          + ("" if s["slowest_stage_cycles"] == s["cycles_per_image"] else
             "; the coupled pipeline waits where line buffers have no room for more rows")
          + ")")
    head = (f"  {'layer':<28} {'kind':<10} {'parallelism':<14} {'lanes':>7} {'cycles':>9} "
            f"{'LUT':>7} {'FF':>7} {'BRAM':>5} {'SPRAM':>5} {'DSP':>4}  weights")
    print(head)
    for st in p.stages:
        r = st.resources
        print(f"  {_short(st.layer, 28):<28} {st.kind:<10} {st.describe():<14} "
              f"{st.lanes_in:>3}>{st.lanes_out:<3} {st.cycles:>9,.0f} {r.lut:>7,.0f} "
              f"{r.ff:>7,.0f} {r.bram:>5} {r.spram:>5} {r.dsp:>4}  {st.weight_memory}")
    g = p.glue
    print(f"  {'(converters, FIFOs, arg-max)':<54} {'':>9} {g.lut:>7,.0f} {g.ff:>7,.0f} "
          f"{g.bram:>5} {g.spram:>5} {g.dsp:>4}")
    h = p.host
    print(f"  {'(host link, UART, board top)':<54} {'':>9} {h.lut:>7,.0f} {h.ff:>7,.0f} "
          f"{h.bram:>5} {h.spram:>5} {h.dsp:>4}")
    used = ", ".join(f"{k} {v['used']:,.0f}/{v['available']:,}" for k, v in s["resources"].items())
    print(f"  total: {used}")


def print_array_estimate(e, reason: str = "") -> None:
    print(f"PE array on {e.device} at {e.clock_mhz:g} MHz ({e.pes} PEs): "
          f"{e.cycles_per_image:,} cycles per image, {e.fps:,.1f} FPS, MAC utilisation "
          f"{100 * e.mac_utilization:.0f} %, memory {e.memory_words:,}/{e.memory_available:,} "
          f"words ({e.weight_bytes:,} bytes of weights and parameters), "
          f"{e.memory_reads + e.memory_writes:,} memory accesses per image"
          + (f"; {reason}" if reason else ""))
    print(f"  {'layer':<28} {'op':<8} {'bits':>4} {'cycles':>10} {'reads':>9} {'writes':>8} "
          f"{'MAC util':>8}")
    for row in e.layers:
        util = "" if row["mac_utilization"] is None else f"{100 * row['mac_utilization']:.0f} %"
        print(f"  {_short(row['layer'], 28):<28} {row['op']:<8} {row['bits']:>4} "
              f"{row['cycles']:>10,} {row['reads']:>9,} {row['writes']:>8,} {util:>8}")
    used = ", ".join(f"{k} {v['used']:,.0f}/{v['available']:,}" for k, v in e.resources.items())
    print(f"  total: {used}")
    if not e.logic_checked:
        print("  (not placed on this device yet: cycles from the exact cycle model of the "
              "array's RTL at the planned clock, logic from the array's logic model)")


def cmd_estimate(args: argparse.Namespace) -> int:
    from accelgen.arch import choose_arch
    from accelgen.array.targets import DoesNotFitArray, NotOnArray
    from accelgen.devices import device
    from accelgen.scheduler import DoesNotFit, plan

    dev = device(args.board)
    qg = quantized_for(args.model, calib=args.calib_data, bits=args.bits)
    if args.arch in ("array", "auto"):
        try:
            choice = choose_arch(args.arch, qg, dev, fps=args.fps, clock_mhz=args.clock)
        except (NotOnArray, DoesNotFitArray) as err:
            if args.json:
                print(json.dumps({"fits": False, "arch": "array", "device": dev.name,
                                  "reason": str(err)}))
                return 1
            raise UsageError(f"the PE array cannot run this model: {err}") from None
        auto = args.arch == "auto"
        if choice.arch == "pipeline":
            if args.json:
                print(json.dumps({**choice.plan.summary(), "arch": "pipeline",
                                  "why": choice.why}))
            else:
                print(f"--arch auto chose {choice.why}")
                print_plan(choice.plan)
            return 0
        if args.json:
            print(json.dumps({**choice.plan.summary(), **({"why": choice.why} if auto else {})}))
        else:
            if auto:
                print(f"--arch auto chose {choice.why}")
            print_array_estimate(choice.plan)
        return 0
    try:
        p = plan(qg, dev, fps=args.fps, clock_mhz=args.clock)
    except DoesNotFit as err:
        if args.json:
            print(json.dumps({"fits": False, "device": dev.name, "reason": str(err),
                              "layers": err.table, "budget": err.budget.as_dict(),
                              "suggestions": err.suggestions}))
            return 1
        print_does_not_fit(err, dev.name)
        raise
    if args.json:
        print(json.dumps(p.summary()))
    else:
        print_plan(p)
    return 0


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def print_does_not_fit(err, dev_name: str) -> None:
    print(f"does not fit {dev_name}:")
    for row in err.table:
        print(f"  {_short(row['layer'], 36):<36} {row['kind']:<10} LUT {row['lut']:>7,.0f} "
              f"FF {row['ff']:>7,.0f} BRAM {row['bram']:>3} SPRAM {row['spram']:>2} "
              f"DSP {row['dsp']:>3}")
    b = err.budget
    print(f"  budget: LUT {b.lut:,} FF {b.ff:,} BRAM {b.bram} SPRAM {b.spram} DSP {b.dsp}")


def cmd_build(args: argparse.Namespace) -> int:
    import time

    from accelgen import boards
    from accelgen.array.targets import DoesNotFitArray, NotOnArray
    from accelgen.flow import BuildOptions, build
    from accelgen.scheduler import DoesNotFit

    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:5.0f} s] {message}", file=sys.stderr, flush=True)

    opts = BuildOptions(board=args.board, model=args.model, bits=args.bits,
                        clock_mhz=args.clock, fps=args.fps,
                        out=Path(args.out) if args.out else None, synth=not args.no_synth,
                        seeds=args.seeds, check_images=args.check_images, baud=args.baud,
                        retry_lower_clock=args.retry_lower_clock, use_cache=not args.no_cache,
                        arch=args.arch, layer_counters=args.layer_counters)
    try:
        outcome = build(opts, say)
    except (NotOnArray, DoesNotFitArray) as err:
        raise UsageError(f"the PE array cannot run this model: {err}") from None
    except DoesNotFit as err:
        print_does_not_fit(err, boards.board(args.board).device.name)
        raise
    for line in outcome.summary:
        print(line)
    written = sorted(f.name + ("/" if f.is_dir() else "") for f in outcome.out.iterdir())
    print(f"wrote {outcome.out}/ ({', '.join(written)})")
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    from accelgen import boards

    rows = []
    for b in boards.BOARDS.values():
        d = b.device
        rows.append({"board": b.name, "aliases": list(b.aliases), "title": b.title,
                     "device": d.name, "family": d.family, "luts": d.luts, "ffs": d.ffs,
                     "bram_blocks": d.bram_blocks, "bram_kbit": d.bram_bits // 1024,
                     "spram_blocks": d.spram_blocks, "dsp_blocks": d.dsp_blocks,
                     "clock_mhz": b.clock_mhz, "planned_clock_mhz": d.planned_clock_mhz,
                     "notes": b.notes})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'board':<16} {'alias':<6} {'device':<10} {'LUT4':>6} {'BRAM':>10} {'SPRAM':>5} "
          f"{'DSP':>4} {'clock':>7} {'plan':>7}")
    for r in rows:
        bram = f"{r['bram_blocks']}x{r['bram_kbit']}k"
        print(f"{r['board']:<16} {','.join(r['aliases']):<6} {r['device']:<10} "
              f"{r['luts']:>6,} {bram:>10} {r['spram_blocks']:>5} {r['dsp_blocks']:>4} "
              f"{r['clock_mhz']:>5g}M {r['planned_clock_mhz']:>5g}M")
    return 0


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    from accelgen.compress.quantize import ADAPTIVE_BELOW

    p = _Parser(prog="accelgen", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"accelgen {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("inspect", help="print the layer table of a model")
    s.add_argument("model", help="an .onnx file or a shipped model name")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("run", help="run inference on inputs from a .npy/.npz file")
    s.add_argument("model", help="an .onnx file, a shipped model name, or NAME.accel/")
    s.add_argument("--inputs", required=True, help=".npy (one input) or .npz (keyed by name)")
    s.add_argument("-o", "--output", required=True, help=".npy (one output) or .npz")
    s.add_argument("--engine", choices=ENGINES, default="reference")
    s.add_argument("--board", default="ice40",
                   help="the board whose plan --engine pysim/cxxrtl/verilator simulates")
    s.add_argument("--arch", choices=("pipeline", "array"), default="pipeline",
                   help="the hardware the pysim/verilator engines simulate")
    s.add_argument("--vcd", default=None, metavar="FILE.vcd",
                   help="a waveform of one image (--engine cxxrtl)")
    s.add_argument("--vcd-image", type=int, default=0, metavar="N",
                   help="the image --vcd records (default 0)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("estimate", help="plan the accelerator: folding, cycles, resources")
    s.add_argument("model", nargs="?", default=None, help=".onnx, shipped name or NAME.accel/")
    s.add_argument("--board", default="ice40")
    s.add_argument("--fps", type=float, default=None, help="target frames per second")
    s.add_argument("--clock", type=float, default=None, help="clock in MHz (default: planned)")
    s.add_argument("--bits", type=int, default=8, help="bits when compressing an .onnx model")
    s.add_argument("--calib-data", default=None, metavar="FILE.npz|random")
    s.add_argument("--arch", choices=("pipeline", "array", "auto"), default="auto",
                   help="the streaming pipeline, the layer-sequential PE array, or (the "
                        "default) whichever fits and is faster; the estimate says why")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_estimate)

    s = sub.add_parser("compress", help="quantize a model into a shape description NAME.accel/")
    s.add_argument("model", nargs="?", default=None,
                   help="an .onnx file or a shipped model name (default: the default model)")
    s.add_argument("--bits", type=int, default=8, help="weight and activation bits (2..16)")
    s.add_argument("--weight-bits", type=int, default=None, help="override --bits for weights")
    s.add_argument("--act-bits", type=int, default=None, help="override --bits for activations")
    s.add_argument("--layer-bits", default=None, metavar="NAME=B,...",
                   help="per-layer bit widths (weights and output)")
    s.add_argument("--calibration", choices=("kl", "max", "percentile"), default="kl")
    s.add_argument("--rounding", choices=("nearest", "stochastic", "adaptive"), default=None,
                   help="weight rounding; adaptive minimises each layer's output error on the "
                   f"calibration data (default: adaptive at {ADAPTIVE_BELOW} weight bits or "
                   "fewer, "
                   "else nearest)")
    s.add_argument("--seed", type=int, default=0, help="seed of stochastic rounding")
    s.add_argument("--calib-data", default=None, metavar="FILE.npz|random")
    s.add_argument("--eval-data", default=None, metavar="FILE.npz")
    s.add_argument("-o", "--output", default=None, metavar="OUT.accel")
    s.set_defaults(fn=cmd_compress)

    s = sub.add_parser("evaluate", help="accuracy of a model or shape description")
    s.add_argument("model", nargs="?", default=None, help=".onnx, shipped name or NAME.accel/")
    s.add_argument("--data", default=None, metavar="FILE.npz")
    s.add_argument("--engine", choices=ENGINES, default=None)
    s.add_argument("--limit", type=int, default=None, help="only the first N images")
    s.add_argument("--board", default="ice40",
                   help="the board whose plan --engine pysim/cxxrtl/verilator simulates")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("build", help="model -> accelerator -> bitstream and report")
    s.add_argument("--board", default="ice40",
                   help="a board or alias (accelgen boards lists them; default ice40)")
    s.add_argument("--model", default=None, help="an .onnx file or a shipped model name")
    s.add_argument("--bits", type=int, default=8, help="weight and activation bits (2..16)")
    s.add_argument("--clock", type=float, default=None,
                   help="clock in MHz (default: the board's planned clock)")
    s.add_argument("--fps", type=float, default=None, help="target frames per second")
    s.add_argument("--out", default=None, help="output folder (default build/MODEL-BOARD)")
    s.add_argument("--no-synth", action="store_true",
                   help="stop before synthesis (design, self-check and report only)")
    s.add_argument("--seeds", type=int, default=1,
                   help="place-and-route seeds; the fastest is kept (default 1)")
    s.add_argument("--check-images", type=int, default=2,
                   help="images of the simulated self-check (default 2; 0 skips it)")
    s.add_argument("--baud", type=int, default=None, help="host-link UART rate (default 1M)")
    s.add_argument("--retry-lower-clock", action="store_true",
                   help="on a timing failure, build once more at the achieved Fmax")
    s.add_argument("--no-cache", action="store_true", help="run the tools even if cached")
    s.add_argument("--layer-counters", action="store_true", default=None,
                   help="PE array: keep the per-layer cycle and memory-access counters, read "
                        "over the link (LAYERS; the default off iCE40, where they cost about "
                        "350 logic cells)")
    s.add_argument("--arch", choices=("pipeline", "array", "auto"), default="auto",
                   help="the streaming pipeline, the layer-sequential PE array, or (the "
                        "default) whichever fits and is faster; the report says why")
    s.set_defaults(fn=cmd_build)

    s = sub.add_parser("boards", help="list the boards and their resources")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_boards)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args) or 0)
    except AccelgenError as err:
        print(f"accelgen: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("accelgen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`accelgen estimate | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
