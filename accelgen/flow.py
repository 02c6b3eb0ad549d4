"""`accelgen build`: model -> compressed integer model -> plan -> accelerator -> self-check ->
bitstream -> report, in one output folder.

Steps, in order; each fails with one clear `AccelgenError` before the next starts:

1. the board (an unknown one lists the valid names) and the output folder (must be writable);
2. compress the model (8-bit by default, its shipped calibration data) and measure float and
   golden accuracy on its shipped evaluation subset;
3. the clock: the PLL setting closest to ``--clock`` (default: the board's planned clock)
   without exceeding it; the plan at that clock (`DoesNotFit` ends the build here, before any
   synthesis, with the per-layer table);
4. generate the design: the accelerator behind its host link (UART at ``baud``), in the board
   top with the PLL;
5. the self-check — a few evaluation images through the accelerator's compiled RTL (CXXRTL;
   Amaranth's simulator where no C++ compiler is installed, which the build says), compared
   with the golden model with ``==`` — runs in a thread *while* Yosys and nextpnr run (they
   are separate processes);
6. synthesis, place and route with ``seeds`` seeds (the fastest is kept), packing; timing below
   the planned clock fails the build (with ``--retry-lower-clock``: one more build at the
   achieved Fmax, rounded down to a PLL setting);
7. the report: ``report.json`` and the printed summary.

Everything is written into a temporary sibling of the output folder, which replaces the output
folder only when the build has succeeded: an interrupted or failed build never leaves a folder
that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accelgen.errors import AccelgenError, UsageError

SELF_CHECK_IMAGES = 2
FRAME_OVERHEAD_BYTES = 7  # 0xA5, seq, cmd, len (2), crc (2)


class SelfCheckFailed(AccelgenError):
    """The simulated accelerator disagreed with the golden model: a bug in accelgen."""

    exit_code = 4


@dataclass
class BuildOptions:
    board: str = "ice40"
    model: str | None = None
    bits: int = 8
    clock_mhz: float | None = None
    fps: float | None = None
    out: Path | None = None
    synth: bool = True
    seeds: int = 1
    check_images: int = SELF_CHECK_IMAGES
    baud: int | None = None
    retry_lower_clock: bool = False
    use_cache: bool = True
    arch: str = "auto"
    layer_counters: bool | None = None  # the array's per-layer counters (None: the family's)


@dataclass
class BuildOutcome:
    out: Path
    report: dict
    summary: list[str] = field(default_factory=list)


def check_writable(out: Path) -> None:
    """The output folder's parent must exist or be creatable, and be writable."""
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".accelgen-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(
            f"cannot write the output folder {str(out)!r} ({err.strerror or err}); "
            f"choose another with --out"
        ) from None
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {str(out)!r} exists and is not a folder; choose --out")


def link_fps(info: dict, latency_cycles: int, clock_mhz: float, baud: int) -> float:
    """Images per second over the UART link: the request (header, image codes, CRC) and the
    response (header, class, logits, latency, CRC) on the wire at 10 bits per byte, plus the
    compute that does not overlap the reception (the image streams into the pipeline as it
    arrives, so only the latency after the last input byte counts; bounded by the whole
    latency here)."""
    request = FRAME_OVERHEAD_BYTES + info["input_bytes"]
    response = FRAME_OVERHEAD_BYTES + 1 + info["logit_bytes"] + 4
    wire_s = 10 * (request + response) / baud
    return 1.0 / (wire_s + latency_cycles / (clock_mhz * 1e6))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def self_check_engine() -> str:
    """The compiled simulator where a C++ compiler is installed (minutes faster on a whole
    network), Amaranth's otherwise; the build says which it used."""
    from accelgen.sim.cxxrtl import CompilerMissing, find_compiler

    try:
        find_compiler()
    except CompilerMissing:
        return "pysim"
    return "cxxrtl"


