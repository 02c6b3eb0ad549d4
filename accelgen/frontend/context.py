"""Conversion state shared by the op handlers: values, IR tensors, layers, and checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from accelgen.errors import ModelFileError, ShapeError, UnsupportedError
from accelgen.frontend.values import Constant, View, float_dtype, nchw_index
from accelgen.ir import Conv2d, Layer, QuantParams, Shape, Tensor

_MISSING = object()


@dataclass(frozen=True)
class Node:
    """An ONNX node with its attributes decoded and its domain's opset version."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    opset: int
    proto: onnx.NodeProto = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.op_type} node {self.name!r}"

    def attr(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.attrs:
            value = self.attrs[key]
            return value.decode() if isinstance(value, bytes) else value
        if default is _MISSING:
            raise ModelFileError(f"{self.label} lacks its required attribute {key!r}")
        return default

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] != ""


# the TensorFlow op names that identify a fused layer's scope, by IR op
_TF_OPS = {
    "Conv2d": ("BiasAdd", "Conv2D1", "depthwise", "Conv2D"),
    "Dense": ("MatMul", "BiasAdd"),
    "Relu": ("Relu", "Relu6"),
    "Clip": ("Relu6", "Relu", "clip_by_value"),
    "Add": ("add", "Add", "AddV2"),
}


def pretty_name(name: str, op: str = "") -> str:
    """A readable layer name from an exporter's node name.

    TensorFlow exports fuse the names of every op that went into a node
    (``"model/activation/Relu;model/batch_normalization/...;model/conv2d/BiasAdd;..."``); this
    keeps the scope of the segment whose op matches the layer (``"conv2d"``).
    """
    if ";" not in name and len(name) <= 48:
        return name
    segments = [s.split("/") for s in name.split(";") if s]
    wanted = _TF_OPS.get(op, ())
    pick = next((seg for want in wanted for seg in segments
                 if len(seg) >= 2 and seg[-1] == want), segments[-1])
    parts = [p for p in pick[:-1] if p] if len(pick) >= 2 else pick
    while len(parts) >= 2 and parts[0] in ("model", "functional_1", "sequential", "functional"):
        parts = parts[1:]
    out = "/".join(parts).removeprefix("TFLITE2ONNX_FAF_")
    return out if len(out) <= 48 else out[-48:]


class Relayout(Exception):
    """A graph input's layout turned out to be other than assumed: restart with `layout`."""

    def __init__(self, input_name: str, layout: np.ndarray) -> None:
        super().__init__(input_name)
        self.input_name = input_name
        self.layout = layout


