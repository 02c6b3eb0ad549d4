"""The quantized graph ("shape description"): integer layers the hardware implements exactly.

Contract (DESIGN.md, "Integer arithmetic contract")
-------------------------------------------------
* Every tensor is a `QTensor`: shape ``(H, W, C)``, bit width ``bits`` (2..16), signedness and
  ``frac`` fractional bits; its real value is ``q * 2**-frac`` with ``q`` an integer in
  ``[qmin, qmax]``.
* Weighted layers (`QConv`, `QDense`) hold integer weights with one ``frac`` per output channel
  (``w_frac``), an integer bias at the accumulator scale ``2**-(in.frac + w_frac[c])``, the
  accumulator width ``acc_bits`` proved from the actual weights, and the per-channel requantize
  shift ``shift[c] = in.frac + w_frac[c] - out.frac``.
* Requantization (`requantize` in `accelgen.golden`): shift right with round half up (or left,
  exactly, when the shift is negative), then clamp to ``[lo, hi]``: the output range of
  ``out``, narrowed by a fused ReLU / ReLU6 / Clip.
* The graph ends at integer logits; `host_softmax` records that the host applies a softmax.

A `QuantizedGraph` is saved as a folder ``NAME.accel/`` with ``graph.json`` (human-readable,
versioned) and ``weights.npz`` (integer arrays). `load` validates everything and reports a
corrupt, truncated or inconsistent folder as one `AccelFileError` line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from accelgen.errors import AccelgenError, ShapeError
from accelgen.ir import Padding, Pair, Shape, window_output_size

SCHEMA_VERSION = 1
MIN_BITS, MAX_BITS = 2, 16


class AccelFileError(AccelgenError):
    """A saved shape description that is missing, corrupt, truncated or inconsistent."""


def _frozen(a: np.ndarray, dtype: type) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class QTensor:
    """An integer feature map: real value = q * 2**-frac, q in [qmin, qmax]."""

    name: str
    shape: Shape
    bits: int
    signed: bool
    frac: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ShapeError(
                f"tensor {self.name!r}: bit width {self.bits!r} is outside {MIN_BITS}..{MAX_BITS}"
            )
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ShapeError(f"tensor {self.name!r}: shape {self.shape!r} is not (H, W, C)")
        if not -64 <= self.frac <= 64:
            raise ShapeError(f"tensor {self.name!r}: fractional bits {self.frac!r} out of range")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def scale(self) -> float:
        return 2.0 ** -self.frac

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Real values -> codes: round half up, saturate (the host's input quantizer)."""
        q = np.floor(np.asarray(x, np.float64) * 2.0**self.frac + 0.5)
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(q, np.float64) * 2.0 ** -self.frac

    def describe(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.bits}.f{self.frac}"


ACTIVATIONS = ("none", "relu", "relu6", "clip")


