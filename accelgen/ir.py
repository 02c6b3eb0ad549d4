"""The float IR: a typed, validated DAG of CNN layers on channel-last feature maps.

Contract
--------
* Every tensor is a feature map of shape ``(H, W, C)`` (channel-last, no batch axis). A vector
  (the output of a dense layer or a global pool) is ``(1, 1, C)``. Channel-last is what the
  hardware streams (one pixel, all its channels), so the IR uses it throughout; the frontend
  records how each graph input and output maps to the model's own layout (`GraphInput.layout`,
  `GraphOutput.layout`).
* A `Graph` lists its layers in topological order; each layer has one output tensor and names
  its input tensors. Residual adds and concatenations are real multi-input layers.
* Layers are frozen dataclasses. Weights are read-only float32 numpy arrays:
  `Conv2d.weight` is ``(C_out, kh, kw, C_in / groups)``, `Dense.weight` is ``(C_out, H*W*C)``
  with the input flattened in ``(H, W, C)`` order.
* Tensors carry annotations: `Tensor.quant` holds quantization parameters read from a QDQ or
  QONNX model; weights carry theirs on the layer (`Conv2d.weight_quant`). Later passes add more
  (bit widths, pruning masks) through `dataclasses.replace`.
* Constructing a layer or a graph validates it: shapes must follow the layer's shape rule,
  every input must be defined before it is used, names must be unique. A violation raises
  `ShapeError` naming the layer and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from accelgen.errors import ShapeError

Shape = tuple[int, int, int]
"""A feature-map shape ``(H, W, C)``."""

Pair = tuple[int, int]
Padding = tuple[int, int, int, int]
"""Zero padding ``(top, left, bottom, right)``."""


def _frozen_array(a: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


def _check_shape(what: str, shape: Sequence[int]) -> Shape:
    if len(shape) != 3 or any((not isinstance(d, (int, np.integer))) or d < 1 for d in shape):
        raise ShapeError(f"{what}: {tuple(shape)!r} is not a feature-map shape (H, W, C >= 1)")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _check_pair(what: str, value: Sequence[int], minimum: int) -> Pair:
    if len(value) != 2 or any(int(v) < minimum for v in value):
        raise ShapeError(f"{what} must be two integers >= {minimum}, not {tuple(value)!r}")
    return (int(value[0]), int(value[1]))


def _check_padding(what: str, value: Sequence[int]) -> Padding:
    if len(value) != 4 or any(int(v) < 0 for v in value):
        raise ShapeError(f"{what} must be (top, left, bottom, right) >= 0, not {tuple(value)!r}")
    return (int(value[0]), int(value[1]), int(value[2]), int(value[3]))


# --------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------

RoundingMode = Literal["half_even", "half_up", "floor", "ceil", "toward_zero"]


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization read from a model: ``real = (q - zero_point) * scale``.

    `scale` and `zero_point` hold one value (per tensor) or one per channel (`per_channel`: the
    IR channel axis of an activation, the output-channel axis of a weight). ``q`` lies in
    ``[qmin, qmax]`` for `bits` and `signed` (`narrow` drops the most negative code, as QONNX's
    ``narrow`` and symmetric int8 weights do). `rounding` is how real values were rounded to
    codes (ONNX QuantizeLinear and QONNX ``ROUND`` round half to even). `source` names where the
    parameters came from (``"qdq"`` or ``"qonnx"``).
    """

    scale: tuple[float, ...]
    zero_point: tuple[float, ...]
    bits: int
    signed: bool
    narrow: bool = False
    per_channel: bool = False
    rounding: RoundingMode = "half_even"
    source: str = "qdq"

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 32:
            raise ShapeError(f"quantization bit width {self.bits!r} is outside 1..32")
        if len(self.scale) != len(self.zero_point) and len(self.zero_point) != 1:
            raise ShapeError(
                f"quantization has {len(self.scale)} scales but {len(self.zero_point)} zero points"
            )
        if not self.per_channel and len(self.scale) != 1:
            raise ShapeError(f"per-tensor quantization needs one scale, not {len(self.scale)}")
        if any(not (s > 0 and math.isfinite(s)) for s in self.scale):
            raise ShapeError(f"quantization scales must be positive and finite: {self.scale!r}")

    @property
    def qmin(self) -> int:
        if self.signed:
            return -(1 << (self.bits - 1)) + (1 if self.narrow else 0)
        return 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1 - (
            1 if self.narrow else 0
        )

    def _broadcast(self, values: tuple[float, ...], ndim: int, axis: int) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float32)
        if not self.per_channel or arr.size == 1:
            return arr.reshape(()) if arr.size == 1 else arr
        shape = [1] * ndim
        shape[axis] = arr.size
        return arr.reshape(shape)

    def quantize(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        """Real values to integer codes, in float32 arithmetic as ONNX runtimes do it.

        ONNX QuantizeLinear rounds ``x / scale`` and then adds the (integer) zero point; QONNX
        ``Quant`` adds its (possibly fractional) zero point before rounding. With round half to
        even the two orders differ at ties, so each source keeps its own.
        """
        scale = self._broadcast(self.scale, x.ndim, axis)
        zp = self._broadcast(self.zero_point, x.ndim, axis)
        y = np.asarray(x, dtype=np.float32) / scale
        rounder = _ROUNDERS[self.rounding]
        y = rounder(y + zp) if self.source == "qonnx" else rounder(y) + zp
        return np.clip(y, self.qmin, self.qmax)

    def dequantize(self, q: np.ndarray, axis: int = -1) -> np.ndarray:
        scale = self._broadcast(self.scale, q.ndim, axis)
        zp = self._broadcast(self.zero_point, q.ndim, axis)
        return ((np.asarray(q, dtype=np.float32) - zp) * scale).astype(np.float32)

    def fake_quantize(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        """Quantize then dequantize: what a QDQ pair does to a float tensor."""
        return self.dequantize(self.quantize(x, axis), axis)

    def describe(self) -> str:
        kind = "per-channel" if self.per_channel else f"scale {self.scale[0]:.4g}"
        zp = "" if not any(self.zero_point) else f" zp {self.zero_point[0]:g}"
        sign = "int" if self.signed else "uint"
        return f"{sign}{self.bits} {kind}{zp} ({self.source})"


def _round_half_up(y: np.ndarray) -> np.ndarray:
    return np.floor(y + np.float32(0.5))


_ROUNDERS = {
    "half_even": np.rint,
    "half_up": _round_half_up,
    "floor": np.floor,
    "ceil": np.ceil,
    "toward_zero": np.trunc,
}


@dataclass(frozen=True)
class Tensor:
    """A named feature map with its shape and annotations."""

    name: str
    shape: Shape
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _check_shape(f"tensor {self.name!r}", self.shape))

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Layer:
    """One operation: reads `inputs` (tensor names, shapes `in_shapes`), writes `output`.

    Subclasses define `op` (a short name), `infer_shape` (the shape rule the constructor
    enforces), and where they have any, `params` and `macs`.
    """

    name: str
    inputs: tuple[str, ...]
    output: str
    in_shapes: tuple[Shape, ...]
    out_shape: Shape

    op: ClassVar[str] = "layer"
    arity: ClassVar[int | None] = 1
    host_side: ClassVar[bool] = False
    """True for layers the accelerator does not run (the host applies them to its output)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(
            self,
            "in_shapes",
            tuple(_check_shape(f"{self.op} {self.name!r} input", s) for s in self.in_shapes),
        )
        object.__setattr__(
            self, "out_shape", _check_shape(f"{self.op} {self.name!r} output", self.out_shape)
        )
        if len(self.inputs) != len(self.in_shapes):
            raise ShapeError(
                f"{self.op} {self.name!r}: {len(self.inputs)} inputs but "
                f"{len(self.in_shapes)} input shapes"
            )
        if self.arity is not None and len(self.inputs) != self.arity:
            raise ShapeError(
                f"{self.op} {self.name!r} takes {self.arity} input(s), not {len(self.inputs)}"
            )
        if not self.inputs:
            raise ShapeError(f"{self.op} {self.name!r} has no inputs")
        self._validate()
        expected = self.infer_shape()
        if expected != self.out_shape:
            raise ShapeError(
                f"{self.op} {self.name!r}: output shape {self.out_shape!r} does not follow "
                f"from its inputs {self.in_shapes!r} (expected {expected!r})"
            )

    # -- the per-op contract ------------------------------------------------------------
    def _validate(self) -> None:
        """Check the op's own fields (called before `infer_shape`)."""

    def infer_shape(self) -> Shape:
        return self.in_shapes[0]

    @property
    def params(self) -> int:
        """Number of weight and bias values."""
        return 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates per inference."""
        return 0

    @property
    def in_shape(self) -> Shape:
        return self.in_shapes[0]

    def describe(self) -> str:
        """Short attribute summary for tables."""
        return ""

    def replace(self, **changes: object) -> Layer:
        return dataclasses.replace(self, **changes)


def _pool_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    span = dilation * (kernel - 1) + 1
    num = size + pad - span
    if num < 0:
        return 0
    out = (-(-num // stride) if ceil else num // stride) + 1
    return out


def window_output_size(
    hw: Pair, kernel: Pair, stride: Pair, padding: Padding, dilation: Pair, ceil_mode: bool = False
) -> Pair:
    """Output (H, W) of a sliding window (conv or pool), with ONNX's ceil-mode rule.

    In ceil mode a last window that would start entirely inside the bottom/right padding is
    dropped, as ONNX (and PyTorch) do.
    """
    out = []
    for axis in range(2):
        size = hw[axis]
        pad_lo, pad_hi = padding[axis], padding[axis + 2]
        n = _pool_out(size, kernel[axis], stride[axis], pad_lo + pad_hi, dilation[axis], ceil_mode)
        if ceil_mode and n > 0 and (n - 1) * stride[axis] >= size + pad_lo:
            n -= 1
        out.append(n)
    return (out[0], out[1])


@dataclass(frozen=True, eq=False)
class _Windowed(Layer):
    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Padding = (0, 0, 0, 0)
    dilation: Pair = (1, 1)

    def _validate(self) -> None:
        object.__setattr__(self, "kernel", _check_pair(f"{self.name!r} kernel", self.kernel, 1))
        object.__setattr__(self, "stride", _check_pair(f"{self.name!r} stride", self.stride, 1))
        object.__setattr__(
            self, "dilation", _check_pair(f"{self.name!r} dilation", self.dilation, 1)
        )
        object.__setattr__(
            self, "padding", _check_padding(f"{self.name!r} padding", self.padding)
        )

    def _out_hw(self, ceil_mode: bool = False) -> Pair:
        h, w, _ = self.in_shape
        oh, ow = window_output_size(
            (h, w), self.kernel, self.stride, self.padding, self.dilation, ceil_mode
        )
        if oh < 1 or ow < 1:
            raise ShapeError(
                f"{self.op} {self.name!r}: kernel {self.kernel} (dilation {self.dilation}) does "
                f"not fit the padded input {h}x{w} (padding {self.padding})"
            )
        return oh, ow

    def _window_text(self) -> str:
        parts = [f"k{self.kernel[0]}x{self.kernel[1]}"]
        if self.stride != (1, 1):
            parts.append(f"s{self.stride[0]}x{self.stride[1]}")
        if any(self.padding):
            parts.append("p" + ",".join(map(str, self.padding)))
        if self.dilation != (1, 1):
            parts.append(f"d{self.dilation[0]}x{self.dilation[1]}")
        return " ".join(parts)


@dataclass(frozen=True, eq=False)
class Conv2d(_Windowed):
    """2-D convolution, grouped or depthwise (``groups == C_in``), with bias.

    ``weight[o, i, j, c]`` multiplies input channel ``g * C_in/groups + c`` of group
    ``g = o // (C_out/groups)`` at kernel tap ``(i, j)``.
    """

    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1, 1), np.float32))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    groups: int = 1
    weight_quant: QuantParams | None = None
    bias_quant: QuantParams | None = None

    op: ClassVar[str] = "Conv2d"

    def _validate(self) -> None:
        object.__setattr__(self, "weight", _frozen_array(self.weight))
        object.__setattr__(self, "bias", _frozen_array(self.bias))
        w = self.weight
        if w.ndim != 4:
            raise ShapeError(f"Conv2d {self.name!r}: weight must be 4-D, not {w.shape!r}")
        object.__setattr__(self, "kernel", (int(w.shape[1]), int(w.shape[2])))
        super()._validate()
        c_in = self.in_shape[2]
        c_out = w.shape[0]
        if self.groups < 1 or c_in % self.groups or c_out % self.groups:
            raise ShapeError(
                f"Conv2d {self.name!r}: groups={self.groups!r} must divide both input channels "
                f"({c_in}) and output channels ({c_out})"
            )
        if w.shape[3] != c_in // self.groups:
            raise ShapeError(
                f"Conv2d {self.name!r}: weight {w.shape!r} needs {c_in // self.groups} input "
                f"channels per group (input has {c_in}, groups={self.groups})"
            )
        if self.bias.shape != (c_out,):
            raise ShapeError(
                f"Conv2d {self.name!r}: bias shape {self.bias.shape!r} != ({c_out},)"
            )

    def infer_shape(self) -> Shape:
        oh, ow = self._out_hw()
        return (oh, ow, int(self.weight.shape[0]))

    @property
    def in_channels(self) -> int:
        return self.in_shape[2]

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group, more than one group (MobileNet's depthwise conv)."""
        return self.groups == self.in_channels and self.groups > 1

    @property
    def depth_multiplier(self) -> int:
        """Output channels per input channel of a depthwise conv (1 otherwise)."""
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

    @property
    def macs(self) -> int:
        oh, ow, co = self.out_shape
        return oh * ow * co * self.kernel[0] * self.kernel[1] * (self.in_channels // self.groups)

    def describe(self) -> str:
        text = f"{self.kind} {self._window_text()}"
        if self.groups > 1:
            text += f" g{self.groups}"
        if self.is_depthwise and self.depth_multiplier > 1:
            text += f" dm{self.depth_multiplier}"
        return text


@dataclass(frozen=True, eq=False)
class Dense(Layer):
    """Fully connected layer on the input flattened in ``(H, W, C)`` order; output (1, 1, N)."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    weight_quant: QuantParams | None = None
    bias_quant: QuantParams | None = None

    op: ClassVar[str] = "Dense"

    def _validate(self) -> None:
        object.__setattr__(self, "weight", _frozen_array(self.weight))
        object.__setattr__(self, "bias", _frozen_array(self.bias))
        h, w, c = self.in_shape
        if self.weight.ndim != 2 or self.weight.shape[1] != h * w * c:
            raise ShapeError(
                f"Dense {self.name!r}: weight {self.weight.shape!r} does not match the "
                f"flattened input {h}x{w}x{c} = {h * w * c}"
            )
        if self.bias.shape != (self.weight.shape[0],):
            raise ShapeError(
                f"Dense {self.name!r}: bias shape {self.bias.shape!r} != ({self.weight.shape[0]},)"
            )

    def infer_shape(self) -> Shape:
        return (1, 1, int(self.weight.shape[0]))

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    @property
    def macs(self) -> int:
        return int(self.weight.size)

    def describe(self) -> str:
        return f"{self.in_features}->{self.out_features}"


@dataclass(frozen=True, eq=False)
class MaxPool2d(_Windowed):
    """Max over each window; padding never wins (it counts as -inf)."""

    ceil_mode: bool = False
    op: ClassVar[str] = "MaxPool2d"

    def infer_shape(self) -> Shape:
        oh, ow = self._out_hw(self.ceil_mode)
        return (oh, ow, self.in_shape[2])

    def describe(self) -> str:
        return self._window_text() + (" ceil" if self.ceil_mode else "")


@dataclass(frozen=True, eq=False)
class AvgPool2d(_Windowed):
    """Mean over each window.

    The divisor is the number of window taps inside the input (`count_include_pad` False) or
    inside the padded input (`count_include_pad` True); the part of a ceil-mode window that
    hangs past the padded input never counts (ONNX semantics).
    """

    ceil_mode: bool = False
    count_include_pad: bool = False
    op: ClassVar[str] = "AvgPool2d"

    def infer_shape(self) -> Shape:
        oh, ow = self._out_hw(self.ceil_mode)
        return (oh, ow, self.in_shape[2])

    def describe(self) -> str:
        text = self._window_text() + (" ceil" if self.ceil_mode else "")
        return text + (" incl-pad" if self.count_include_pad and any(self.padding) else "")


@dataclass(frozen=True, eq=False)
class GlobalAvgPool(Layer):
    """Mean over all pixels of each channel: (H, W, C) -> (1, 1, C)."""

    op: ClassVar[str] = "GlobalAvgPool"

    def infer_shape(self) -> Shape:
        return (1, 1, self.in_shape[2])


@dataclass(frozen=True, eq=False)
class GlobalMaxPool(Layer):
    """Max over all pixels of each channel: (H, W, C) -> (1, 1, C)."""

    op: ClassVar[str] = "GlobalMaxPool"

    def infer_shape(self) -> Shape:
        return (1, 1, self.in_shape[2])


@dataclass(frozen=True, eq=False)
class Pad2d(Layer):
    """Constant padding of H and W (`padding` is (top, left, bottom, right))."""

    padding: Padding = (0, 0, 0, 0)
    value: float = 0.0
    op: ClassVar[str] = "Pad2d"

    def _validate(self) -> None:
        object.__setattr__(
            self, "padding", _check_padding(f"{self.name!r} padding", self.padding)
        )

    def infer_shape(self) -> Shape:
        h, w, c = self.in_shape
        top, left, bottom, right = self.padding
        return (h + top + bottom, w + left + right, c)

    def describe(self) -> str:
        return "p" + ",".join(map(str, self.padding)) + (f" v{self.value:g}" if self.value else "")


@dataclass(frozen=True, eq=False)
class Add(Layer):
    """Element-wise sum of two feature maps of the same shape (a residual connection)."""

    arity: ClassVar[int | None] = 2
    op: ClassVar[str] = "Add"

    def _validate(self) -> None:
        if self.in_shapes[0] != self.in_shapes[1]:
            raise ShapeError(
                f"Add {self.name!r}: input shapes {self.in_shapes[0]!r} and "
                f"{self.in_shapes[1]!r} differ"
            )


@dataclass(frozen=True, eq=False)
class Concat(Layer):
    """Concatenation along channels; all inputs share H and W."""

    arity: ClassVar[int | None] = None
    op: ClassVar[str] = "Concat"

    def _validate(self) -> None:
        hw = {s[:2] for s in self.in_shapes}
        if len(hw) != 1:
            raise ShapeError(f"Concat {self.name!r}: inputs differ in H, W: {self.in_shapes!r}")

    def infer_shape(self) -> Shape:
        h, w, _ = self.in_shapes[0]
        return (h, w, sum(s[2] for s in self.in_shapes))


@dataclass(frozen=True, eq=False)
class Relu(Layer):
    op: ClassVar[str] = "Relu"


@dataclass(frozen=True, eq=False)
class Clip(Layer):
    """Clamp to [`low`, `high`] (ReLU6 is Clip(0, 6); either bound may be infinite)."""

    low: float = -math.inf
    high: float = math.inf
    op: ClassVar[str] = "Clip"

    def _validate(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high):
            raise ShapeError(f"Clip {self.name!r}: bounds {self.low!r}, {self.high!r}")

    @property
    def is_relu6(self) -> bool:
        return self.low == 0.0 and self.high == 6.0

    def describe(self) -> str:
        return "relu6" if self.is_relu6 else f"[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True, eq=False)
class Softmax(Layer):
    """Softmax over the channels of each pixel (`over_all`: over the whole tensor).

    Host-side: the accelerator ends at the logits (and their argmax); the host applies this.
    """

    over_all: bool = False
    op: ClassVar[str] = "Softmax"
    host_side: ClassVar[bool] = True

    def describe(self) -> str:
        return "host-side" + (", over all" if self.over_all else "")


LAYER_TYPES: tuple[type[Layer], ...] = (
    Conv2d, Dense, MaxPool2d, AvgPool2d, GlobalAvgPool, GlobalMaxPool, Pad2d, Add, Concat, Relu,
    Clip, Softmax,
)


# --------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GraphInput:
    """A graph input: IR tensor `tensor`, fed from the model's input `onnx_name`.

    `onnx_shape` is the model's own shape without the batch axis; `layout` has the IR shape
    (H, W, C) and holds, for each IR element, its flat position in the model's layout. `dtype`
    is the model's element type (numpy name); integer inputs of a QDQ model are dequantized
    with `quant` (the IR always computes on real values).
    """

    tensor: str
    onnx_name: str
    onnx_shape: tuple[int, ...]
    layout: np.ndarray
    dtype: str = "float32"
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", _frozen_array(self.layout, np.int64))
        object.__setattr__(self, "onnx_shape", tuple(int(d) for d in self.onnx_shape))

    def to_ir(self, x: np.ndarray) -> np.ndarray:
        """Model-layout batch ``(N, *onnx_shape)`` -> IR batch ``(N, H, W, C)`` float32.

        Integer inputs of a QDQ model hold codes and are dequantized (after the rearrangement,
        so per-channel parameters meet their channel axis).
        """
        n = x.shape[0]
        flat = np.asarray(x).reshape(n, -1).astype(np.float32)
        y = flat[:, self.layout.reshape(-1)].reshape((n, *self.layout.shape))
        if self.quant is not None:
            y = self.quant.dequantize(y, axis=-1)
        return y


@dataclass(frozen=True, eq=False)
class GraphOutput:
    """A graph output: IR tensor `tensor` presented as the model's output `onnx_name`.

    `layout` has the model's output shape (no batch axis) and holds, for each model element, its
    flat position in the IR tensor. A QDQ model's integer output is quantized with `quant`.
    """

    tensor: str
    onnx_name: str
    onnx_shape: tuple[int, ...]
    layout: np.ndarray
    dtype: str = "float32"
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", _frozen_array(self.layout, np.int64))
        object.__setattr__(self, "onnx_shape", tuple(int(d) for d in self.onnx_shape))

    def from_ir(self, y: np.ndarray) -> np.ndarray:
        """IR batch ``(N, H, W, C)`` -> model-layout batch ``(N, *onnx_shape)``.

        Quantized outputs are quantized in the IR layout (per-channel parameters follow the
        channel axis) before the rearrangement.
        """
        n = y.shape[0]
        if self.quant is not None:
            y = self.quant.quantize(y, axis=-1)
        flat = y.reshape(n, -1)[:, self.layout.reshape(-1)]
        out = flat.reshape((n, *self.onnx_shape))
        dtype = np.dtype(self.dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(dtype)


@dataclass(frozen=True, eq=False)
class Graph:
    """A validated DAG of layers in topological order.

    `tensors` maps every tensor name (inputs and layer outputs) to its `Tensor`. Construction
    checks that names are unique, every layer reads tensors defined before it, the shapes
    recorded on layers agree with `tensors`, and every output is defined.
    """

    name: str
    inputs: tuple[GraphInput, ...]
    outputs: tuple[GraphOutput, ...]
    tensors: Mapping[str, Tensor]
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "tensors", dict(self.tensors))
        defined: set[str] = set()
        for gi in self.inputs:
            self._check_tensor(gi.tensor, f"graph input {gi.onnx_name!r}")
            if gi.layout.shape != self.tensors[gi.tensor].shape:
                raise ShapeError(
                    f"graph input {gi.onnx_name!r}: layout {gi.layout.shape!r} does not match "
                    f"tensor shape {self.tensors[gi.tensor].shape!r}"
                )
            defined.add(gi.tensor)
        names: set[str] = set()
        for layer in self.layers:
            if layer.name in names:
                raise ShapeError(f"two layers are named {layer.name!r}")
            names.add(layer.name)
            for name, shape in zip(layer.inputs, layer.in_shapes, strict=True):
                if name not in defined:
                    raise ShapeError(
                        f"{layer.op} {layer.name!r} reads {name!r} before anything defines it"
                    )
                if self.tensors[name].shape != shape:
                    raise ShapeError(
                        f"{layer.op} {layer.name!r}: input {name!r} has shape "
                        f"{self.tensors[name].shape!r}, the layer expects {shape!r}"
                    )
            if layer.output in defined:
                raise ShapeError(f"tensor {layer.output!r} is written twice")
            self._check_tensor(layer.output, f"{layer.op} {layer.name!r}")
            if self.tensors[layer.output].shape != layer.out_shape:
                raise ShapeError(
                    f"{layer.op} {layer.name!r}: output {layer.output!r} has shape "
                    f"{self.tensors[layer.output].shape!r}, the layer computes {layer.out_shape!r}"
                )
            defined.add(layer.output)
        for go in self.outputs:
            if go.tensor not in defined:
                raise ShapeError(f"graph output {go.onnx_name!r} reads undefined {go.tensor!r}")
            size = self.tensors[go.tensor].size
            if go.layout.size and (go.layout.min() < 0 or go.layout.max() >= size):
                raise ShapeError(f"graph output {go.onnx_name!r}: layout indexes past the tensor")
        extra = set(self.tensors) - defined
        if extra:
            raise ShapeError(f"tensors {sorted(extra)!r} are declared but never defined")

    def _check_tensor(self, name: str, what: str) -> None:
        if name not in self.tensors:
            raise ShapeError(f"{what} writes {name!r}, which is not in the tensor table")

    # -- queries --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def producer(self, tensor: str) -> Layer | None:
        for layer in self.layers:
            if layer.output == tensor:
                return layer
        return None

    def consumers(self, tensor: str) -> list[Layer]:
        return [layer for layer in self.layers if tensor in layer.inputs]

    @property
    def output_tensors(self) -> tuple[str, ...]:
        return tuple(go.tensor for go in self.outputs)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def count(self, *types: type[Layer]) -> int:
        return sum(isinstance(layer, types) for layer in self.layers)

    def replace(self, **changes: object) -> Graph:
        return dataclasses.replace(self, **changes)


def rebuild(graph: Graph, layers: Iterable[Layer], **changes: object) -> Graph:
    """A new graph with `layers`, keeping only the tensors they (and the inputs) define."""
    layers = tuple(layers)
    keep = {gi.tensor for gi in graph.inputs} | {layer.output for layer in layers}
    tensors = changes.pop("tensors", graph.tensors)
    assert isinstance(tensors, Mapping)
    return dataclasses.replace(
        graph,
        layers=layers,
        tensors={k: v for k, v in tensors.items() if k in keep},
        **changes,
    )
