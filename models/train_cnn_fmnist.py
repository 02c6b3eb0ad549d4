"""Train ``cnn_fmnist``, a plain VGG-style CNN for Fashion-MNIST, and export it to ONNX.

Three stages of 3x3 convolutions (each followed by BatchNorm and ReLU) separated by 2x2 max
pools, then two dense layers. With a few hundred thousand parameters it is the model of the
pruning and tensor-decomposition experiments.

    python models/train_cnn_fmnist.py              # or: python -m models.train_cnn_fmnist

writes ``cnn_fmnist.onnx``, ``cnn_fmnist.json`` (training report) and the shipped data subsets
into ``--out`` (default: this folder).
"""

from __future__ import annotations

from torch import nn

try:
    from . import training
except ImportError:  # run as a script from inside models/
    import training

NAME = "cnn_fmnist"
# output channels of the 3x3 convolutions of each stage; a 2x2 max pool ends each stage
STAGES = ((32, 32), (64, 64), (128,))
HIDDEN = 128
NUM_CLASSES = 10


def build_model(stages: tuple = STAGES, hidden: int = HIDDEN) -> nn.Sequential:
    """Build the VGG-style network: conv stages with max pools, then two dense layers."""
    layers: list[nn.Module] = []
    cin, size = 1, 28
    for stage in stages:
        for cout in stage:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
        size //= 2
    layers += [
        nn.Flatten(),
        nn.Linear(cin * size * size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    ]
    return nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> None:
    """Command line: train, export to ONNX, check the export and write the report."""
    args = training.make_parser(NAME, epochs=25, lr=3e-3).parse_args(argv)
    training.run(NAME, build_model, args, weight_decay=5e-2)


if __name__ == "__main__":
    main()
