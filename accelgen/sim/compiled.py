"""What the compiled simulation backends (`accelgen.sim.cxxrtl`, `accelgen.sim.verilator`)
share: the flat-port wrapper of the accelerator their C++ drivers know, the C++ compiler, the
cache of compiled models, the compiler run (interruptible, atomic), and the ctypes call that
streams every image through a compiled model in one go (``driver_loop.h``'s C API).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from amaranth import ClockDomain, Elaboratable, Module, Signal
from amaranth.back import rtlil

from accelgen.accelerator import Accelerator
from accelgen.errors import AccelgenError
from accelgen.sim.pysim import SimResult, SimulationError


class CompilerMissing(AccelgenError):
    """A tool the compiled simulation needs (a C++ compiler, Verilator) is not installed."""


class CompileFailed(AccelgenError):
    """Yosys, Verilator or the C++ compiler failed on the design."""


class SimTop(Elaboratable):
    """The accelerator with its streams as plain ports the C++ driver knows by name:
    ``ivalid iready idata`` (input payload, packed), ``ovalid oready odata``, ``cvalid cready
    cdata`` (the class), ``lvalid ldata`` (weight bytes), ``loaded``, ``latency``."""

    def __init__(self, acc: Accelerator) -> None:
        self.acc = acc
        self.ivalid, self.iready = Signal(name="ivalid"), Signal(name="iready")
        self.idata = Signal(len(acc.i.payload.as_value()), name="idata")
        self.ovalid, self.oready = Signal(name="ovalid"), Signal(name="oready")
        self.odata = Signal(len(acc.o.payload.as_value()), name="odata")
        self.cvalid, self.cready = Signal(name="cvalid"), Signal(name="cready")
        self.cdata = Signal(len(acc.cls.payload), name="cdata")
        self.lvalid, self.ldata = Signal(name="lvalid"), Signal(8, name="ldata")
        self.loaded = Signal(name="loaded")
        self.latency = Signal(32, name="latency")
        self.clk = Signal(name="clk")

    @property
    def ports(self) -> list[Signal]:
        return [self.clk, self.ivalid, self.iready, self.idata, self.ovalid, self.oready,
                self.odata, self.cvalid, self.cready, self.cdata, self.lvalid, self.ldata,
                self.loaded, self.latency]

    def elaborate(self, platform) -> Module:
        m = Module()
        # no reset: every register starts at its init value and the driver never resets, and
        # without a reset input the compiled models need not re-evaluate every register's
        # next-state logic whenever an input changes
        m.domains.sync = sync = ClockDomain("sync", reset_less=True)
        m.d.comb += sync.clk.eq(self.clk)
        acc = self.acc
        m.submodules.acc = acc
        m.d.comb += [
            acc.i.valid.eq(self.ivalid), self.iready.eq(acc.i.ready),
            acc.i.payload.as_value().eq(self.idata),
            self.ovalid.eq(acc.o.valid), acc.o.ready.eq(self.oready),
            self.odata.eq(acc.o.payload.as_value()),
            self.cvalid.eq(acc.cls.valid), acc.cls.ready.eq(self.cready),
            self.cdata.eq(acc.cls.payload),
            acc.load.valid.eq(self.lvalid), acc.load.payload.eq(self.ldata),
            acc.load_restart.eq(0),
            self.loaded.eq(acc.loaded), self.latency.eq(acc.latency),
        ]
        return m


def cache_dir(backend: str) -> Path:
    """Where `backend`'s compiled models live: ``$XDG_CACHE_HOME/accelgen/<backend>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "accelgen" / backend


def package_source(name: str) -> str:
    """A C++ source that ships in `accelgen.sim` (the drivers and their shared loop)."""
    return resources.files("accelgen.sim").joinpath(name).read_text()


def run_compiler(argv: Sequence[str], cwd: Path, log: Path, what: str,
                 stop: threading.Event | None = None) -> None:
    """Run one compile step (`argv` in `cwd`, output to `log`); setting `stop` kills it (a
    `SimulationError`); a failure is a `CompileFailed` quoting the first error line."""
    with log.open("w") as sink:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                if stop is not None and stop.wait(0.2):
                    raise SimulationError("the simulation was cancelled")
                if stop is None:
                    time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        text = log.read_text(errors="replace")
        first = next((ln for ln in text.splitlines() if "error" in ln.lower()),
                     text.strip()[-300:])
        raise CompileFailed(f"{what} failed on the simulation model: {first} [log: {log}]")


@dataclass(frozen=True)
class CompiledDesign:
    """A compiled model: its shared library and how long compiling it took (0.0 when it came
    from the cache)."""

    library: Path
    compile_seconds: float


