"""Accuracy and agreement of a model on a data set, with any engine.

Engines: ``reference`` (float IR), ``golden`` (integer model). Later issues add the simulated
hardware (``pysim``, ``cxxrtl``), which must equal ``golden`` image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from accelgen import golden, reference
from accelgen.data import Dataset
from accelgen.ir import Graph
from accelgen.quantized import QuantizedGraph

BATCH = 256


def float_scores(graph: Graph, x: np.ndarray) -> np.ndarray:
    """(N, K) scores of the float reference, in the model's output order."""
    out = []
    for start in range(0, len(x), BATCH):
        y = reference.run(graph, x[start : start + BATCH])[graph.outputs[0].onnx_name]
        out.append(y.reshape(len(y), -1))
    return np.concatenate(out)


def golden_scores(qg: QuantizedGraph, x: np.ndarray) -> np.ndarray:
    """(N, K) integer logits of the golden model."""
    return np.concatenate(
        [golden.logits(qg, x[start : start + BATCH]) for start in range(0, len(x), BATCH)]
    )


@dataclass(frozen=True)
class Accuracy:
    engine: str
    images: int
    correct: int
    predictions: np.ndarray

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    def as_dict(self) -> dict:
        return {"engine": self.engine, "images": self.images, "correct": self.correct,
                "accuracy": self.accuracy}


def accuracy(scores: Callable[[np.ndarray], np.ndarray], data: Dataset, engine: str) -> Accuracy:
    pred = scores(data.x).argmax(axis=1)
    correct = int((pred == data.y).sum()) if data.y is not None else 0
    return Accuracy(engine, len(data), correct, pred)


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """10 log10(signal / noise); +inf when exact."""
    noise = float(np.sum((ref.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")


def per_layer_error(graph: Graph, qg: QuantizedGraph, x: np.ndarray) -> list[dict]:
    """SQNR and relative error of every quantized tensor against the float reference."""
    gi = graph.inputs[0]
    ref = reference.run_ir(graph, {gi.tensor: reference.prepare_input(gi, x)}, keep="all")
    gold = golden.run_ir(qg, golden.quantize_inputs(qg, x), keep="all")
    rows = []
    for layer in qg.layers:
        t = qg.tensors[layer.output]
        r = ref[layer.output].astype(np.float64)
        q = t.dequantize(gold[layer.output])
        norm = float(np.linalg.norm(r))
        rel = float(np.linalg.norm(r - q)) / norm if norm else 0.0
        rows.append({"layer": layer.name, "op": layer.op, "format": t.describe(),
                     "sqnr_db": sqnr_db(r, q), "rel_error": rel})
    return rows
