"""What an ONNX value is, while the frontend converts a model.

Every ONNX value name maps to one of two things:

* `Constant`: a numpy array known at conversion time (an initializer, a folded shape
  computation, a dequantized weight with its quantization kept in `quant`).
* `View`: data that flows at run time. A view does not own data; it says how the ONNX value is
  laid out over one IR tensor: ``index`` has the ONNX value's shape (without the batch axis) and
  holds, for each element, its flat position in the IR tensor's ``(H, W, C)`` order. Transpose,
  Reshape, Flatten, Squeeze and friends only rearrange ``index``; they never become layers. A
  layer that needs NCHW data checks that its input view is exactly the NCHW arrangement of its
  tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accelgen.ir import QuantParams


@dataclass(frozen=True, eq=False)
class Constant:
    """A value known at conversion time.

    `quant` is set when the value came out of a DequantizeLinear or QONNX Quant: `value` then
    holds the real (dequantized) numbers and `quant_axis` the ONNX axis of per-channel
    parameters. `codes` is True for the integer output of QuantizeLinear on a constant.
    """

    value: np.ndarray
    quant: QuantParams | None = None
    quant_axis: int | None = None
    codes: bool = False


class PendingQuant:
    """Marks the integer codes of a graph input whose parameters the next DequantizeLinear sets."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING = PendingQuant()


@dataclass(frozen=True, eq=False)
class View:
    """A run-time ONNX value: an arrangement (`index`) of the IR tensor `tensor`.

    `dtype` is the ONNX value's element type. `codes` is set when the value holds the integer
    codes of the tensor (between a QuantizeLinear and its DequantizeLinear), with the
    parameters that map them back to real values.
    """

    tensor: str
    index: np.ndarray
    dtype: np.dtype
    codes: QuantParams | PendingQuant | None = None

    @property
    def onnx_shape(self) -> tuple[int, ...]:
        """The ONNX shape with a batch of one."""
        return (1, *self.index.shape)

    def rearranged(self, index: np.ndarray) -> View:
        return View(self.tensor, index, self.dtype, self.codes)


Value = Constant | View


_SMALL_INTS = frozenset({"int4", "uint4", "int2", "uint2"})


def is_integer_dtype(dtype: np.dtype) -> bool:
    """Integer element types, including the sub-byte ones numpy knows through ml_dtypes."""
    dt = np.dtype(dtype)
    return dt.kind in "iu" or dt.name in _SMALL_INTS


def float_dtype(view: View) -> np.dtype:
    """The element type of a layer's output: the input's float type, float32 otherwise."""
    return view.dtype if view.dtype.kind == "f" else np.dtype(np.float32)


def nchw_index(shape: tuple[int, int, int]) -> np.ndarray:
    """The view index of an (H, W, C) tensor seen as (C, H, W)."""
    h, w, c = shape
    return np.arange(h * w * c, dtype=np.int64).reshape(h, w, c).transpose(2, 0, 1)


def nhwc_index(shape: tuple[int, int, int]) -> np.ndarray:
    h, w, c = shape
    return np.arange(h * w * c, dtype=np.int64).reshape(h, w, c)
