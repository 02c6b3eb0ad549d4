"""Shared PyTorch helpers of the Fashion-MNIST training scripts (the ``train`` extra).

Data augmentation on whole batches, the training loop, parameter and multiply-accumulate
counting, ONNX export and the onnxruntime checks of the exported file.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

try:
    from . import fmnist
except ImportError:  # run as a script from inside models/
    import fmnist


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch and make torch pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (legacy global state some libraries still use)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def count_params(model: nn.Module) -> int:
    """Return the number of trainable parameters (BatchNorm scale and shift included)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _dry_run(model: nn.Module, input_shape: tuple, handles: list) -> None:
    """One eval-mode forward pass of zeros (for the forward hooks in `handles`), then remove
    the hooks and restore the model's training mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    for handle in handles:
        handle.remove()


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """Return the multiply-accumulates of one forward pass of one image.

    Counts convolutions (output elements × input channels per group × kernel area) and dense
    layers (inputs × outputs); BatchNorm, ReLU and pooling are not counted.
    """
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: tuple, _out: torch.Tensor) -> None:
        nonlocal total
        total += mod.in_features * mod.out_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    _dry_run(model, input_shape, handles)
    return total


def layer_summary(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[str]:
    """Return one line per leaf module: name, type, output shape, parameters and MACs."""
    lines = []

    def hook(name: str) -> Callable:
        def record(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            macs = 0
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                macs = out[0].numel() * (mod.in_channels // mod.groups) * kh * kw
                kind = f"Conv{kh}x{kw}/s{mod.stride[0]} {mod.in_channels}->{mod.out_channels}" + (
                    f" dw(g={mod.groups})" if mod.groups > 1 else ""
                )
            elif isinstance(mod, nn.Linear):
                macs = mod.in_features * mod.out_features
                kind = f"Dense {mod.in_features}->{mod.out_features}"
            else:
                kind = type(mod).__name__
            shape = "x".join(str(d) for d in out.shape[1:])
            lines.append(f"{name:<16} {kind:<30} out {shape:<10} params {params:>7} MACs {macs:>9}")

        return record

    handles = [
        mod.register_forward_hook(hook(name))
        for name, mod in model.named_modules()
        if not list(mod.children())
    ]
    _dry_run(model, input_shape, handles)
    return lines


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels and random horizontal flip, per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w)
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    cropped = _crop(padded, rows, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Gather the window given by per-image row and column index grids from ``padded``."""
    n, c, h, _ = rows.shape
    tall = padded.gather(2, rows[..., :1].expand(n, c, h, padded.shape[-1]))
    return tall.gather(3, cols)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Return the top-1 accuracy of ``model`` (eval mode) on ``x``, ``y``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: weight decay on conv and dense weights, none on biases and BatchNorm."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train(
    model: nn.Module,
    *,
    epochs: int,
    seed: int,
    batch: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-2,
    label_smoothing: float = 0.1,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``model`` on the Fashion-MNIST training set with AdamW and a one-cycle schedule.

    Logs one line per epoch (mean loss and accuracy on the augmented training batches, test
    accuracy, wall-clock seconds) and returns a history dict with the per-epoch values and the
    total wall-clock and CPU seconds of training.
    """
    x_train, y_train = (torch.from_numpy(a) for a in fmnist.load("train"))
    x_test, y_test = (torch.from_numpy(a) for a in fmnist.load("test"))
    gen = torch.Generator().manual_seed(seed)
    steps = (len(x_train) + batch - 1) // batch
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps, pct_start=0.15
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history: dict = {"epochs": []}
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            xb, yb = augment(x_train[idx], gen), y_train[idx]
            logits = model(xb)
            loss = criterion(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        test_acc = evaluate(model, x_test, y_test)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "loss": loss_sum / len(x_train),
            "train_acc": correct / len(x_train),
            "test_acc": test_acc,
            "seconds": seconds,
        }
        history["epochs"].append(row)
        log(
            f"epoch {epoch:3d}/{epochs}  loss {row['loss']:.4f}  train {row['train_acc']:.4f}  "
            f"test {test_acc:.4f}  {seconds:5.1f} s"
        )
    history["train_seconds"] = time.perf_counter() - start
    history["train_cpu_seconds"] = time.process_time() - cpu_start
    model.eval()
    return history


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export ``model`` (eval mode) to ONNX opset 13 with a dynamic batch axis."""
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model,
        x,
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def check_onnx(model: nn.Module, path: Path, subset: Path | None = None) -> dict:
    """Check the ONNX file with onnxruntime against ``model``; return accuracies and max diff.

    Compares the logits of the first 100 test images (the max abs difference must stay below
    1e-4) and measures the top-1 accuracy on the full 10k test set and, if ``subset`` is given,
    on that shipped ``.npz`` evaluation subset.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x_test, y_test = fmnist.load("test")
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test[:100])).numpy()
    got = sess.run(["logits"], {"input": x_test[:100]})[0]
    max_diff = float(np.abs(ref - got).max())
    if max_diff >= 1e-4:
        raise AssertionError(f"{path}: onnxruntime differs from PyTorch by {max_diff}")

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        preds = np.concatenate(
            [
                sess.run(["logits"], {"input": x[i : i + 1000]})[0].argmax(1)
                for i in range(0, len(x), 1000)
            ]
        )
        return float((preds == y).mean())

    result = {"max_abs_diff": max_diff, "onnx_test_acc": accuracy(x_test, y_test)}
    if subset is not None:
        result["onnx_eval_subset_acc"] = accuracy(*fmnist.load_subset(subset))
    return result


def write_report(path: Path, report: dict) -> None:
    """Write the training report (architecture numbers, history, checks) as JSON."""
    path.write_text(json.dumps(report, indent=2) + "\n")


def make_parser(name: str, epochs: int, lr: float, batch: int = 128) -> argparse.ArgumentParser:
    """Return the command-line parser shared by the training scripts."""
    parser = argparse.ArgumentParser(description=f"Train {name} and export it to ONNX.")
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the models/ folder)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--lr", type=float, default=lr, help=f"peak AdamW learning rate (default {lr})"
    )
    parser.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    # One thread by default: on a machine whose cores are busy with other work, torch's
    # per-operator thread barriers slowed two-thread training down more than tenfold.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser


def run(
    name: str, build: Callable[[], nn.Module], args: argparse.Namespace, weight_decay: float
) -> dict:
    """Train the model made by ``build``, export it and check the export; return the report.

    Writes the shipped data subsets, ``<name>.onnx`` and the JSON report ``<name>.json`` into
    ``args.out`` and prints the layer summary, the per-epoch log and the export checks.
    """
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    subsets = fmnist.write_subsets(args.out)

    model = build()
    params, macs = count_params(model), count_macs(model)
    layers = layer_summary(model)
    for line in layers:
        print(line, flush=True)
    print(f"{name}: {params} parameters, {macs} MACs per image", flush=True)

    history = train(
        model,
        epochs=args.epochs,
        seed=args.seed,
        batch=args.batch,
        lr=args.lr,
        weight_decay=weight_decay,
        log=lambda s: print(s, flush=True),
    )
    print(
        f"training took {history['train_seconds']:.0f} s wall clock, "
        f"{history['train_cpu_seconds']:.0f} s CPU",
        flush=True,
    )
    onnx_path = args.out / f"{name}.onnx"
    export_onnx(model, onnx_path)
    checks = check_onnx(model, onnx_path, subsets["eval"])
    print(f"{onnx_path}: {checks}", flush=True)
    report = {
        "model": name,
        "params": params,
        "macs": macs,
        "args": {k: str(v) for k, v in vars(args).items()},
        "weight_decay": weight_decay,
        "layers": layers,
        "checks": checks,
        **history,
    }
    write_report(args.out / f"{name}.json", report)
    return report