class Context:
    """Everything a handler may read or change while converting one model."""

    def __init__(self, opsets: dict[str, int], decided_inputs: set[str]) -> None:
        self.opsets = opsets
        self.values: dict[str, Constant | View] = {}
        self.tensors: dict[str, Tensor] = {}
        self.layers: list[Layer] = []
        # IR tensor -> (graph input name) when the tensor is position-aligned with an input
        # whose layout was assumed rather than decided by a layer that needs NCHW.
        self.aligned: dict[str, str] = {}
        self.input_layouts: dict[str, np.ndarray] = {}
        self.input_tensor: dict[str, str] = {}
        self.decided_inputs = decided_inputs
        self.input_quant: dict[str, QuantParams] = {}
        # ONNX value name -> number of nodes (and graph outputs) reading it
        self.use_count: dict[str, int] = {}
        self._layer_names: set[str] = set()

    # -- reading values -----------------------------------------------------------------
    def value(self, node: Node, i: int) -> Constant | View:
        name = node.inputs[i]
        if name not in self.values:
            raise ModelFileError(
                f"{node.label} reads {name!r}, which no node, graph input or initializer defines"
            )
        return self.values[name]

    def const(self, node: Node, i: int, what: str) -> np.ndarray:
        """Input `i` as a constant array, or a clear error if it is run-time data."""
        return self.constant(node, i, what).value

    def constant(self, node: Node, i: int, what: str) -> Constant:
        v = self.value(node, i)
        if not isinstance(v, Constant):
            raise UnsupportedError(
                f"{node.label}: its {what} {node.inputs[i]!r} is computed at run time; "
                f"accelgen needs it stored in the model (an initializer or a constant)"
            )
        return v

    def optional_const(self, node: Node, i: int, what: str) -> np.ndarray | None:
        return self.const(node, i, what) if node.has_input(i) else None

    def view(self, node: Node, i: int) -> View:
        v = self.value(node, i)
        if not isinstance(v, View):
            raise UnsupportedError(
                f"{node.label}: input {node.inputs[i]!r} is a constant where accelgen expects "
                f"run-time data"
            )
        if isinstance(v.codes, QuantParams):
            raise UnsupportedError(
                f"{node.label}: input {node.inputs[i]!r} holds integer codes (after a "
                f"QuantizeLinear); accelgen expects a DequantizeLinear before {node.op_type}"
            )
        return v

    def opset(self, domain: str = "") -> int:
        return self.opsets.get(domain, self.opsets.get("ai.onnx", 0))

    # -- building the IR ------------------------------------------------------------------
    def new_tensor(
        self, name: str, shape: Shape, *, aligned_from: str | None = None
    ) -> str:
        """Declare a fresh IR tensor named after `name` (made unique); return its name."""
        base = name or "t"
        unique, k = base, 1
        while unique in self.tensors:
            k += 1
            unique = f"{base}#{k}"
        self.tensors[unique] = Tensor(unique, shape)
        if aligned_from is not None and aligned_from in self.aligned:
            self.aligned[unique] = self.aligned[aligned_from]
        return unique

    def add_layer(self, layer: Layer) -> Layer:
        base = pretty_name(layer.name, layer.op) or layer.op
        unique, k = base, 1
        while unique in self._layer_names:
            k += 1
            unique = f"{base}#{k}"
        if unique != layer.name:
            layer = dataclasses.replace(layer, name=unique)
        self._layer_names.add(unique)
        self.layers.append(layer)
        return layer

    def shape(self, tensor: str) -> Shape:
        return self.tensors[tensor].shape

    def annotate(self, node: Node, tensor: str, quant: QuantParams) -> None:
        t = self.tensors[tensor]
        if t.quant is not None and t.quant != quant:
            raise UnsupportedError(
                f"{node.label}: tensor {tensor!r} is already quantized as "
                f"{t.quant.describe()}; a second, different quantization ({quant.describe()}) "
                f"of the same data is not supported"
            )
        self.tensors[tensor] = dataclasses.replace(t, quant=quant)

    def input_quant_of_tensor(self, node: Node, tensor: str, quant: QuantParams) -> None:
        """Record the quantization of an integer graph input (set by its DequantizeLinear)."""
        for input_name, t in self.input_tensor.items():
            if t == tensor:
                self.input_quant[input_name] = quant
                return
        raise UnsupportedError(
            f"{node.label}: dequantizes integer data that is not a graph input"
        )

    # -- layout checks --------------------------------------------------------------------
    def require_nchw(self, node: Node, view: View) -> tuple[str, Shape]:
        """The IR tensor behind `view`, which must be exactly its NCHW arrangement."""
        idx = view.index
        if idx.ndim != 3:
            raise UnsupportedError(
                f"{node.label}: input {node.inputs[0]!r} has shape {view.onnx_shape!r} "
                f"(rank {idx.ndim + 1}); accelgen supports 2-D feature maps (N, C, H, W)"
            )
        c, h, w = idx.shape
        shape = self.shape(view.tensor)
        if shape == (h, w, c) and np.array_equal(idx, nchw_index(shape)):
            return view.tensor, shape
        self._relayout_or_fail(node, view, lambda pos: pos.transpose(1, 2, 0))
        raise AssertionError("unreachable")

    def require_permutation(self, node: Node, view: View) -> str:
        """`view` must cover every element of its tensor exactly once (a pure rearrangement)."""
        size = self.tensors[view.tensor].size
        flat = view.index.reshape(-1)
        if flat.size != size or not np.array_equal(np.sort(flat), np.arange(size)):
            raise UnsupportedError(
                f"{node.label}: input {node.inputs[0]!r} is not a rearrangement of whole "
                f"tensor {view.tensor!r}"
            )
        return view.tensor

    def _relayout_or_fail(self, node: Node, view: View, to_hwc: Any) -> None:
        input_name = self.aligned.get(view.tensor)
        if input_name is not None and input_name not in self.decided_inputs:
            layout = self.input_layouts[input_name]
            positions = layout.reshape(-1)[view.index]
            new_layout = np.ascontiguousarray(to_hwc(positions))
            raise Relayout(input_name, new_layout)
        raise UnsupportedError(
            f"{node.label}: input {node.inputs[0]!r} is a rearranged view (Transpose/Reshape) "
            f"of tensor {view.tensor!r} that moves its channels; accelgen keeps feature maps "
            f"channel-last and does not move data between layers"
        )

    def channel_vector(self, node: Node, view: View, const: np.ndarray, what: str) -> np.ndarray:
        """A constant broadcast against `view`, as one value per IR channel.

        Raises UnsupportedError when the constant varies across pixels (not per-channel).
        """
        shape = view.onnx_shape
        const = np.asarray(const)
        if const.ndim > len(shape):
            raise UnsupportedError(
                f"{node.label}: {what} of shape {const.shape!r} has more axes than the data "
                f"{shape!r}"
            )
        try:
            full = np.broadcast_to(const, np.broadcast_shapes(const.shape, shape))
        except ValueError:
            raise ShapeError(
                f"{node.label}: {what} of shape {const.shape!r} does not broadcast against "
                f"the data shape {shape!r}"
            ) from None
        if full.shape != shape:
            raise UnsupportedError(
                f"{node.label}: {what} of shape {const.shape!r} would change the data shape "
                f"{shape!r} (batch axes in constants are not supported)"
            )
        h, w, c = self.shape(view.tensor)
        per_pos = np.empty(h * w * c, dtype=np.float64)
        per_pos[view.index.reshape(-1)] = full.reshape(-1)
        per_pixel = per_pos.reshape(h * w, c)
        if not np.all(per_pixel == per_pixel[:1]):
            raise UnsupportedError(
                f"{node.label}: {what} varies across pixels; accelgen supports per-channel "
                f"constants only"
            )
        return per_pixel[0]

    def emit_affine(
        self,
        node: Node,
        view: View,
        scale: np.ndarray,
        bias: np.ndarray,
        bias_quant: QuantParams | None = None,
    ) -> View:
        """``y = x * scale + bias`` per channel, as a depthwise 1x1 convolution.

        `bias_quant` is the quantization of an added constant (a QDQ model's dense bias).
        """
        scale = np.asarray(scale, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64)
        if np.all(scale == 1.0) and np.all(bias == 0.0):
            return view
        shape = self.shape(view.tensor)
        c = shape[2]
        out = self.new_tensor(node.outputs[0], shape, aligned_from=view.tensor)
        self.add_layer(
            Conv2d(
                name=node.name,
                inputs=(view.tensor,),
                output=out,
                in_shapes=(shape,),
                out_shape=shape,
                weight=scale.reshape(c, 1, 1, 1),
                bias=bias,
                groups=c,
                bias_quant=bias_quant,
            )
        )
        return View(out, view.index, float_dtype(view))