@dataclass(frozen=True, eq=False)
class QLayer:
    """An integer layer: reads `inputs`, writes `output` (tensor names)."""

    name: str
    inputs: tuple[str, ...]
    output: str

    op: ClassVar[str] = "qlayer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))

    @property
    def params(self) -> int:
        return 0

    def macs(self, tensors: Mapping[str, QTensor]) -> int:
        return 0

    def arrays(self) -> dict[str, np.ndarray]:
        """Large integer arrays, saved in weights.npz."""
        return {}

    def fields(self) -> dict[str, Any]:
        """JSON-able scalar fields (everything but `arrays`)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in self.arrays():
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True, eq=False)
class _Requantizing(QLayer):
    """A layer whose result is requantized: clamp bounds and the fused activation."""

    activation: str = "none"
    lo: int = 0
    hi: int = 0

    def _check_activation(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ShapeError(f"{self.op} {self.name!r}: activation {self.activation!r}")
        if self.lo > self.hi:
            raise ShapeError(f"{self.op} {self.name!r}: clamp [{self.lo}, {self.hi}] is empty")


@dataclass(frozen=True, eq=False)
class QConv(_Requantizing):
    """Integer 2-D convolution (grouped, depthwise) with fused requantize + activation.

    `weight` is ``(C_out, kh, kw, C_in/groups)`` int, `w_frac`, `shift` per output channel,
    `bias` int64 at the accumulator scale.
    """

    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1, 1), np.int64))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    w_frac: tuple[int, ...] = (0,)
    shift: tuple[int, ...] = (0,)
    w_bits: int = 8
    acc_bits: int = 32
    stride: Pair = (1, 1)
    padding: Padding = (0, 0, 0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    # reserved for the pruning and sparsity issues
    pruned_channels: tuple[int, ...] | None = None
    sparsity: float | None = None

    op: ClassVar[str] = "QConv"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "weight", _frozen(self.weight, np.int64))
        object.__setattr__(self, "bias", _frozen(self.bias, np.int64))
        for name in ("w_frac", "shift", "stride", "padding", "dilation"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self._check_activation()
        c_out = self.weight.shape[0]
        if self.weight.ndim != 4 or self.bias.shape != (c_out,):
            raise ShapeError(f"QConv {self.name!r}: weight {self.weight.shape} / bias "
                             f"{self.bias.shape} are inconsistent")
        if len(self.w_frac) != c_out or len(self.shift) != c_out:
            raise ShapeError(f"QConv {self.name!r}: w_frac/shift need {c_out} entries")
        if not MIN_BITS <= self.w_bits <= MAX_BITS:
            raise ShapeError(f"QConv {self.name!r}: weight bit width {self.w_bits!r}")
        wmax = (1 << (self.w_bits - 1)) - 1
        if self.weight.size and (self.weight.max() > wmax or self.weight.min() < -wmax - 1):
            raise ShapeError(f"QConv {self.name!r}: weights exceed {self.w_bits} bits")
        if self.groups < 1 or c_out % self.groups:
            raise ShapeError(f"QConv {self.name!r}: groups={self.groups!r}")

    @property
    def kernel(self) -> Pair:
        return (int(self.weight.shape[1]), int(self.weight.shape[2]))

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    def in_channels(self) -> int:
        return int(self.weight.shape[3]) * self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.weight.shape[3] == 1

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.groups if self.is_depthwise else 1

    @property
    def is_pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.groups == 1

    @property
    def kind(self) -> str:
        if self.is_depthwise:
            return "depthwise"
        if self.is_pointwise:
            return "pointwise"
        return "grouped" if self.groups > 1 else "conv"

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    def macs(self, tensors: Mapping[str, QTensor]) -> int:
        oh, ow, co = tensors[self.output].shape
        return oh * ow * co * int(np.prod(self.weight.shape[1:]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(frozen=True, eq=False)
class QDense(_Requantizing):
    """Integer dense layer on the input flattened in (H, W, C) order; weight (C_out, K)."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.int64))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    w_frac: tuple[int, ...] = (0,)
    shift: tuple[int, ...] = (0,)
    w_bits: int = 8
    acc_bits: int = 32
    pruned_channels: tuple[int, ...] | None = None
    sparsity: float | None = None

    op: ClassVar[str] = "QDense"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "weight", _frozen(self.weight, np.int64))
        object.__setattr__(self, "bias", _frozen(self.bias, np.int64))
        object.__setattr__(self, "w_frac", tuple(int(v) for v in self.w_frac))
        object.__setattr__(self, "shift", tuple(int(v) for v in self.shift))
        self._check_activation()
        c_out = self.weight.shape[0]
        if self.weight.ndim != 2 or self.bias.shape != (c_out,):
            raise ShapeError(f"QDense {self.name!r}: weight/bias shapes are inconsistent")
        if len(self.w_frac) != c_out or len(self.shift) != c_out:
            raise ShapeError(f"QDense {self.name!r}: w_frac/shift need {c_out} entries")
        wmax = (1 << (self.w_bits - 1)) - 1
        if self.weight.size and (self.weight.max() > wmax or self.weight.min() < -wmax - 1):
            raise ShapeError(f"QDense {self.name!r}: weights exceed {self.w_bits} bits")

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    def macs(self, tensors: Mapping[str, QTensor]) -> int:
        return int(self.weight.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(frozen=True, eq=False)
class QMaxPool(QLayer):
    """Integer max over each window (padding never wins); output keeps the input's format."""

    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Padding = (0, 0, 0, 0)
    dilation: Pair = (1, 1)
    ceil_mode: bool = False
    op: ClassVar[str] = "QMaxPool"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("kernel", "stride", "padding", "dilation"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


@dataclass(frozen=True, eq=False)
class QAvgPool(QLayer):
    """Integer mean over each window: ``floor((2*sum + n) / (2*n))`` (sum/n rounded half up).

    `n` is the number of counted taps of the window (see `AvgPool2d`); the output keeps the
    input's format.
    """

    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Padding = (0, 0, 0, 0)
    dilation: Pair = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = False
    op: ClassVar[str] = "QAvgPool"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("kernel", "stride", "padding", "dilation"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


@dataclass(frozen=True, eq=False)
class QGlobalAvgPool(QLayer):
    """Integer mean over all pixels per channel, rounded half up (as `QAvgPool`)."""

    op: ClassVar[str] = "QGlobalAvgPool"


@dataclass(frozen=True, eq=False)
class QGlobalMaxPool(QLayer):
    op: ClassVar[str] = "QGlobalMaxPool"


@dataclass(frozen=True, eq=False)
class QAdd(_Requantizing):
    """Residual add: both inputs left-shifted to the finer scale ``2**-frac_max`` (exact), added,
    then requantized by `shift` = frac_max - out.frac (round half up, clamp, fused activation).

    `align` holds the left shift of each input (``frac_max - in.frac``).
    """

    align: tuple[int, int] = (0, 0)
    shift: int = 0
    op: ClassVar[str] = "QAdd"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "align", tuple(int(v) for v in self.align))
        self._check_activation()
        if min(self.align) < 0:
            raise ShapeError(f"QAdd {self.name!r}: negative alignment {self.align!r}")


@dataclass(frozen=True, eq=False)
class QConcat(_Requantizing):
    """Channel concatenation; input ``i`` is requantized by `shifts[i]` (frac_i - out.frac)."""

    shifts: tuple[int, ...] = ()
    op: ClassVar[str] = "QConcat"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "shifts", tuple(int(v) for v in self.shifts))
        self._check_activation()
        if len(self.shifts) != len(self.inputs):
            raise ShapeError(f"QConcat {self.name!r}: one shift per input")


@dataclass(frozen=True, eq=False)
class QClamp(_Requantizing):
    """A standalone activation or format change: requantize by `shift`, clamp to [lo, hi]."""

    shift: int = 0
    op: ClassVar[str] = "QClamp"


@dataclass(frozen=True, eq=False)
class QPad(QLayer):
    """Constant padding of H and W with the integer `value`."""

    padding: Padding = (0, 0, 0, 0)
    value: int = 0
    op: ClassVar[str] = "QPad"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "padding", tuple(int(v) for v in self.padding))