def run_self_check(acc, qg, x: np.ndarray, stop: threading.Event | None = None,
                   engine: str = "pysim") -> dict:
    """Simulate `x` (model-layout inputs) with `engine` and compare with golden; `stop`
    cancels. The PE array (`ArrayAccelerator`) runs on Verilator, or, where Verilator is not
    installed, the first image alone in Amaranth's simulator (`engine` names the pipeline's
    engine only); the result says which engine and how many images."""
    from accelgen import golden

    t0 = time.monotonic()
    x_ir = golden.quantize_inputs(qg, x)[qg.inputs[0].tensor]
    want = golden.logits(qg, x)
    if hasattr(acc, "program"):
        from accelgen.sim.array import simulate_array, simulate_array_pysim
        from accelgen.sim.compiled import CompilerMissing

        try:
            r = simulate_array(acc.program, x_ir, family=acc.core.family, stop=stop)
            engine = "verilator"
        except CompilerMissing:
            # (Amaranth's simulator runs the array at a few thousand cycles a second: one
            # image, which a build's synthesis and place and route hide)
            x, x_ir, want = x[:1], x_ir[:1], want[:1]
            r = simulate_array_pysim(acc.program, x_ir, family=acc.core.family)
            engine = "pysim"
        logits = r.logits(qg.outputs[0])
        classes = logits.argmax(axis=1)
        cycles = r.counters[:, 0]
    else:
        from accelgen.sim import simulate

        sim = simulate(acc, x_ir, backend=engine, stop=stop)
        logits, classes, cycles = sim.logits, sim.classes, sim.cycles
    return {"images": len(x), "engine": engine, "equal": bool(np.array_equal(logits, want)),
            "classes_equal": bool(np.array_equal(classes, want.argmax(axis=1))),
            "cycles": [int(c) for c in cycles], "seconds": time.monotonic() - t0}


def build(opts: BuildOptions, say: Callable[[str], None]) -> BuildOutcome:
    """The whole flow (module docstring)."""
    from accelgen import boards, evaluate
    from accelgen.arch import ARCHES, choose_arch
    from accelgen.boards.clocking import pll_settings
    from accelgen.build import TimingFailure, tool_versions
    from accelgen.cli import default_data, quantized_for, resolve_model
    from accelgen.frontend import load_model

    t_start = time.monotonic()
    board = boards.board(opts.board)
    if opts.seeds < 1:
        raise UsageError(f"--seeds {opts.seeds!r} must be at least 1")
    if not 2 <= opts.bits <= 16:
        raise UsageError(f"--bits {opts.bits!r} must be between 2 and 16")
    if opts.arch not in ARCHES:
        raise UsageError(f"--arch {opts.arch!r}: choose one of {', '.join(ARCHES)}")
    model_path = resolve_model(opts.model)
    out = Path(opts.out) if opts.out else Path("build") / f"{model_path.stem}-{board.name}"
    check_writable(out)
    if opts.synth:
        tool_versions(("yosys",) + {"ice40": ("nextpnr-ice40", "icepack"),
                                    "ecp5": ("nextpnr-ecp5", "ecppack"),
                                    "gowin": ("nextpnr-himbaechel", "gowin_pack")}[board.family])

    say(f"compressing {model_path.name} to {opts.bits} bits")
    graph = load_model(model_path)
    qg = quantized_for(str(model_path), bits=opts.bits)
    evaluation = default_data(model_path, "eval", qg)
    accuracy: dict = {}
    if evaluation is not None and evaluation.y is not None:
        say(f"accuracy on {len(evaluation)} evaluation images")
        accuracy = {
            "images": len(evaluation),
            "float": evaluate.accuracy(lambda x: evaluate.float_scores(graph, x), evaluation,
                                       "reference").accuracy,
            "golden": evaluate.accuracy(lambda x: evaluate.golden_scores(qg, x), evaluation,
                                        "golden").accuracy,
        }

    # (each template judged at the clock its PLL will give, as the build will run it)
    clock, array_clock = opts.clock_mhz, None
    if clock is None:
        from accelgen.array.targets import NotOnArray, array_target

        def achieved(mhz: float) -> float:
            return pll_settings(board.family, board.clock_mhz, mhz).f_out_mhz

        clock = achieved(board.device.planned_clock_mhz)
        with contextlib.suppress(NotOnArray):
            array_clock = achieved(array_target(board.device).clock_mhz)
    choice = choose_arch(opts.arch, qg, board.device, fps=opts.fps, clock_mhz=clock,
                         array_clock_mhz=array_clock)
    if opts.arch == "auto":
        say(f"--arch auto chose {choice.why}")
    wanted = opts.clock_mhz or (choice.plan.clock_mhz if choice.arch == "array" else
                                board.device.planned_clock_mhz)
    baud = opts.baud or boards.DEFAULT_BAUD
    retried = False
    while True:
        pll = pll_settings(board.family, board.clock_mhz, wanted)
        say(f"planning the {'PE array' if choice.arch == 'array' else 'pipeline'} for "
            f"{board.title} at {pll.f_out_mhz:g} MHz")
        p, acc, linked = make_design(qg, board, pll.f_out_mhz, baud, opts.fps, choice.arch,
                                     opts.layer_counters)
        partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            report = _build_into(partial, opts, board, qg, p, acc, linked, pll, baud, accuracy,
                                 evaluation, say, t_start)
            report["arch"] = {"chosen": choice.arch, "asked": opts.arch, "why": choice.why}
            report["layer_counters_over_link"] = bool(getattr(acc, "layer_words", 0))
        except TimingFailure as err:
            if opts.retry_lower_clock and not retried:
                shutil.rmtree(partial, ignore_errors=True)
                retried = True
                wanted = math.floor(err.fmax_mhz * 10) / 10
                say(f"timing failed at {pll.f_out_mhz:g} MHz (Fmax {err.fmax_mhz:.1f} MHz); "
                    f"building again at {wanted:g} MHz or the PLL setting below it")
                continue
            _keep_logs(partial, out, err)
            raise
        except AccelgenError as err:
            _keep_logs(partial, out, err)
            raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        break
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)
    report["bitstream"] = str(out / report["bitstream"]) if report["bitstream"] else None
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return BuildOutcome(out, report, summary_lines(report))


