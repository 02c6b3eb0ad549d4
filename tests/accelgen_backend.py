"""An ONNX backend (onnx.backend.base.Backend) made of accelgen's frontend and float reference.

The ONNX conformance tests feed weights as graph inputs; accelgen needs them stored in the model.
`run` therefore turns every graph input that feeds only parameter slots (a Conv's weight, a
Reshape's shape, ...; the registry's `param_inputs`) into an initializer before converting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

from accelgen import reference
from accelgen.frontend import convert
from accelgen.frontend.registry import lookup


def parameter_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs read only through parameter slots of their consumers."""
    uses: dict[str, list[bool]] = {}
    for node in model.graph.node:
        handler = lookup(node.domain, node.op_type)
        params = handler.param_inputs if handler is not None else frozenset()
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append(i in params)
    outputs = {o.name for o in model.graph.output}
    return {
        vi.name
        for vi in model.graph.input
        if uses.get(vi.name) and all(uses[vi.name]) and vi.name not in outputs
    }


def bake(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with the given graph inputs turned into initializers."""
    baked = onnx.ModelProto()
    baked.CopyFrom(model)
    keep = [vi for vi in baked.graph.input if vi.name not in values]
    del baked.graph.input[:]
    baked.graph.input.extend(keep)
    for name, value in values.items():
        baked.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return baked


class AccelgenRep(BackendRep):
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        initializers = {i.name for i in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in initializers]
        self.params = parameter_inputs(model)

    def run(self, inputs: Sequence[np.ndarray] | dict, **kwargs: object) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            feeds = dict(zip(self.input_names, inputs, strict=False))
        baked = {k: v for k, v in feeds.items() if k in self.params}
        data = {k: v for k, v in feeds.items() if k not in self.params}
        graph = convert(bake(self.model, baked), name=self.model.graph.name)
        out = reference.run(graph, data)
        return tuple(out[o.name] for o in self.model.graph.output)


class AccelgenBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: object) -> AccelgenRep:
        super().prepare(model, device, **kwargs)
        return AccelgenRep(model)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs, device: str = "CPU", **kwargs: object):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