QLAYER_TYPES: dict[str, type[QLayer]] = {
    cls.op: cls
    for cls in (QConv, QDense, QMaxPool, QAvgPool, QGlobalAvgPool, QGlobalMaxPool, QAdd, QConcat,
                QClamp, QPad)
}


@dataclass(frozen=True, eq=False)
class QInput:
    """A graph input: the host quantizes the model-layout input into tensor `tensor`.

    `layout` (IR shape) holds each IR element's flat position in the model's own layout. A QDQ
    model's integer input holds codes: `codes_scale` / `codes_zero_point` turn them into real
    values before the host quantizes them into `tensor`'s format.
    """

    tensor: str
    onnx_name: str
    onnx_shape: tuple[int, ...]
    layout: np.ndarray
    codes_scale: float | None = None
    codes_zero_point: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", _frozen(self.layout, np.int64))
        object.__setattr__(self, "onnx_shape", tuple(int(d) for d in self.onnx_shape))

    def to_real_ir(self, x: np.ndarray) -> np.ndarray:
        """Model-layout batch (N, *onnx_shape) -> real-valued IR batch (N, H, W, C)."""
        x = np.asarray(x)
        if x.shape == self.onnx_shape:
            x = x[None]
        if x.shape[1:] != self.onnx_shape:
            raise AccelgenError(
                f"input {self.onnx_name!r} has shape {x.shape!r}; the model expects "
                f"{self.onnx_shape!r} or (N, *{self.onnx_shape!r})"
            )
        n = x.shape[0]
        flat = x.reshape(n, -1).astype(np.float64)
        if self.codes_scale is not None:
            flat = (flat - self.codes_zero_point) * self.codes_scale
        return flat[:, self.layout.reshape(-1)].reshape((n, *self.layout.shape))


@dataclass(frozen=True, eq=False)
class QOutput:
    """A graph output: integer tensor `tensor`; `layout` maps model positions to IR positions.

    `host_softmax` is set when the model applies a softmax the accelerator leaves to the host.
    """

    tensor: str
    onnx_name: str
    onnx_shape: tuple[int, ...]
    layout: np.ndarray
    host_softmax: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", _frozen(self.layout, np.int64))
        object.__setattr__(self, "onnx_shape", tuple(int(d) for d in self.onnx_shape))