_LOCK = threading.Lock()


def remembered(acc: Accelerator, backend: str) -> CompiledDesign | None:
    """The library compiled for `acc` earlier in this process (its compile time 0.0): checked
    before the design is converted again to compute the cache key."""
    known = getattr(acc, "_compiled_simulation", {}).get(backend)
    if known is not None and known.library.is_file():
        return CompiledDesign(known.library, 0.0)
    return None


def cached_build(acc: Accelerator, backend: str, key_parts: Sequence[str],
                 build: Callable[[Path], None]) -> CompiledDesign:
    """The shared library of `acc`'s model for `backend`: remembered on `acc`, else from the
    cache under the hash of `key_parts` (the design's text, the driver, the tools' versions
    and flags), else made by `build(work)`, which must leave ``work/model.so``. The library
    moves into the cache atomically, so a half-written one is never used; a failed build's
    logs stay in its work folder, which the `CompileFailed` error names."""
    known = remembered(acc, backend)
    if known is not None:
        return known
    memo = acc.__dict__.setdefault("_compiled_simulation", {})
    key = hashlib.sha256()
    for part in key_parts:
        key.update(part.encode())
        key.update(b"\0")
    out = cache_dir(backend) / key.hexdigest()[:24]
    lib = out / "model.so"
    with _LOCK:
        if lib.is_file():
            memo[backend] = CompiledDesign(lib, 0.0)
            return memo[backend]
        start = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
        try:
            build(work)
            out.mkdir(exist_ok=True)
            os.replace(work / "model.so", lib)
        except CompileFailed:
            raise
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        memo[backend] = CompiledDesign(lib, time.monotonic() - start)
        return memo[backend]


def design_rtlil(acc: Accelerator) -> str:
    """`SimTop(acc)` as RTLIL without source locations (an edit elsewhere in accelgen does not
    change the design's hash, and the generated C++ is smaller)."""
    top = SimTop(acc)
    return re.sub(r"^\s*attribute \\src .*\n", "",
                  rtlil.convert(top, name="top", ports=top.ports), flags=re.M)