def make_design(qg, board, clock_mhz: float, baud: int, fps: float | None = None,
                arch: str = "pipeline", layer_counters: bool | None = None):
    """(plan, accelerator, accelerator behind its host link) for `board` at `clock_mhz`, with
    the streaming pipeline (`plan` a `HardwarePlan`; `DoesNotFit` when the model does not
    fit) or the PE array (``arch="array"``: an `ArrayEstimate` and an `ArrayAccelerator`,
    with its per-layer counters per `layer_counters`, None: the family's default).
    The design hash INFO reports is a digest of the plan, so a board running another build
    is recognised."""
    from accelgen.accelerator import Accelerator
    from accelgen.link.hostlink import LinkedAccelerator
    from accelgen.link.uart import uart_divisor
    from accelgen.scheduler import plan
    from accelgen.scheduler.resources import link_counter_bits

    try:
        divisor = uart_divisor(round(clock_mhz * 1e6), baud)
    except (ValueError, AccelgenError) as err:
        raise UsageError(f"--baud {baud}: {err}; choose a lower rate") from None
    if arch == "array":
        from accelgen.array.targets import array_target, estimate_array
        from accelgen.cores.array_accelerator import ArrayAccelerator

        p = estimate_array(qg, board.device, clock_mhz, layer_counters)
        acc = ArrayAccelerator(p.program, family=array_target(board.device).family,
                               layer_counters=p.layer_counters)
    else:
        if layer_counters:
            raise UsageError("--layer-counters: the streaming pipeline has no per-layer "
                             "counters (its layers run at once); use --arch array")
        p = plan(qg, board.device, fps=fps, clock_mhz=clock_mhz)
        acc = Accelerator(p)
    design_hash = int(_digest(json.dumps(p.summary(), sort_keys=True, default=str))[:8], 16)
    linked = LinkedAccelerator(acc, divisor=divisor, clock_hz=round(clock_mhz * 1e6),
                               design_hash=design_hash,
                               counter_bits=link_counter_bits(board.family))
    return p, acc, linked


def _keep_logs(partial: Path, out: Path, err: AccelgenError) -> None:
    """A failed build's folder becomes ``OUT.failed/`` (never OUT itself): its tool logs are
    what the user needs next. The error message says where they are."""
    failed = out.with_name(f"{out.name}.failed")
    shutil.rmtree(failed, ignore_errors=True)
    try:
        partial.rename(failed)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        return
    message = str(err).replace(str(partial), str(failed))
    if str(failed) not in message:
        message += f" (the build's files and logs are in {failed})"
    err.args = (message,)


