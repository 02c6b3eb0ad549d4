"""The operator-handler registry: one handler per ONNX op (per domain).

A handler is ``fn(ctx, node) -> list[Value]`` returning one value per node output. Handlers
register with `register`; the frontend finds them by ``(domain, op_type)``. An op with no
handler fails before any conversion work, naming the node and listing what is supported.

`param_inputs` names the input slots that must be constants (weights, shapes, axes, quantization
parameters): the ONNX backend test harness uses it to turn graph inputs feeding those slots into
initializers, and the error messages use it to say "must be stored in the model".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelgen.frontend.context import Context, Node
    from accelgen.frontend.values import Value

Handler = Callable[["Context", "Node"], "list[Value]"]

DEFAULT_DOMAINS = ("", "ai.onnx")
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas", "finn")


@dataclass(frozen=True)
class OpHandler:
    op_type: str
    domain: str
    fn: Handler
    param_inputs: frozenset[int]
    fold_constants: bool
    """If every input is a constant, evaluate the node with onnx's reference runtime instead."""
    supported: bool = True
    """False for handlers that exist only to explain why an op is rejected."""


_REGISTRY: dict[tuple[str, str], OpHandler] = {}


def register(
    *op_types: str,
    domains: tuple[str, ...] = DEFAULT_DOMAINS,
    params: tuple[int, ...] = (),
    fold_constants: bool = True,
    supported: bool = True,
) -> Callable[[Handler], Handler]:
    """Register `fn` for each op type in each domain."""

    def wrap(fn: Handler) -> Handler:
        for op_type in op_types:
            for domain in domains:
                key = (domain, op_type)
                if key in _REGISTRY:
                    raise RuntimeError(f"two handlers for {key!r}")
                _REGISTRY[key] = OpHandler(
                    op_type, domain, fn, frozenset(params), fold_constants, supported
                )
        return fn

    return wrap


def lookup(domain: str, op_type: str) -> OpHandler | None:
    return _REGISTRY.get((domain, op_type))


def supported_ops() -> list[str]:
    """Op types with a handler, QONNX ones prefixed with their short domain."""
    names = set()
    for (domain, op), handler in _REGISTRY.items():
        if handler.supported:
            names.add(op if domain in DEFAULT_DOMAINS else f"qonnx:{op}")
    return sorted(names)


# Ops that are pure computation on constants (shape arithmetic and the like). They have no
# handler for run-time data; on constants the frontend folds them with onnx's reference runtime.
FOLD_ONLY_OPS = frozenset(
    {
        "Gather", "Slice", "Range", "Equal", "Where", "Not", "And", "Or", "Less",
        "Greater", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Pow", "Exp",
        "Log", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Expand", "Tile", "Min",
        "Max", "Sum", "Mean", "Size", "NonZero", "Split", "CastLike", "ConstantOfShape",
        "Constant",
    }
)
