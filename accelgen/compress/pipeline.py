"""`accelgen compress`: model file -> QuantizedGraph + report (accuracy, errors, memory)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accelgen import evaluate
from accelgen.compress.quantize import QuantConfig, quantize
from accelgen.data import Dataset
from accelgen.frontend import load_model
from accelgen.ir import Graph
from accelgen.quantized import QConv, QDense, QuantizedGraph, save

log = logging.getLogger(__name__)

ERROR_IMAGES = 256  # images used for the per-layer SQNR table


@dataclass(frozen=True, eq=False)
class Compressed:
    graph: Graph
    qgraph: QuantizedGraph
    report: dict


def weight_memory(graph: Graph, qg: QuantizedGraph) -> dict:
    """Weight image sizes in bytes: quantized (at each layer's width), 16-bit and float32."""
    weights = sum(la.weight.size for la in qg.layers if isinstance(la, (QConv, QDense)))
    return {
        "weights": int(weights),
        "quantized": math.ceil(qg.weight_bits_total() / 8),
        "int16": int(weights * 2),
        "float32": int(weights * 4),
        "bias_quantized": math.ceil(qg.bias_bits_total() / 8),
        "ratio_to_int16": qg.weight_bits_total() / (weights * 16) if weights else 0.0,
    }


def compress(
    model: str | Path | Graph,
    config: QuantConfig,
    calibration: Dataset | None,
    evaluation: Dataset | None,
) -> Compressed:
    """Quantize a model and measure what it cost."""
    graph = model if isinstance(model, Graph) else load_model(model)
    t0 = time.perf_counter()
    qg, choices = quantize(graph, None if calibration is None else calibration.x, config)
    t_quant = time.perf_counter() - t0
    report: dict = {
        "model": graph.name,
        "config": qg.meta.get("config", {}),
        "calibration_data": None if calibration is None else calibration.source,
        "calibration_images": 0 if calibration is None else len(calibration),
        "layers": len(qg.layers),
        "params": qg.params,
        "macs": qg.macs,
        "weight_memory": weight_memory(graph, qg),
        "quantize_seconds": round(t_quant, 2),
        "choices": choices,
    }
    report["weight_bytes"] = report["weight_memory"]["quantized"]
    if evaluation is not None and len(evaluation):
        ref = evaluate.accuracy(lambda x: evaluate.float_scores(graph, x), evaluation, "reference")
        gold = evaluate.accuracy(lambda x: evaluate.golden_scores(qg, x), evaluation, "golden")
        report["evaluation_data"] = evaluation.source
        report["images"] = len(evaluation)
        report["top1_agreement"] = float((ref.predictions == gold.predictions).mean())
        if evaluation.y is not None:
            report["float_accuracy"] = ref.accuracy
            report["quantized_accuracy"] = gold.accuracy
        report["per_layer"] = evaluate.per_layer_error(graph, qg, evaluation.x[:ERROR_IMAGES])
    return Compressed(graph, qg, report)


def write(result: Compressed, out: Path) -> Path:
    """Save the shape description with its report.json (atomically)."""
    text = json.dumps(result.report, indent=1, default=_json_default)
    return save(result.qgraph, out, extra={"report.json": text})


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def summary_lines(report: dict) -> list[str]:
    """The human summary `accelgen compress` prints."""
    cfg = report["config"]
    head = (f"{report['model']}: {report['layers']} integer layers, {report['params']:,} "
            f"params, {report['macs']:,} MACs")
    bits = (f"  bits: weights {cfg.get('weight_bits')}, activations {cfg.get('act_bits')}, "
            f"input/logits {cfg.get('io_bits')}; calibration {cfg.get('calibration')} on "
            f"{report['calibration_data']}; rounding {cfg.get('rounding')}")
    lines = [head, bits]
    mem = report["weight_memory"]
    lines.append(
        f"  weight memory: {mem['quantized']:,} B quantized vs {mem['int16']:,} B at 16 bits "
        f"({100 * mem['ratio_to_int16']:.1f} %) vs {mem['float32']:,} B float32; biases "
        f"{mem['bias_quantized']:,} B"
    )
    if "float_accuracy" in report:
        fa, qa = report["float_accuracy"], report["quantized_accuracy"]
        lines.append(
            f"  accuracy on {report['images']:,} images: float {100 * fa:.2f} %, quantized "
            f"{100 * qa:.2f} % ({100 * (qa - fa):+.2f} points); top-1 agreement "
            f"{100 * report['top1_agreement']:.2f} %"
        )
    elif "top1_agreement" in report:
        lines.append(f"  top-1 agreement with the float model on {report['images']:,} inputs: "
                     f"{100 * report['top1_agreement']:.2f} %")
    if report.get("per_layer"):
        lines.append(f"  {'layer':<32} {'op':<14} {'format':<8} {'SQNR dB':>8} {'rel err':>8}")
        for row in report["per_layer"]:
            name = row["layer"] if len(row["layer"]) <= 32 else "…" + row["layer"][-31:]
            sq = row["sqnr_db"]
            sq_text = "exact" if sq == float("inf") else f"{sq:8.1f}"
            lines.append(f"  {name:<32} {row['op']:<14} {row['format']:<8} {sq_text:>8} "
                         f"{row['rel_error']:8.4f}")
    return lines
