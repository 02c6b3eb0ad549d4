"""Quantization (seed 001): float `Graph` + calibration data -> `QuantizedGraph`.

Power-of-two fixed point throughout (DESIGN.md, "Integer arithmetic contract"):

* activations: one fractional length per tensor; the clipping threshold comes from calibration
  (KL divergence, max, or a percentile), then the fractional length from `best_frac`; tensors
  after ReLU/ReLU6 are unsigned; pools and pads keep their input's format;
* weights: one fractional length per output channel (least rounding error), rounded to nearest
  stochastically with a fixed seed (seed 001), or adaptively (`adaptive`: least output error
  on the calibration data, with bias correction); biases at the accumulator scale;
* bit widths 2..16 globally (`weight_bits`, `act_bits`) with per-layer overrides; the model's
  input and its logits use `io_bits` (default: at least 8), and the logits are never clipped
  (their threshold is their maximum) so the arg-max survives;
* accumulators: the exact width the actual integer weights need (`accumulator_bounds`).

QDQ / QONNX models arrive with quantization annotations: their bit widths are kept and their
scales converted to the nearest power of two (`from_annotation`); tensors without one are
calibrated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from accelgen import golden, reference
from accelgen.compress import adaptive, calibrate
from accelgen.errors import UnsupportedError, UsageError
from accelgen.ir import (
    Add,
    AvgPool2d,
    Clip,
    Concat,
    Conv2d,
    Dense,
    GlobalAvgPool,
    GlobalMaxPool,
    Graph,
    Layer,
    MaxPool2d,
    Pad2d,
    QuantParams,
    Relu,
    Softmax,
)
from accelgen.quantized import (
    MAX_BITS,
    MIN_BITS,
    QAdd,
    QAvgPool,
    QClamp,
    QConcat,
    QConv,
    QDense,
    QGlobalAvgPool,
    QGlobalMaxPool,
    QInput,
    QLayer,
    QMaxPool,
    QOutput,
    QPad,
    QTensor,
    QuantizedGraph,
    accumulator_bounds,
    bits_for_range,
)

CALIBRATION_METHODS = ("kl", "max", "percentile")
MAX_CHANNEL_FRAC_SPREAD = 12
ADAPTIVE_IMAGES = 512  # calibration images adaptive rounding follows through the layers
# the default rounding (`default_rounding`) is adaptive at this many weight bits or fewer
ADAPTIVE_BELOW = 6
ROUNDING_MODES = ("nearest", "stochastic", "adaptive")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize to. Every value is checked; errors quote the bad value."""

    weight_bits: int = 8
    act_bits: int = 8
    layer_bits: Mapping[str, int] = field(default_factory=dict)
    calibration: str = "kl"
    percentile: float = 99.99
    rounding: str = "nearest"
    seed: int = 0
    io_bits: int | None = None
    batch: int = 64

    def __post_init__(self) -> None:
        for what, bits in (("weight_bits", self.weight_bits), ("act_bits", self.act_bits),
                           *((f"layer bits for {k!r}", v) for k, v in self.layer_bits.items())):
            if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
                raise UsageError(f"{what} = {bits!r}; bit widths must be {MIN_BITS}..{MAX_BITS}")
        if self.io_bits is not None and not MIN_BITS <= self.io_bits <= MAX_BITS:
            raise UsageError(f"io_bits = {self.io_bits!r}; must be {MIN_BITS}..{MAX_BITS}")
        if self.calibration not in CALIBRATION_METHODS:
            raise UsageError(
                f"calibration {self.calibration!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        if self.rounding not in ROUNDING_MODES:
            raise UsageError(
                f"rounding {self.rounding!r}; choose one of {', '.join(ROUNDING_MODES)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile {self.percentile!r} must be in (50, 100]")

    @property
    def edge_bits(self) -> int:
        return self.io_bits if self.io_bits is not None else max(8, self.act_bits)

    def bits_for(self, layer: str) -> tuple[int, int]:
        """(weight bits, output activation bits) of a layer."""
        if layer in self.layer_bits:
            return self.layer_bits[layer], self.layer_bits[layer]
        return self.weight_bits, self.act_bits


@dataclass(frozen=True, eq=False)
class Unit:
    """One quantized layer: a main float layer plus the activation fused into it."""

    main: Layer
    activation: Relu | Clip | None
    output: str



def default_rounding(config: QuantConfig, calibrated: bool) -> str:
    """The weight rounding accelgen uses when none is asked for: adaptive where a layer has
    `ADAPTIVE_BELOW` weight bits or fewer and calibration data exists (the default model at 4
    bits: 84.95 % against 15.90 % rounded to nearest, benchmarks/results/quantization.md),
    else to nearest (as accurate at 8 bits and above, and a third of the time)."""
    narrowest = min([config.weight_bits, *config.layer_bits.values()])
    return "adaptive" if calibrated and narrowest <= ADAPTIVE_BELOW else "nearest"

def plan_units(graph: Graph) -> list[Unit]:
    """Fuse each ReLU / Clip into the Conv2d / Dense / Add / Concat it follows, where it is that
    layer's only reader and the intermediate tensor is neither an output nor annotated."""
    consumers: dict[str, list[Layer]] = {}
    for layer in graph.layers:
        for name in layer.inputs:
            consumers.setdefault(name, []).append(layer)
    fused: set[str] = set()
    units = []
    for layer in graph.layers:
        if layer.name in fused:
            continue
        act = None
        if isinstance(layer, (Conv2d, Dense, Add, Concat)):
            users = consumers.get(layer.output, [])
            if (
                len(users) == 1
                and isinstance(users[0], (Relu, Clip))
                and layer.output not in graph.output_tensors
                and graph.tensors[layer.output].quant is None
            ):
                act = users[0]
                fused.add(act.name)
        units.append(Unit(layer, act, act.output if act is not None else layer.output))
    return units


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def collect_statistics(
    graph: Graph, data: np.ndarray, tensors: set[str], batch: int
) -> calibrate.Statistics:
    """Two passes over `data` (model layout): ranges, then |x| histograms of `tensors`."""
    stats = calibrate.Statistics()
    gi = graph.inputs[0]
    for pass_ in (stats.observe_range, stats.observe_hist):
        def observe(name: str, x: np.ndarray, pass_=pass_) -> None:
            if name in tensors:
                pass_(name, x)

        for start in range(0, len(data), batch):
            x = reference.prepare_input(gi, data[start : start + batch])
            reference.run_ir(graph, {gi.tensor: x}, observe=observe)
    return stats


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------


def _levels(bits: int, signed: bool) -> int:
    return (1 << (bits - 1)) if signed else (1 << bits)


def from_annotation(q: QuantParams, name: str) -> tuple[int, bool, float, str]:
    """(bits, signed, threshold, note) for a tensor annotated by a QDQ / QONNX model.

    Bits are kept; a zero point at the bottom of the range (TFLite's int8 after ReLU) is an
    unsigned format; a zero point inside the range needs a symmetric signed format one bit wider;
    the threshold is the largest |value| the model's own parameters represent. The fractional
    length then follows from the threshold (`best_frac`, or without data the finest one that
    does not clip it).
    """
    if q.per_channel:
        raise UnsupportedError(
            f"tensor {name!r} is quantized per channel; accelgen's activations have one "
            f"fractional length per tensor"
        )
    zp, scale = q.zero_point[0], q.scale[0]
    bits = min(max(q.bits, MIN_BITS), MAX_BITS)
    reach = max(abs(q.qmin - zp), abs(q.qmax - zp)) * scale
    note = ""
    if zp == q.qmin:
        signed = False
    elif (q.signed and zp == 0) or (not q.signed and zp == 1 << (q.bits - 1)):
        signed = True
    else:
        # codes q - zp span 2**bits values on both sides of zero: one more bit holds them all
        signed = True
        bits = min(bits + 1, MAX_BITS)
        note = f"asymmetric zero point {zp:g}: symmetric {bits}-bit format"
    if 2.0 ** -round(-math.log2(scale)) != scale:
        note = (note + "; " if note else "") + f"scale {scale:.6g} is not a power of two"
    return bits, signed, reach, note


@dataclass
class _Format:
    bits: int
    signed: bool
    frac: int
    threshold: float | None = None
    source: str = "calibration"
    note: str = ""


def _act_bounds(act: Relu | Clip | None, out: QTensor) -> tuple[int, int]:
    lo, hi = out.qmin, out.qmax
    scale = 2.0**out.frac
    if isinstance(act, Relu):
        lo = max(lo, 0)
    elif isinstance(act, Clip):
        if math.isfinite(act.low):
            lo = max(lo, math.ceil(act.low * scale))
        if math.isfinite(act.high):
            hi = min(hi, math.floor(act.high * scale))
    return lo, max(lo, hi)


def _unsigned_after(act: Relu | Clip | None) -> bool:
    return isinstance(act, Relu) or (isinstance(act, Clip) and act.low >= 0)


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------


def quantize_weights(
    w: np.ndarray, bits: int, rounding: str, rng: np.random.Generator,
    fracs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 0) integer weights and their fractional lengths."""
    qmax = (1 << (bits - 1)) - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    if fracs is None:
        fracs = np.array([calibrate.weight_frac(row, qmax) for row in flat], np.int64)
        # a (nearly) dead channel would ask for a huge fractional length and push its bias out
        # of any accumulator: no channel gets more than 2**12 times the layer's finest step
        cap = calibrate.weight_frac(flat, qmax) + MAX_CHANNEL_FRAC_SPREAD
        fracs = np.minimum(fracs, cap)
    scaled = flat * np.exp2(fracs.astype(np.float64))[:, None]
    if rounding == "stochastic":
        q = np.floor(scaled + rng.random(scaled.shape))
    else:
        q = np.floor(scaled + 0.5)
    q = np.clip(q, -qmax - 1, qmax).astype(np.int64)
    return q.reshape(w.shape), fracs


# --------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------


def quantize(
    graph: Graph,
    calibration_data: np.ndarray | None,
    config: QuantConfig | None = None,
) -> tuple[QuantizedGraph, dict]:
    """Quantize `graph`; returns the QuantizedGraph and a small report of what was chosen."""
    config = config or QuantConfig()
    if len(graph.inputs) != 1:
        raise UnsupportedError(f"models with {len(graph.inputs)} inputs are not supported yet")
    unknown = set(config.layer_bits) - {la.name for la in graph.layers}
    if unknown:
        raise UsageError(
            f"--layer-bits names unknown layer(s) {sorted(unknown)!r}; see `accelgen inspect`"
        )
    units = plan_units(graph)
    rng = np.random.default_rng(config.seed)
    softmax_inputs = {u.main.output: u.main.inputs[0] for u in units
                      if isinstance(u.main, Softmax)}
    output_tensors = {softmax_inputs.get(t, t) for t in graph.output_tensors}

    # which tensors get a format from data: the input and every computed (non-pool) tensor
    gi = graph.inputs[0]
    needs = {gi.tensor} | {
        u.output for u in units if isinstance(u.main, (Conv2d, Dense, Add, Concat))
    }
    unannotated = {t for t in needs if graph.tensors[t].quant is None}
    have_data = calibration_data is not None and len(calibration_data) > 0
    if config.rounding == "adaptive" and not have_data:
        raise UsageError("adaptive rounding needs calibration data (--calib-data FILE.npz)")
    if unannotated and not have_data:
        raise UsageError(
            "quantization needs calibration data (--calib-data FILE.npz, or --calib-data random)"
        )
    stats = calibrate.Statistics()
    if have_data:
        stats = collect_statistics(graph, np.asarray(calibration_data), needs, config.batch)

    formats: dict[str, _Format] = {}

    def calibrated(name: str, bits: int, signed: bool, method: str) -> _Format:
        annotated = graph.tensors[name].quant
        st = stats.tensors.get(name)
        if annotated is not None:
            b, s, t, note = from_annotation(annotated, name)
            qmax = (1 << (b - 1)) - 1 if s else (1 << b) - 1
            if st is not None and st.absmax > 0:
                frac = calibrate.best_frac(st, t, qmax)
            else:
                frac = math.floor(math.log2(qmax / t))
            return _Format(b, s, frac, t, "model", note)
        assert st is not None
        if st.absmax == 0.0:
            return _Format(bits, signed, bits - 1, 0.0)
        qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        t = calibrate.threshold(st, method, _levels(bits, signed), config.percentile)
        return _Format(bits, signed, calibrate.best_frac(st, t, qmax), t)

    # the input: not clipped (its maximum), signed only if the data has negative values
    in_stats = stats.tensors.get(gi.tensor)
    formats[gi.tensor] = calibrated(
        gi.tensor, config.edge_bits, in_stats is None or not in_stats.nonnegative, "max"
    )

    qtensors: dict[str, QTensor] = {}

    def qt(name: str) -> QTensor:
        if name not in qtensors:
            f = formats[name]
            qtensors[name] = QTensor(name, graph.tensors[name].shape, f.bits, f.signed, f.frac)
        return qtensors[name]

    qt(gi.tensor)
    # adaptive rounding follows the calibration sample through the quantized layers built so far
    floats: dict[str, np.ndarray] = {}
    float_readers: dict[str, int] = {}
    codes: dict[str, np.ndarray] = {}
    readers: dict[str, int] = {}
    if config.rounding == "adaptive":
        sample = np.asarray(calibration_data)[:ADAPTIVE_IMAGES]
        weighted = [u.main.inputs[0] for u in units if isinstance(u.main, (Conv2d, Dense))]
        floats = adaptive.float_inputs(graph, gi, sample, set(weighted), config.batch)
        # (a tensor may feed several weighted layers: a ResNet block's input feeds its first
        # convolution and its shortcut's; it is dropped after the last of them)
        float_readers = {t: weighted.count(t) for t in set(weighted)}
        codes[gi.tensor] = qt(gi.tensor).quantize(reference.prepare_input(gi, sample))
        for u in units:
            for name in u.main.inputs:
                readers[name] = readers.get(name, 0) + 1
    layers: list[QLayer] = []
    report_layers = []
    for u in units:
        main = u.main
        if isinstance(main, Softmax):
            continue  # host-side
        w_bits, a_bits = config.bits_for(main.name)
        is_output = u.output in output_tensors
        method = "max" if is_output else config.calibration
        if is_output:
            a_bits = max(a_bits, config.edge_bits)
        ins = [qt(t) for t in main.inputs]
        if isinstance(main, (Conv2d, Dense, Add, Concat)):
            signed = not _unsigned_after(u.activation)
            formats[u.output] = calibrated(u.output, a_bits, signed, method)
        elif isinstance(main, (Relu, Clip)):  # a standalone activation
            src = ins[0]
            formats[u.output] = _Format(src.bits, False, src.frac, None, "input")
        else:  # pools and pads keep their input's format
            src = ins[0]
            formats[u.output] = _Format(src.bits, src.signed, src.frac, None, "input")
        out = qt(u.output)
        lo, hi = _act_bounds(u.activation, out)
        if isinstance(main, (Conv2d, Dense)):
            moments = None
            if codes:
                x_q = codes[main.inputs[0]].astype(np.float64) * 2.0 ** -ins[0].frac
                float_readers[main.inputs[0]] -= 1
                x_f = (floats.pop(main.inputs[0]) if not float_readers[main.inputs[0]]
                       else floats[main.inputs[0]])
                moments = adaptive.InputMoments.of(main, x_f, x_q)
            layer, info = _weighted(main, u, ins[0], out, w_bits, config, rng, lo, hi, moments)
            layers.append(layer)
            report_layers.append(info)
            _follow(layer, qtensors, codes, readers)
            continue
        if isinstance(main, Add):
            fmax = max(t.frac for t in ins)
            layer = QAdd(main.name, main.inputs, u.output, activation=_act_name(u.activation),
                         lo=lo, hi=hi, align=tuple(fmax - t.frac for t in ins),
                         shift=fmax - out.frac)
        elif isinstance(main, Concat):
            layer = QConcat(main.name, main.inputs, u.output, activation=_act_name(u.activation),
                            lo=lo, hi=hi, shifts=tuple(t.frac - out.frac for t in ins))
        elif isinstance(main, (Relu, Clip)):
            lo, hi = _act_bounds(main, out)
            layer = QClamp(main.name, main.inputs, u.output, activation=_act_name(main), lo=lo,
                           hi=min(hi, ins[0].qmax), shift=0)
        elif isinstance(main, MaxPool2d):
            layer = QMaxPool(main.name, main.inputs, u.output, kernel=main.kernel,
                             stride=main.stride, padding=main.padding, dilation=main.dilation,
                             ceil_mode=main.ceil_mode)
        elif isinstance(main, AvgPool2d):
            layer = QAvgPool(main.name, main.inputs, u.output, kernel=main.kernel,
                             stride=main.stride, padding=main.padding, dilation=main.dilation,
                             ceil_mode=main.ceil_mode, count_include_pad=main.count_include_pad)
        elif isinstance(main, GlobalAvgPool):
            layer = QGlobalAvgPool(main.name, main.inputs, u.output)
        elif isinstance(main, GlobalMaxPool):
            layer = QGlobalMaxPool(main.name, main.inputs, u.output)
        elif isinstance(main, Pad2d):
            value = int(np.clip(np.floor(main.value * 2.0**out.frac + 0.5), out.qmin, out.qmax))
            layer = QPad(main.name, main.inputs, u.output, padding=main.padding, value=value)
        else:
            raise UnsupportedError(f"{main.op} {main.name!r} has no integer form yet")
        layers.append(layer)
        report_layers.append({"layer": main.name, "op": layer.op, "out": out.describe()})
        _follow(layer, qtensors, codes, readers)

    inputs = (_qinput(graph),)
    outputs = []
    for go in graph.outputs:
        tensor = softmax_inputs.get(go.tensor, go.tensor)
        outputs.append(QOutput(tensor, go.onnx_name, go.onnx_shape, go.layout,
                               host_softmax=tensor != go.tensor))
    meta = {
        "source": graph.name,
        "config": {
            "weight_bits": config.weight_bits, "act_bits": config.act_bits,
            "io_bits": config.edge_bits, "layer_bits": dict(config.layer_bits),
            "calibration": config.calibration, "percentile": config.percentile,
            "rounding": config.rounding, "seed": config.seed,
        },
        "tensors": {
            name: {"format": qtensors[name].describe(), "source": f.source,
                   "threshold": f.threshold, **({"note": f.note} if f.note else {})}
            for name, f in formats.items() if name in qtensors
        },
    }
    qg = QuantizedGraph(graph.name, inputs, tuple(outputs), qtensors, tuple(layers), meta)
    return qg, {"layers": report_layers, "tensors": meta["tensors"]}


def _follow(layer: QLayer, tensors: dict[str, QTensor], codes: dict[str, np.ndarray],
            readers: dict[str, int]) -> None:
    """Advance the adaptive-rounding sample through `layer`, dropping inputs no longer read."""
    if not codes:
        return
    codes[layer.output] = golden.run_layer(layer, tensors, *(codes[t] for t in layer.inputs))
    for name in layer.inputs:
        readers[name] -= 1
        if readers[name] == 0:
            del codes[name]


def _act_name(act: Relu | Clip | None) -> str:
    if act is None:
        return "none"
    if isinstance(act, Relu):
        return "relu"
    return "relu6" if act.is_relu6 else "clip"


def _qinput(graph: Graph) -> QInput:
    gi = graph.inputs[0]
    scale = zp = None
    if gi.quant is not None:
        if gi.quant.per_channel:
            raise UnsupportedError(f"input {gi.onnx_name!r} is quantized per channel")
        scale, zp = gi.quant.scale[0], gi.quant.zero_point[0]
    return QInput(gi.tensor, gi.onnx_name, gi.onnx_shape, gi.layout, scale,
                  0.0 if zp is None else float(zp))


def _weighted(
    main: Conv2d | Dense, u: Unit, x: QTensor, out: QTensor, w_bits: int, config: QuantConfig,
    rng: np.random.Generator, lo: int, hi: int, moments: adaptive.InputMoments | None = None,
) -> tuple[QLayer, dict]:
    w = main.weight
    note = ""
    if main.weight_quant is not None:
        # the model's bit width; the fractional lengths are re-chosen on its (exact) weights
        w_bits = min(max(main.weight_quant.bits, MIN_BITS), MAX_BITS)
        note = "bit width from the model"
    bias_f = main.bias.astype(np.float64)
    q, fracs = quantize_weights(w, w_bits, "nearest" if moments else config.rounding, rng)
    if moments is not None:
        qmax = (1 << (w_bits - 1)) - 1
        cap = calibrate.weight_frac(w.reshape(w.shape[0], -1), qmax) + MAX_CHANNEL_FRAC_SPREAD
        groups = main.groups if isinstance(main, Conv2d) else 1
        q, fracs, correction = adaptive.round_weights(w, groups, w_bits, fracs, moments, cap)
        bias_f = bias_f + correction
    acc_frac = x.frac + fracs
    bias = np.floor(bias_f * np.exp2(acc_frac.astype(np.float64)) + 0.5)
    bias = bias.astype(np.int64)
    shift = tuple(int(f) for f in acc_frac - out.frac)
    lo_acc, hi_acc = accumulator_bounds(q, bias, x)
    acc_bits = bits_for_range(int(lo_acc.min()), int(hi_acc.max()))
    if acc_bits + max(0, -min(shift)) > 62:
        raise UnsupportedError(
            f"{main.op} {main.name!r}: accumulator of {acc_bits} bits shifted left by "
            f"{-min(shift)} exceeds 62 bits; lower the bit widths"
        )
    common = {"activation": _act_name(u.activation), "lo": lo, "hi": hi, "weight": q,
              "bias": bias, "w_frac": tuple(int(f) for f in fracs), "shift": shift,
              "w_bits": w_bits, "acc_bits": acc_bits}
    if isinstance(main, Conv2d):
        layer: QLayer = QConv(main.name, main.inputs, u.output, stride=main.stride,
                              padding=main.padding, dilation=main.dilation, groups=main.groups,
                              **common)
    else:
        layer = QDense(main.name, main.inputs, u.output, **common)
    real_w = q.astype(np.float64) * np.exp2(-fracs.astype(np.float64)).reshape(
        (-1,) + (1,) * (w.ndim - 1))
    err = float(np.linalg.norm(real_w - w) / max(np.linalg.norm(w), 1e-30))
    info = {"layer": main.name, "op": layer.op, "out": out.describe(), "w_bits": w_bits,
            "acc_bits": acc_bits, "weight_rel_error": err, **({"note": note} if note else {})}
    return layer, info
