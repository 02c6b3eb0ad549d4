"""ONNX file -> validated `Graph`: reading, checking, constant folding, conversion, clean-up."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from accelgen.errors import ModelFileError, ShapeError, UnsupportedError, UsageError
from accelgen.frontend import normalize
from accelgen.frontend.context import Context, Node, Relayout
from accelgen.frontend.registry import DEFAULT_DOMAINS, FOLD_ONLY_OPS, lookup, supported_ops
from accelgen.frontend.values import PENDING, Constant, View, is_integer_dtype
from accelgen.ir import Graph, GraphInput, GraphOutput, QuantParams, Tensor

log = logging.getLogger(__name__)

MIN_OPSET = 6
TESTED_OPSETS = (8, 21)


def read_model(path: str | Path) -> onnx.ModelProto:
    """Read and structurally check an ONNX file; every failure is one clear `AccelgenError`."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise UsageError(f"{str(path)!r} is a directory, not an ONNX model file")
    data = path.read_bytes()
    if not data:
        raise ModelFileError(f"{str(path)!r} is empty; expected an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ModelFileError(
            f"{str(path)!r} is not a readable ONNX model (truncated or corrupt: {err})"
        ) from None
    if any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    ):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as err:
            raise ModelFileError(
                f"{str(path)!r} keeps its weights in an external data file that cannot be "
                f"read ({err}); keep the .data file next to the model"
            ) from None
    check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    """Structural checks with messages that name the node, then onnx's own checker."""
    g = model.graph
    if not g.node and not g.output:
        raise ModelFileError(f"{where!r} holds no graph (is it an ONNX model?)")
    defined = {vi.name for vi in g.input} | {init.name for init in g.initializer}
    for i, node in enumerate(g.node):
        label = f"{node.op_type} node {node.name or f'#{i}'!r}"
        for name in node.input:
            if name and name not in defined:
                raise ModelFileError(
                    f"{where!r}: {label} reads {name!r}, which no earlier node, graph input or "
                    f"initializer defines (a missing initializer, or nodes out of order)"
                )
        for name in node.output:
            if name and name in defined:
                raise ModelFileError(
                    f"{where!r}: {label} writes {name!r}, which is already defined"
                )
            defined.add(name)
    for vi in g.output:
        if vi.name not in defined:
            raise ModelFileError(f"{where!r}: graph output {vi.name!r} is never computed")
    initializers = {init.name for init in g.initializer}
    for vi in g.input:
        if vi.name not in initializers:
            _input_shape(vi)  # a missing or dynamic shape, named, before the generic checker
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        if len(text) > 300:
            text = text[:297] + "..."
        raise ModelFileError(f"{where!r} is not a valid ONNX model: {text}") from None