def _build_into(folder: Path, opts: BuildOptions, board, qg, p, acc, linked, pll, baud: int,
                accuracy: dict, evaluation, say, t_start: float) -> dict:
    from accelgen import quantized
    from accelgen.boards.top import BoardTop
    from accelgen.build import TimingFailure, build_files

    quantized.save(qg, folder / f"{qg.name}.accel")
    # the run-time-loaded weights (SPRAM), which the host sends after configuration
    (folder / "weights.bin").write_bytes(acc.weight_image())
    check: dict = {}
    checker: Future | None = None
    pool = ThreadPoolExecutor(max_workers=1)
    stop = threading.Event()
    if opts.check_images > 0:
        if evaluation is not None:
            x = evaluation.x[: opts.check_images]
        else:
            rng = np.random.default_rng(0)
            shape = qg.inputs[0].onnx_shape if hasattr(qg.inputs[0], "onnx_shape") else None
            x = rng.uniform(0, 1, size=(opts.check_images, *(shape or ()))).astype(np.float32)
        engine = self_check_engine()
        how = ("compiled RTL, CXXRTL" if engine == "cxxrtl" else
               "Amaranth's simulator: no C++ compiler for the compiled one")
        if hasattr(acc, "program"):
            how = ("the PE array's compiled RTL, Verilator; without it the first image in "
                   "Amaranth's simulator")
        say(f"self-check: {len(x)} images through the simulated accelerator ({how}; in the "
            f"background)")
        checker = pool.submit(run_self_check, acc, qg, x, stop, engine)

    try:
        platform = board.platform()
        top = BoardTop(linked, board, pll)
        say("generating the design")
        prepared = platform.prepare(top, name="top")
        files = {n: (t if isinstance(t, str) else t.decode()) for n, t in prepared.files.items()
                 if n.endswith((".il", ".pcf", ".lpf", ".cst"))}
        (folder / "accelerator.il").write_text(files["top.il"])

        result = None
        if opts.synth:
            workdir = folder / "work"
            result = build_files(files, family=board.family, part=board.device.part,
                                 package=getattr(platform, "package", ""),
                                 target_mhz=pll.f_out_mhz, seeds=opts.seeds, workdir=workdir,
                                 bitstream_ext=board.bitstream_ext,
                                 gowin_family=getattr(platform, "family", ""),
                                 use_cache=opts.use_cache, progress=say,
                                 logic_capacity=board.device.luts)
            if not result.best.timing_met:
                best = result.best.fmax_mhz
                raise TimingFailure(
                    f"timing failed: the design reaches {best:.1f} MHz (best of {opts.seeds} "
                    f"seed(s)), below the planned {pll.f_out_mhz:g} MHz; rebuild with "
                    f"--clock {math.floor(best):d}, --retry-lower-clock, more --seeds, or a "
                    f"smaller --fps",
                    fmax_mhz=best,
                )
            shutil.copy2(result.bitstream, folder / result.bitstream.name)
            verilog = workdir / "accelerator.v"
            if verilog.is_file():
                shutil.copy2(verilog, folder / "accelerator.v")
        if checker is not None:
            try:
                check = checker.result()
            except AccelgenError as err:
                raise SelfCheckFailed(f"the self-check simulation failed: {err}") from None
            if not check.get("equal"):
                raise SelfCheckFailed(
                    "the simulated accelerator's logits differ from the golden model's on the "
                    "self-check images: this is a bug in accelgen, please report it"
                )
    except BaseException:
        stop.set()  # the simulation thread ends within a few thousand cycles
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    s = p.summary()
    latency = (check.get("cycles") or [s["cycles_per_image"]])[0]
    fi, fo = acc.in_fmt, acc.out_fmt
    info = {"input_bytes": fi.height * fi.width * fi.channels * ((fi.bits + 7) // 8),
            "logit_bytes": fo.height * fo.width * fo.channels * ((fo.bits + 7) // 8)}
    fmax = result.best.fmax_mhz if result else None
    clock = pll.f_out_mhz
    macs = s["macs_per_image"]
    report = {
        "accelgen_report": 1,
        "model": qg.name,
        "design_hash": f"{linked.link.info.design_hash:08x}",
        "baud": baud,
        "load_bytes": acc.load_bytes,
        "board": board.name,
        "device": board.device.name,
        "bits": opts.bits,
        "accuracy": accuracy,
        "bitstream": str(result.bitstream.name) if result else None,
        "clock_mhz": clock,
        "fmax_mhz": fmax,
        "fmax_min_mhz": result.fmax_min if result else None,
        "fmax_median_mhz": result.fmax_median if result else None,
        "seeds": opts.seeds,
        "seed_fmax_mhz": ({str(k): v for k, v in result.seed_fmax.items()} if result else {}),
        "timing_met": result.best.timing_met if result else None,
        "cycles_per_image": s["cycles_per_image"],
        "latency_cycles": latency,
        "fps": clock * 1e6 / s["cycles_per_image"],
        "fps_at_fmax": (fmax * 1e6 / s["cycles_per_image"]) if fmax else None,
        "gops_at_fmax": (2 * macs * fmax * 1e6 / s["cycles_per_image"] / 1e9) if fmax else None,
        "mac_utilization": s["mac_utilization"],
        "link": {"baud": baud, "fps": link_fps(info, latency, clock, baud),
                 "note": "computed from the frame sizes and the simulated latency"},
        "resources": (result.best.resources if result else
                      dict(s["resources"])),
        "resources_planned": planned_resources(p, s),
        "self_check": check,
        "tool_versions": result.tool_versions if result else {},
        "build_cached": result.cached if result else False,
        "tool_seconds": result.seconds if result else {},
        "seconds": time.monotonic() - t_start,
    }
    return report


def planned_resources(p, s: dict) -> dict:
    """The plan's resources in the units of nextpnr's report: on Gowin the DSP count is of
    multiplier cells (MULT9X9, two per DSP block), not of blocks."""
    planned = dict(s["resources"])
    if hasattr(p, "dsp_products") and p.device.family == "gowin":
        planned["dsp"] = {"used": p.dsp_products, "available": 2 * p.device.dsp_blocks}
    return planned


def summary_lines(r: dict) -> list[str]:
    """The human summary printed at the end of a build."""
    lines = [f"{r['model']} on {r['board']} ({r['device']}), {r['bits']}-bit"]
    arch = r.get("arch") or {}
    if arch:  # (auto's reason names the template; otherwise the option chose it)
        what = {"array": "the PE array", "pipeline": "the streaming pipeline"}[arch["chosen"]]
        lines.append("  hardware      " + (arch["why"] if arch.get("asked") == "auto" else
                                          f"{what} (--arch {arch['chosen']})"))
    acc = r.get("accuracy") or {}
    if acc:
        lines.append(f"  accuracy      float {100 * acc['float']:.2f} %, integer "
                     f"{100 * acc['golden']:.2f} % ({acc['images']} images)")
    sc = r.get("self_check") or {}
    if sc:
        lines.append(f"  self-check    {sc.get('images', 0)} images bit-exact in simulation "
                     f"({sc.get('engine', 'pysim')}, {sc.get('seconds', 0):.0f} s)")
    if r.get("fmax_mhz"):
        met = "met" if r["timing_met"] else "FAILED"
        lines.append(f"  clock         {r['clock_mhz']:g} MHz planned, Fmax {r['fmax_mhz']:.1f} "
                     f"MHz (timing {met}; min/median over {r['seeds']} seed(s) "
                     f"{r['fmax_min_mhz']:.1f}/{r['fmax_median_mhz']:.1f})")
    lines.append(f"  throughput    {r['cycles_per_image']:,} cycles per image, "
                 f"{r['fps']:,.0f} FPS at {r['clock_mhz']:g} MHz"
                 + (f", {r['fps_at_fmax']:,.0f} FPS / {r['gops_at_fmax']:.2f} GOPS at Fmax"
                    if r.get("fps_at_fmax") else ""))
    lines.append(f"  host link     {r['link']['fps']:,.0f} images/s at {r['link']['baud']:,} baud")
    res = ", ".join(f"{k} {v['used']:,.0f}/{v['available']:,}" for k, v in r["resources"].items()
                    if v.get("available"))
    lines.append(f"  resources     {res}")
    if r.get("bitstream"):
        lines.append(f"  bitstream     {r['bitstream']}")
    lines.append(f"  wall time     {r['seconds']:.0f} s"
                 + (" (bitstream from the build cache)" if r.get("build_cached") else ""))
    return lines
