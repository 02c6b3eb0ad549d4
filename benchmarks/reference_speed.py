"""Images per second of accelgen's float reference vs onnxruntime, side by side in one run.

    python benchmarks/reference_speed.py [--batch 64] [--repeats 5] \\
        [--out benchmarks/results/reference_speed.md]

Models: the MLPerf Tiny ResNet-8, VWW MobileNet and KWS DS-CNN float models
(../shared/models/mlperf-tiny).
Both engines get the same random inputs in the model's own layout, the same batch, and this
machine's default threads. The fixed batch of the ResNet-8 file is made symbolic so onnxruntime
can batch too. Reported: best-of-`repeats` images/s, and the ratio onnxruntime / reference
(the target is a ratio <= 5).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from accelgen import reference
from accelgen.frontend import load_model

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"
MODELS = {
    "ResNet-8": "pretrainedResnet.onnx",
    "VWW MobileNet": "vww_96_float_tf2onnx.onnx",
    "KWS DS-CNN": "kws_ref_model_float32_tf2onnx.onnx",
}


def _batchable(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with a symbolic batch dimension on its inputs and outputs, in place.

    The recorded shapes of intermediate tensors (`value_info`) still carry the fixed batch and
    would pin the outputs to it again through onnxruntime's shape inference ("Expected shape
    from model of {1,10} does not match actual shape of {64,10}"), so they are dropped;
    onnxruntime infers them from the symbolic input.
    """
    for vi in [*model.graph.input, *model.graph.output]:
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    del model.graph.value_info[:]
    return model


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(name: str, fname: str, batch: int, repeats: int) -> dict:
    path = MLPERF / fname
    model = _batchable(onnx.load(path))
    graph = load_model(model)
    gi = graph.inputs[0]
    x = np.random.default_rng(0).standard_normal((batch, *gi.onnx_shape)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {gi.onnx_name: x}
    t_ort = _best(lambda: sess.run(None, feed), repeats)
    t_ref = _best(lambda: reference.run(graph, feed), repeats)
    ours = reference.run(graph, feed)[graph.outputs[0].onnx_name]
    theirs = sess.run(None, feed)[0]
    return {
        "model": name,
        "batch": batch,
        "macs": graph.macs,
        "ort_ips": batch / t_ort,
        "ref_ips": batch / t_ref,
        "ratio": t_ref / t_ort,
        "max_abs_diff": float(np.abs(ours - theirs).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown)")
    args = ap.parse_args()
    rows = [measure(n, f, args.batch, args.repeats) for n, f in MODELS.items()]
    title = (
        f"reference vs onnxruntime {ort.__version__}, batch {args.batch}, best of {args.repeats}, "
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}"
    )
    header = (
        "| model | MACs/image | onnxruntime img/s | reference img/s | ort / reference "
        "| max abs diff |"
    )
    lines = [title, "", header, "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['model']} | {r['macs']:,} | {r['ort_ips']:,.0f} | {r['ref_ips']:,.0f} | "
        f"{r['ratio']:.2f}x | {r['max_abs_diff']:.1e} |"
        for r in rows
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