@dataclass(frozen=True, eq=False)
class QuantizedGraph:
    """Integer layers in topological order over `QTensor`s, plus what made them (`meta`)."""

    name: str
    inputs: tuple[QInput, ...]
    outputs: tuple[QOutput, ...]
    tensors: Mapping[str, QTensor]
    layers: tuple[QLayer, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "tensors", dict(self.tensors))
        object.__setattr__(self, "meta", dict(self.meta))
        validate(self)

    def __iter__(self) -> Iterator[QLayer]:
        return iter(self.layers)

    def layer(self, name: str) -> QLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def producer(self, tensor: str) -> QLayer | None:
        return next((la for la in self.layers if la.output == tensor), None)

    @property
    def params(self) -> int:
        return sum(la.params for la in self.layers)

    @property
    def macs(self) -> int:
        return sum(la.macs(self.tensors) for la in self.layers)

    def weight_bits_total(self) -> int:
        """Bits of all weights at their widths (the weight memory image, biases excluded)."""
        return sum(
            la.weight.size * la.w_bits for la in self.layers if isinstance(la, (QConv, QDense))
        )

    def bias_bits_total(self) -> int:
        return sum(
            la.bias.size * la.acc_bits for la in self.layers if isinstance(la, (QConv, QDense))
        )


# --------------------------------------------------------------------------------------------
# validation: everything a hardware generator relies on, checked once
# --------------------------------------------------------------------------------------------


def _out_shape_of(layer: QLayer, ins: list[QTensor]) -> Shape:
    h, w, c = ins[0].shape
    if isinstance(layer, QConv):
        oh, ow = window_output_size((h, w), layer.kernel, layer.stride, layer.padding,
                                    layer.dilation)
        return (oh, ow, layer.out_channels)
    if isinstance(layer, QDense):
        return (1, 1, int(layer.weight.shape[0]))
    if isinstance(layer, (QMaxPool, QAvgPool)):
        oh, ow = window_output_size((h, w), layer.kernel, layer.stride, layer.padding,
                                    layer.dilation, layer.ceil_mode)
        return (oh, ow, c)
    if isinstance(layer, (QGlobalAvgPool, QGlobalMaxPool)):
        return (1, 1, c)
    if isinstance(layer, QConcat):
        return (h, w, sum(t.shape[2] for t in ins))
    if isinstance(layer, QPad):
        t, l_, b, r = layer.padding
        return (h + t + b, w + l_ + r, c)
    return (h, w, c)