def load_model(
    source: str | Path | onnx.ModelProto,
    *,
    name: str | None = None,
    input_layouts: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Read (if a path) and convert an ONNX/QDQ/QONNX model to the IR."""
    if isinstance(source, onnx.ModelProto):
        check_model(source, name or source.graph.name or "model")
        model = source
    else:
        model = read_model(source)
        name = name or Path(source).stem
    return convert(model, name=name or model.graph.name or "model", input_layouts=input_layouts)


def convert(
    model: onnx.ModelProto,
    *,
    name: str = "model",
    input_layouts: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Convert a checked ONNX model to a `Graph`.

    Graph inputs whose layout is not given are assumed NCHW (rank 4) or flat; when a layer that
    needs NCHW data finds the input arranged otherwise (a TensorFlow NHWC input behind a
    Transpose), conversion restarts with the layout that layer needs.
    """
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    base = opsets.get("", opsets.get("ai.onnx", 0))
    if base < MIN_OPSET:
        raise UnsupportedError(
            f"model opset {base} is older than {MIN_OPSET}; re-export it with opset "
            f"{TESTED_OPSETS[0]} to {TESTED_OPSETS[1]}"
        )
    if not TESTED_OPSETS[0] <= base <= TESTED_OPSETS[1]:
        log.info("model opset %d is outside the tested range %s", base, TESTED_OPSETS)
    nodes = _live_nodes(model, opsets)
    _check_supported(nodes)
    layouts = dict(input_layouts or {})
    decided = set(layouts)
    for _ in range(len(model.graph.input) + 1):
        try:
            graph = _convert_once(model, nodes, name, opsets, layouts, decided)
        except Relayout as again:
            if again.input_name in decided:
                raise UnsupportedError(
                    f"graph input {again.input_name!r} is read in two incompatible layouts"
                ) from None
            layouts[again.input_name] = again.layout
            decided.add(again.input_name)
            continue
        return normalize.normalize(graph)
    raise UnsupportedError("could not settle the layout of the graph inputs")


def _node_opset(domain: str, opsets: Mapping[str, int]) -> int:
    if domain in DEFAULT_DOMAINS:
        return opsets.get("", opsets.get("ai.onnx", 0))
    return opsets.get(domain, 1)


def _live_nodes(model: onnx.ModelProto, opsets: Mapping[str, int]) -> list[Node]:
    """Nodes that contribute to a graph output, in the model's (topological) order."""
    protos = list(model.graph.node)
    producer = {out: i for i, n in enumerate(protos) for out in n.output if out}
    live: set[int] = set()
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(producer[x] for x in protos[i].input if x in producer)
    nodes = []
    for i, proto in enumerate(protos):
        if i not in live:
            continue
        try:
            attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        except (ValueError, TypeError) as err:
            raise ModelFileError(f"node {proto.name!r} has a malformed attribute: {err}") from None
        nodes.append(
            Node(
                name=proto.name or f"{proto.op_type}_{i}",
                op_type=proto.op_type,
                domain=proto.domain,
                inputs=tuple(proto.input),
                outputs=tuple(proto.output),
                attrs=attrs,
                opset=_node_opset(proto.domain, opsets),
                proto=proto,
            )
        )
    return nodes


def _check_supported(nodes: list[Node]) -> None:
    for n in nodes:
        handler = lookup(n.domain, n.op_type)
        if handler is not None and not handler.supported:
            handler.fn(None, n)  # type: ignore[arg-type] - rejection handlers raise from the node
    bad = [
        n for n in nodes
        if lookup(n.domain, n.op_type) is None
        and not (n.domain in DEFAULT_DOMAINS and n.op_type in FOLD_ONLY_OPS)
    ]
    if bad:
        first = bad[0]
        others = sorted({n.op_type for n in bad[1:]})
        more = f" (and {len(bad) - 1} more: {others})" if bad[1:] else ""
        domain = f" in domain {first.domain!r}" if first.domain not in DEFAULT_DOMAINS else ""
        raise UnsupportedError(
            f"unsupported op {first.op_type!r}{domain} at node {first.name!r}{more}; "
            f"accelgen supports: {', '.join(supported_ops())}"
        )


def default_layout(onnx_shape: tuple[int, ...]) -> np.ndarray:
    """The assumed layout of a graph input: NCHW for rank 4, else flat channels.

    Returns an (H, W, C) array holding, per IR element, its flat position in the model layout.
    """
    if len(onnx_shape) == 3:
        c, h, w = onnx_shape
        return np.arange(c * h * w, dtype=np.int64).reshape(c, h, w).transpose(1, 2, 0).copy()
    size = int(np.prod(onnx_shape, dtype=np.int64))
    return np.arange(size, dtype=np.int64).reshape(1, 1, size)


def _input_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    t = vi.type
    if not t.HasField("tensor_type"):
        raise UnsupportedError(f"graph input {vi.name!r} is not a tensor")
    if not t.tensor_type.HasField("shape"):
        raise ShapeError(
            f"graph input {vi.name!r} has no shape; accelgen needs static input shapes "
            f"(re-export with a fixed input size)"
        )
    dims = []
    for axis, d in enumerate(t.tensor_type.shape.dim):
        if axis == 0:
            continue  # the batch axis may be dynamic
        if not d.HasField("dim_value") or d.dim_value <= 0:
            what = repr(d.dim_param) if d.HasField("dim_param") else "unknown"
            raise ShapeError(
                f"graph input {vi.name!r} has a dynamic dimension {what} at axis {axis}; "
                f"accelgen needs static shapes (re-export with a fixed input size)"
            )
        dims.append(int(d.dim_value))
    if not t.tensor_type.shape.dim:
        raise UnsupportedError(f"graph input {vi.name!r} is a scalar; expected a batch of images")
    return tuple(dims)


_INPUT_TYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
     "uint32", "int4", "uint4", "int2", "uint2"}
)


def _input_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    elem = vi.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.name not in _INPUT_TYPES:
        known = elem in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(elem) if known else elem
        raise UnsupportedError(
            f"graph input {vi.name!r} has element type {name}; accelgen takes float or integer "
            f"inputs"
        )
    return dtype