def find_compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``c++``/``g++``/``clang++`` on PATH."""
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    raise CompilerMissing(
        "the compiled simulator needs a C++17 compiler and none was found (set CXX, or "
        "install one: apt-get install g++)"
    )


_U32P = ctypes.POINTER(ctypes.c_uint32)
_U64P = ctypes.POINTER(ctypes.c_uint64)
_U8P = ctypes.POINTER(ctypes.c_uint8)


def _load(lib: Path) -> ctypes.CDLL:
    dll = ctypes.CDLL(str(lib))
    dll.ag_new.restype = ctypes.c_void_p
    dll.ag_free.argtypes = [ctypes.c_void_p]
    dll.ag_in_chunks.restype = ctypes.c_uint32
    dll.ag_out_chunks.restype = ctypes.c_uint32
    dll.ag_run.restype = ctypes.c_int
    dll.ag_run.argtypes = [
        ctypes.c_void_p, _U8P, ctypes.c_uint64, _U32P, ctypes.c_uint64, ctypes.c_uint32,
        ctypes.c_uint64, ctypes.c_int, _U32P, ctypes.c_uint64, ctypes.c_uint32, _U32P, _U64P,
        _U64P, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_double, ctypes.c_double,
        ctypes.c_char_p, ctypes.c_int64, _U64P, ctypes.POINTER(ctypes.c_int32),
    ]
    return dll


def _pack_lanes(values: np.ndarray, bits: int, chunks: int, extra_bit: np.ndarray) -> np.ndarray:
    """(beats, lanes) integer codes -> (beats, chunks) uint32 words: lane k at bits
    ``k*bits``, then one flag bit (``last``) after the lanes."""
    beats, lanes = values.shape
    words = np.zeros((beats, chunks), dtype=np.uint64)
    mask = (1 << bits) - 1
    fields = [(values[:, k].astype(np.int64) & mask).astype(np.uint64) for k in range(lanes)]
    fields.append(extra_bit.astype(np.uint64))
    widths = [bits] * lanes + [1]
    pos = 0
    for f, w in zip(fields, widths, strict=True):
        word, off = divmod(pos, 32)
        words[:, word] |= (f << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + w > 32:
            words[:, word + 1] |= f >> np.uint64(32 - off)
        pos += w
    return words.astype(np.uint32)


def _unpack_lanes(words: np.ndarray, bits: int, lanes: int, signed: bool) -> np.ndarray:
    """(beats, chunks) uint32 -> (beats, lanes) int64 codes (the inverse of `_pack_lanes`)."""
    wide = np.zeros(words.shape[0], dtype=object)
    for k in range(words.shape[1]):
        wide = wide | (words[:, k].astype(object) << (32 * k))
    out = np.zeros((words.shape[0], lanes), dtype=np.int64)
    mask = (1 << bits) - 1
    for k in range(lanes):
        v = np.array([(int(w) >> (k * bits)) & mask for w in wide], dtype=np.int64)
        if signed:
            v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
        out[:, k] = v
    return out


def run_library(library: Path, acc: Accelerator, x_ir: np.ndarray, *,
                back_to_back: bool = False, seed: int | None = None, idle: float = 0.0,
                busy: float = 0.0, deadline: int = 50_000_000, vcd: str | None = None,
                vcd_image: int = 0, stop: threading.Event | None = None) -> SimResult:
    """`accelgen.sim.pysim.simulate` through a compiled model's shared library (the C API of
    ``driver_loop.h``'s drivers): every image in one call. `vcd` dumps image `vcd_image`'s
    cycles (-1: all) where the backend writes waveforms; setting `stop` from another thread
    stops the run within a few thousand cycles (a `SimulationError`)."""
    dll = _load(library)
    fi, fo = acc.in_fmt, acc.out_fmt
    n, h, w, c = x_ir.shape
    lanes_in = fi.lanes
    beats = x_ir.reshape(n * h * w * (c // lanes_in), lanes_in)
    per_image_in = h * w * (c // lanes_in)
    last_in = (np.arange(beats.shape[0]) % per_image_in) == per_image_in - 1
    in_chunks = dll.ag_in_chunks()
    in_words = np.ascontiguousarray(_pack_lanes(beats, fi.bits, in_chunks, last_in))
    qg = acc.plan.qgraph
    out_t = qg.tensors[qg.outputs[0].tensor]
    per_image_out = out_t.size // fo.lanes
    out_chunks = dll.ag_out_chunks()
    cap = n * per_image_out
    out_words = np.zeros((cap, out_chunks), dtype=np.uint32)
    classes = np.zeros(n, dtype=np.uint32)
    in_start = np.zeros(n, dtype=np.uint64)
    out_end = np.zeros(n, dtype=np.uint64)
    stats = np.zeros(5, dtype=np.uint64)
    image = acc.weight_image()
    load = np.frombuffer(image, dtype=np.uint8) if image else np.zeros(1, dtype=np.uint8)
    cancel = (ctypes.c_int32 * 1)(0)
    watcher = None
    if stop is not None:  # another thread's `stop` reaches the C++ loop through `cancel`
        def watch() -> None:
            while not stop.wait(0.2):
                if done.is_set():
                    return
            cancel[0] = 1

        done = threading.Event()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    handle = dll.ag_new()
    started = time.perf_counter()
    try:
        rc = dll.ag_run(
            handle, load.ctypes.data_as(_U8P), len(image),
            in_words.ctypes.data_as(_U32P), beats.shape[0], fi.lanes * fi.bits,
            n, int(back_to_back), out_words.ctypes.data_as(_U32P), cap, fo.lanes * fo.bits,
            classes.ctypes.data_as(_U32P), in_start.ctypes.data_as(_U64P),
            out_end.ctypes.data_as(_U64P), deadline, 0 if seed is None else seed, idle, busy,
            (vcd or "").encode(), vcd_image, stats.ctypes.data_as(_U64P), cancel)
    finally:
        seconds = time.perf_counter() - started
        dll.ag_free(handle)
        if watcher is not None:
            done.set()
    if rc == 1:
        raise SimulationError(f"simulation made no progress within {deadline:,} cycles "
                              f"({int(stats[2])} of {cap} output beats done)")
    if rc == 2:
        raise SimulationError(f"the loader took {len(image)} bytes but is not done")
    if rc == 3:
        raise SimulationError(f"expected {n} images of {out_t.size} logits, got more")
    if rc == 5:
        raise SimulationError("the simulation was cancelled")
    if rc == 4:
        raise SimulationError(f"cannot write the waveform file {vcd!r}")
    if int(stats[2]) != cap:
        raise SimulationError(f"expected {n} images of {out_t.size} logits")
    codes = _unpack_lanes(out_words, fo.bits, fo.lanes, fo.signed)
    order = qg.outputs[0].layout.reshape(-1)
    logits = codes.reshape(n, per_image_out * fo.lanes)[:, order]
    if back_to_back:
        cycles = np.diff(np.concatenate([in_start[:1], out_end]).astype(np.int64))
    else:
        cycles = out_end.astype(np.int64) - in_start.astype(np.int64)
    return SimResult(logits, classes.astype(np.int64), cycles, int(stats[1]), int(stats[0]),
                     seconds)