def validate(qg: QuantizedGraph) -> None:
    """Check shapes, formats and arithmetic fields; raise ShapeError naming the first fault."""
    defined = set()
    for qi in qg.inputs:
        if qi.tensor not in qg.tensors:
            raise ShapeError(f"input {qi.onnx_name!r} reads unknown tensor {qi.tensor!r}")
        if qi.layout.shape != qg.tensors[qi.tensor].shape:
            raise ShapeError(f"input {qi.onnx_name!r}: layout {qi.layout.shape} != tensor shape")
        defined.add(qi.tensor)
    names = set()
    for layer in qg.layers:
        where = f"{layer.op} {layer.name!r}"
        if layer.name in names:
            raise ShapeError(f"two layers are named {layer.name!r}")
        names.add(layer.name)
        for t in (*layer.inputs, layer.output):
            if t not in qg.tensors:
                raise ShapeError(f"{where}: tensor {t!r} is not declared")
        missing = [t for t in layer.inputs if t not in defined]
        if missing:
            raise ShapeError(f"{where} reads {missing[0]!r} before anything defines it")
        if layer.output in defined:
            raise ShapeError(f"{where}: tensor {layer.output!r} is written twice")
        ins = [qg.tensors[t] for t in layer.inputs]
        out = qg.tensors[layer.output]
        expected = _out_shape_of(layer, ins)
        if expected != out.shape:
            raise ShapeError(f"{where}: output shape {out.shape} should be {expected}")
        if isinstance(layer, (QConv, QDense)):
            _validate_weighted(layer, ins[0], out, where)
        if isinstance(layer, QConv):
            c_in = ins[0].shape[2]
            if layer.weight.shape[3] * layer.groups != c_in:
                raise ShapeError(f"{where}: weight {layer.weight.shape} and groups={layer.groups}"
                                 f" do not match {c_in} input channels")
        if isinstance(layer, QDense) and layer.weight.shape[1] != ins[0].size:
            raise ShapeError(f"{where}: weight {layer.weight.shape} != flattened input "
                             f"{ins[0].size}")
        if isinstance(layer, (QMaxPool, QAvgPool, QGlobalAvgPool, QGlobalMaxPool, QPad)) and (
            (out.bits, out.signed, out.frac) != (ins[0].bits, ins[0].signed, ins[0].frac)
        ):
            raise ShapeError(f"{where}: output format {out.describe()} must equal its input's "
                             f"{ins[0].describe()}")
        if isinstance(layer, QAdd):
            if len(ins) != 2 or ins[0].shape != ins[1].shape:
                raise ShapeError(f"{where}: needs two inputs of one shape")
            fmax = max(t.frac for t in ins)
            if layer.align != tuple(fmax - t.frac for t in ins) or layer.shift != fmax - out.frac:
                raise ShapeError(f"{where}: align {layer.align} / shift {layer.shift} do not "
                                 f"follow from the formats")
        in_range = out.qmin <= getattr(layer, "lo", 0) <= getattr(layer, "hi", 0) <= out.qmax
        if isinstance(layer, _Requantizing) and not in_range:
            raise ShapeError(f"{where}: clamp [{layer.lo}, {layer.hi}] outside "
                             f"{out.describe()} [{out.qmin}, {out.qmax}]")
        defined.add(layer.output)
    for qo in qg.outputs:
        if qo.tensor not in defined:
            raise ShapeError(f"output {qo.onnx_name!r} reads undefined {qo.tensor!r}")
        if qo.layout.size and qo.layout.max() >= qg.tensors[qo.tensor].size:
            raise ShapeError(f"output {qo.onnx_name!r}: layout indexes past the tensor")


def accumulator_bounds(weight: np.ndarray, bias: np.ndarray, x: QTensor) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Exact per-output-channel min and max of ``sum(x * w) + bias`` over all inputs in x's range.

    Each term is maximised independently (x at qmax where w > 0, at qmin where w < 0), and every
    input tap of a dense or convolution layer can be set independently, so these bounds are
    attained by an adversarial input (zero padding can only shrink them).
    """
    w = weight.reshape(weight.shape[0], -1).astype(np.int64)
    hi = np.where(w > 0, w * x.qmax, w * x.qmin).sum(axis=1) + bias
    lo = np.where(w > 0, w * x.qmin, w * x.qmax).sum(axis=1) + bias
    return lo, hi


def bits_for_range(lo: int, hi: int) -> int:
    """Smallest two's complement width holding every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def _validate_weighted(layer: QConv | QDense, x: QTensor, out: QTensor, where: str) -> None:
    fracs = np.asarray(layer.w_frac)
    if tuple(int(x.frac + f - out.frac) for f in fracs) != tuple(layer.shift):
        raise ShapeError(f"{where}: shifts {layer.shift} != in.frac + w_frac - out.frac")
    lo, hi = accumulator_bounds(layer.weight, layer.bias, x)
    need = bits_for_range(int(lo.min(initial=0)), int(hi.max(initial=0)))
    if layer.acc_bits < need:
        raise ShapeError(f"{where}: accumulator of {layer.acc_bits} bits can overflow (the "
                         f"weights need {need})")
    if layer.acc_bits > 62:
        raise ShapeError(f"{where}: accumulator of {layer.acc_bits} bits is beyond 62")