def _fold(
    node: Node, values: list[np.ndarray | None], opsets: Mapping[str, int]
) -> list[np.ndarray]:
    """Evaluate a node on constant inputs with onnx's reference runtime."""
    from onnx.reference import ReferenceEvaluator

    in_names = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
    out_names = [f"out{i}" if o else "" for i, o in enumerate(node.outputs)]
    proto = helper.make_node(node.op_type, in_names, out_names, domain=node.domain)
    proto.attribute.extend(node.proto.attribute)
    inputs = [
        helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.asarray(v).shape
        )
        for n, v in zip(in_names, values, strict=True)
        if v is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in out_names if o]
    graph = helper.make_graph([proto], "fold", inputs, outputs)
    imports = [helper.make_opsetid(d, v) for d, v in opsets.items()]
    model = helper.make_model(graph, opset_imports=imports)
    try:
        evaluator = ReferenceEvaluator(model)
        feeds = {n: np.asarray(v) for n, v in zip(in_names, values, strict=True) if v is not None}
        results = evaluator.run(None, feeds)
    except Exception as err:  # noqa: BLE001 - any failure of the reference runtime is the model's
        raise ModelFileError(
            f"{node.label}: cannot evaluate it on its constant inputs ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    it = iter(results)
    return [np.asarray(next(it)) if o else np.zeros(0) for o in out_names]


def _initializer(init: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(init)
    except (ValueError, TypeError, RuntimeError, OSError) as err:
        raise ModelFileError(f"initializer {init.name!r} is unreadable: {err}") from None


def _convert_once(
    model: onnx.ModelProto,
    nodes: list[Node],
    name: str,
    opsets: dict[str, int],
    layouts: dict[str, np.ndarray],
    decided: set[str],
) -> Graph:
    ctx = Context(opsets, decided)
    g = model.graph
    for n in nodes:
        for i in n.inputs:
            if i:
                ctx.use_count[i] = ctx.use_count.get(i, 0) + 1
    for o in g.output:
        ctx.use_count[o.name] = ctx.use_count.get(o.name, 0) + 1

    for init in g.initializer:
        ctx.values[init.name] = Constant(_initializer(init))
    for vi in g.input:
        if vi.name in ctx.values:
            continue  # an initializer listed as an input (old exporters)
        shape = _input_shape(vi)
        dtype = _input_dtype(vi)
        layout = layouts.get(vi.name)
        if layout is None:
            layout = default_layout(shape)
            layouts[vi.name] = layout
        if layout.size != int(np.prod(shape, dtype=np.int64)):
            raise ShapeError(f"graph input {vi.name!r}: layout does not match shape {shape!r}")
        ctx.tensors[vi.name] = Tensor(vi.name, layout.shape)  # type: ignore[arg-type]
        ctx.input_layouts[vi.name] = layout
        ctx.input_tensor[vi.name] = vi.name
        if vi.name not in decided:
            ctx.aligned[vi.name] = vi.name
        inverse = np.empty(layout.size, dtype=np.int64)
        inverse[layout.reshape(-1)] = np.arange(layout.size, dtype=np.int64)
        codes = PENDING if is_integer_dtype(dtype) else None
        ctx.values[vi.name] = View(vi.name, inverse.reshape(shape), dtype, codes)

    for node in nodes:
        for i in node.inputs:
            if i and i not in ctx.values:
                raise ModelFileError(
                    f"{node.label} reads {i!r}, which no node, graph input or initializer "
                    f"defines (a missing initializer?)"
                )
        vals = [ctx.values[i] if i else None for i in node.inputs]
        handler = lookup(node.domain, node.op_type)
        all_const = all(v is None or isinstance(v, Constant) for v in vals)
        if all_const and (handler is None or handler.fold_constants):
            arrays = [v.value if isinstance(v, Constant) else None for v in vals]
            results: list = [Constant(a) for a in _fold(node, arrays, opsets)]
        elif handler is None:
            raise UnsupportedError(
                f"{node.label}: {node.op_type} on run-time data is not supported (only on "
                f"constants); accelgen supports: {', '.join(supported_ops())}"
            )
        else:
            results = handler.fn(ctx, node)
        for k, out in enumerate(node.outputs):
            if not out:
                continue
            if k < len(results):
                ctx.values[out] = results[k]
            elif ctx.use_count.get(out):
                raise UnsupportedError(f"{node.label}: its output #{k} ({out!r}) is not supported")

    outputs = []
    for vi in g.output:
        v = ctx.values.get(vi.name)
        if v is None:
            raise ModelFileError(f"graph output {vi.name!r} is never computed")
        if isinstance(v, Constant):
            raise UnsupportedError(
                f"graph output {vi.name!r} is a constant; there is nothing to accelerate"
            )
        quant = v.codes if isinstance(v.codes, QuantParams) else None
        outputs.append(
            GraphOutput(
                tensor=v.tensor,
                onnx_name=vi.name,
                onnx_shape=v.index.shape,
                layout=v.index,
                dtype=np.dtype(v.dtype).name,
                quant=quant,
            )
        )
    inputs = [
        GraphInput(
            tensor=ctx.input_tensor[vi.name],
            onnx_name=vi.name,
            onnx_shape=_input_shape(vi),
            layout=ctx.input_layouts[vi.name],
            dtype=_input_dtype(vi).name,
            quant=ctx.input_quant.get(vi.name),
        )
        for vi in g.input
        if vi.name in ctx.input_tensor
    ]
    return Graph(name=name, inputs=tuple(inputs), outputs=tuple(outputs), tensors=ctx.tensors,
                 layers=tuple(ctx.layers))
