"""ONNX / QDQ / QONNX -> `accelgen.ir.Graph`.

`load_model(path_or_proto)` reads, checks and converts a model; `supported_ops()` lists the op
types with a handler. Handlers live in the modules imported below, one per op family, and
register themselves in `accelgen.frontend.registry`.
"""

from accelgen.frontend import elementwise, layout, linear, pool, quant  # noqa: F401 - registration
from accelgen.frontend.loader import convert, load_model, read_model
from accelgen.frontend.registry import supported_ops

__all__ = ["convert", "load_model", "read_model", "supported_ops"]
