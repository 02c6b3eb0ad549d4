"""Quantization study on dscnn_fmnist over the full 10,000-image Fashion-MNIST test set.

    python benchmarks/quantization.py [--limit N] [--out benchmarks/results/quantization.md]

Needs the Debian package dataset-fashion-mnist (the test set) and onnxruntime (the peer).
Calibration for every method — ours and onnxruntime's — is the shipped 500-image calibration
subset drawn from the training set.

Tables:
1. accuracy at 16/8/6/4 bits (weights and activations), 4-bit weights with 8-bit activations,
   KL vs max vs percentile, nearest vs stochastic vs adaptive rounding; weight image in bytes;
2. the peer: onnxruntime `quantize_static` at 8 bits (QDQ, int8, per-channel weights) with
   MinMax, with Entropy as `quantize_static` reaches it (128 bins), and with a real entropy
   calibrator (`create_calibrator(..., extra_options={"num_bins": 2048})`, its ranges fed back
   through `calibration_cache_path`);
3. golden vs reference top-1 agreement on the MLPerf Tiny float models after 8-bit quantization
   (random inputs: their data sets are not public).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from accelgen.zoo import MODELS, fmnist

from accelgen import evaluate
from accelgen.compress import QuantConfig, quantize
from accelgen.compress.pipeline import weight_memory
from accelgen.data import Dataset, load_npz
from accelgen.frontend import load_model

MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"

CONFIGS = [
    ("16-bit (KL)", QuantConfig(weight_bits=16, act_bits=16)),
    ("8-bit (KL)", QuantConfig(weight_bits=8, act_bits=8)),
    ("6-bit (KL)", QuantConfig(weight_bits=6, act_bits=6)),
    ("4-bit (KL)", QuantConfig(weight_bits=4, act_bits=4)),
    ("4-bit weights, 8-bit activations (KL)", QuantConfig(weight_bits=4, act_bits=8)),
    ("8-bit, max calibration", QuantConfig(calibration="max")),
    ("8-bit, percentile 99.99", QuantConfig(calibration="percentile")),
    ("8-bit, KL, stochastic rounding (seed 0)", QuantConfig(rounding="stochastic", seed=0)),
    ("8-bit, KL, stochastic rounding (seed 1)", QuantConfig(rounding="stochastic", seed=1)),
    ("4-bit, KL, stochastic rounding (seed 0)", QuantConfig(weight_bits=4, act_bits=4,
                                                          rounding="stochastic")),
    ("8-bit, KL, adaptive rounding", QuantConfig(rounding="adaptive")),
    ("6-bit, KL, adaptive rounding", QuantConfig(weight_bits=6, act_bits=6,
                                                 rounding="adaptive")),
    ("4-bit, KL, adaptive rounding", QuantConfig(weight_bits=4, act_bits=4,
                                                 rounding="adaptive")),
    ("4-bit weights, 8-bit activations, KL, adaptive rounding",
     QuantConfig(weight_bits=4, act_bits=8, rounding="adaptive")),
]


def ours(graph, calib: Dataset, test: Dataset, float_acc: float) -> list[str]:
    rows = []
    for label, config in CONFIGS:
        t0 = time.perf_counter()
        qg, _ = quantize(graph, calib.x, config)
        acc = evaluate.accuracy(lambda x, qg=qg: evaluate.golden_scores(qg, x), test, "golden")
        mem = weight_memory(graph, qg)
        rows.append(
            f"| {label} | {100 * acc.accuracy:.2f} | {100 * (acc.accuracy - float_acc):+.2f} | "
            f"{mem['quantized']:,} | {100 * mem['ratio_to_int16']:.1f} % | "
            f"{time.perf_counter() - t0:.1f} |"
        )
        print(rows[-1], flush=True)
    return rows


class _Reader:
    def __init__(self, name: str, x: np.ndarray) -> None:
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.x)


def onnxruntime_peer(
    model_path: Path, calib: Dataset, test: Dataset, float_acc: float
) -> list[str]:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rows = []
    name = onnx.load(model_path).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(model_path), str(pre))
        variants = [
            ("MinMax", CalibrationMethod.MinMax, None),
            ("Entropy via quantize_static (128 bins)", CalibrationMethod.Entropy, None),
            ("Entropy, create_calibrator num_bins=2048", CalibrationMethod.Entropy, 2048),
        ]
        for label, method, bins in variants:
            out = Path(tmp) / f"q{len(rows)}.onnx"
            cache = None
            if bins is not None:
                cal = create_calibrator(pre, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                        calibrate_method=method,
                                        extra_options={"num_bins": bins})
                cal.collect_data(_Reader(name, calib.x.astype(np.float32)))
                cache = Path(tmp) / f"cache{len(rows)}.json"
                save_tensors_data(cal.compute_data(), cache)
            quantize_static(
                str(pre), str(out), _Reader(name, calib.x.astype(np.float32)),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True, calibrate_method=method,
                **({"calibration_cache_path": str(cache)} if cache else {}),
            )
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            preds = np.concatenate([
                sess.run(None, {name: test.x[i : i + 500].astype(np.float32)})[0].argmax(1)
                for i in range(0, len(test), 500)
            ])
            acc = float((preds == test.y).mean())
            rows.append(f"| onnxruntime quantize_static 8-bit, {label} | {100 * acc:.2f} | "
                        f"{100 * (acc - float_acc):+.2f} |")
            print(rows[-1], flush=True)
    return rows


def mlperf_agreement(n: int = 200) -> list[str]:
    rows = []
    files = {"KWS DS-CNN": "kws_ref_model_float32_tf2onnx.onnx",
             "ResNet-8": "pretrainedResnet.onnx", "VWW MobileNet": "vww_96_float_tf2onnx.onnx"}
    for label, fname in files.items():
        graph = load_model(MLPERF / fname)
        shape = graph.inputs[0].onnx_shape
        rng = np.random.default_rng(0)
        calib = rng.uniform(0, 1, (256, *shape)).astype(np.float32)
        test = rng.uniform(0, 1, (n, *shape)).astype(np.float32)
        qg, _ = quantize(graph, calib, QuantConfig())
        ref = evaluate.float_scores(graph, test).argmax(1)
        gold = evaluate.golden_scores(qg, test).argmax(1)
        rows.append(f"| {label} | {n} | {100 * (ref == gold).mean():.1f} % |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N test images only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    entry = MODELS["dscnn_fmnist"]
    model_path = entry.path()
    graph = load_model(model_path)
    x, y = fmnist.load("test")
    test = Dataset(x, y, "Fashion-MNIST test set").limit(args.limit)
    calib = load_npz(entry.path("calib_data"))
    ref = evaluate.accuracy(lambda a: evaluate.float_scores(graph, a), test, "reference")
    float_acc = ref.accuracy
    lines = [
        (f"dscnn_fmnist on {len(test):,} Fashion-MNIST test images; calibration: the shipped "
        f"{len(calib)}-image training subset. Float accuracy {100 * float_acc:.2f} %."),
        "",
        "| configuration | accuracy % | vs float (points) | weight image B | of 16-bit image | s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    lines += ours(graph, calib, test, float_acc)
    lines += ["", "| peer | accuracy % | vs float (points) |", "| --- | ---: | ---: |"]
    print("\n".join(lines[-3:]), flush=True)
    lines += onnxruntime_peer(model_path, calib, test, float_acc)
    lines += ["", ("Golden vs float reference after 8-bit quantization (KL), MLPerf Tiny float "
              "models, calibration and test on uniform random inputs in [0, 1):"), "",
              "| model | inputs | top-1 agreement |", "| --- | ---: | ---: |"]
    if MLPERF.is_dir():
        lines += mlperf_agreement()
    text = "\n".join(lines)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
