"""Train ``dscnn_fmnist``, the default accelgen example model, and export it to ONNX.

A depthwise-separable CNN for Fashion-MNIST sized for a streaming pipeline on an iCE40 UP5K:
a 3x3 stem convolution, depthwise 3x3 + pointwise 1x1 blocks (each convolution followed by
BatchNorm and ReLU; downsampling by stride-2 depthwise convolutions), global average pooling
and one dense layer to the 10 classes. Channel counts are multiples of 8.

    python models/train_dscnn_fmnist.py            # or: python -m models.train_dscnn_fmnist

writes ``dscnn_fmnist.onnx``, ``dscnn_fmnist.json`` (training report) and the shipped data
subsets into ``--out`` (default: this folder).
"""

from __future__ import annotations

from torch import nn

try:
    from . import training
except ImportError:  # run as a script from inside models/
    import training

NAME = "dscnn_fmnist"
STEM_CHANNELS = 32
# (output channels, stride of the depthwise convolution) of each separable block
BLOCKS = ((64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (128, 1))
NUM_CLASSES = 10


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    """Return [Conv2d, BatchNorm2d, ReLU] with 'same' padding for odd ``kernel``."""
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def build_model(stem: int = STEM_CHANNELS, blocks: tuple = BLOCKS) -> nn.Sequential:
    """Build the depthwise-separable network: stem, separable blocks, global pool, dense."""
    layers = conv_bn_relu(1, stem, 3)
    cin = stem
    for cout, stride in blocks:
        layers += conv_bn_relu(cin, cin, 3, stride=stride, groups=cin)  # depthwise 3x3
        layers += conv_bn_relu(cin, cout, 1)  # pointwise 1x1
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, NUM_CLASSES)]
    return nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> None:
    """Command line: train, export to ONNX, check the export and write the report."""
    args = training.make_parser(NAME, epochs=50, lr=4e-3).parse_args(argv)
    training.run(NAME, build_model, args, weight_decay=5e-2)


if __name__ == "__main__":
    main()