# --------------------------------------------------------------------------------------------
# the folder format
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def to_json(qg: QuantizedGraph) -> dict[str, Any]:
    return {
        "schema": "accelgen.quantized-graph",
        "schema_version": SCHEMA_VERSION,
        "name": qg.name,
        "inputs": [{"tensor": i.tensor, "onnx_name": i.onnx_name,
                    "onnx_shape": list(i.onnx_shape), "codes_scale": i.codes_scale,
                    "codes_zero_point": i.codes_zero_point} for i in qg.inputs],
        "outputs": [{"tensor": o.tensor, "onnx_name": o.onnx_name,
                     "onnx_shape": list(o.onnx_shape), "host_softmax": o.host_softmax}
                    for o in qg.outputs],
        "tensors": [{"name": t.name, "shape": list(t.shape), "bits": t.bits, "signed": t.signed,
                     "frac": t.frac} for t in qg.tensors.values()],
        "layers": [{"op": la.op, **la.fields()} for la in qg.layers],
        "totals": {"params": qg.params, "macs": qg.macs,
                   "weight_bytes": (qg.weight_bits_total() + 7) // 8},
        "meta": qg.meta,
    }


def save(qg: QuantizedGraph, folder: str | Path, extra: Mapping[str, str] | None = None) -> Path:
    """Write ``folder`` (graph.json + weights.npz, plus `extra` text files such as report.json)
    atomically: a folder that exists is complete."""
    import shutil
    import tempfile

    folder = Path(folder)
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise AccelgenError(f"output folder {str(parent)!r} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        arrays = {}
        for i, qi in enumerate(qg.inputs):
            arrays[f"input{i}/layout"] = qi.layout
        for i, qo in enumerate(qg.outputs):
            arrays[f"output{i}/layout"] = qo.layout
        for layer in qg.layers:
            for key, arr in layer.arrays().items():
                arrays[f"{layer.name}/{key}"] = arr
        np.savez(tmp / "weights.npz", **arrays)
        (tmp / "graph.json").write_text(json.dumps(to_json(qg), indent=1, default=_jsonable))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load(folder: str | Path) -> QuantizedGraph:
    """Read and validate a saved shape description; any fault is one `AccelFileError`."""
    folder = Path(folder)
    where = str(folder)
    if not folder.is_dir():
        raise AccelFileError(f"{where!r} is not a shape description folder (NAME.accel/)")
    try:
        doc = json.loads((folder / "graph.json").read_text())
    except FileNotFoundError:
        raise AccelFileError(f"{where!r} has no graph.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AccelFileError(f"{where!r}: graph.json is corrupt or truncated ({err})") from None
    if not isinstance(doc, dict) or doc.get("schema") != "accelgen.quantized-graph":
        raise AccelFileError(f"{where!r}: graph.json is not an accelgen shape description")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise AccelFileError(
            f"{where!r}: schema version {version!r}, this accelgen reads {SCHEMA_VERSION}; "
            f"re-run `accelgen compress`"
        )
    try:
        with np.load(folder / "weights.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise AccelFileError(f"{where!r} has no weights.npz") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise AccelFileError(f"{where!r}: weights.npz is corrupt or truncated ({err})") from None
    try:
        return _from_json(doc, arrays)
    except AccelgenError as err:
        raise AccelFileError(f"{where!r} is inconsistent: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise AccelFileError(
            f"{where!r}: graph.json is malformed ({type(err).__name__}: {err})"
        ) from None


def _array(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in arrays:
        raise AccelFileError(f"weights.npz lacks {key!r}")
    return arrays[key]


def _from_json(doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> QuantizedGraph:
    tensors = {
        t["name"]: QTensor(t["name"], tuple(t["shape"]), int(t["bits"]), bool(t["signed"]),
                           int(t["frac"]))
        for t in doc["tensors"]
    }
    inputs = tuple(
        QInput(i["tensor"], i["onnx_name"], tuple(i["onnx_shape"]),
               _array(arrays, f"input{k}/layout"), i.get("codes_scale"),
               float(i.get("codes_zero_point", 0.0)))
        for k, i in enumerate(doc["inputs"])
    )
    outputs = tuple(
        QOutput(o["tensor"], o["onnx_name"], tuple(o["onnx_shape"]),
                _array(arrays, f"output{k}/layout"), bool(o.get("host_softmax", False)))
        for k, o in enumerate(doc["outputs"])
    )
    layers = []
    for entry in doc["layers"]:
        entry = dict(entry)
        op = entry.pop("op")
        cls = QLAYER_TYPES.get(op)
        if cls is None:
            raise AccelFileError(f"unknown layer op {op!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(entry) - known
        if unknown:
            raise AccelFileError(
                f"layer {entry.get('name')!r} has unknown fields {sorted(unknown)}"
            )
        for f in dataclasses.fields(cls):
            if f.name in ("weight", "bias") and f.name not in entry:
                entry[f.name] = _array(arrays, f"{entry['name']}/{f.name}")
            elif isinstance(entry.get(f.name), list):
                entry[f.name] = tuple(entry[f.name])
        layers.append(cls(**entry))
    return QuantizedGraph(
        name=doc["name"], inputs=inputs, outputs=outputs, tensors=tensors, layers=tuple(layers),
        meta=doc.get("meta", {}),
    )
