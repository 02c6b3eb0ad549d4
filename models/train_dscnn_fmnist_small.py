"""Train ``dscnn_fmnist_small``, a compact accelgen example model, and export it to ONNX.

The small sibling of ``dscnn_fmnist`` (same building blocks, built by
`train_dscnn_fmnist.build_model`): a 3x3 stem convolution, three depthwise 3x3 + pointwise 1x1
blocks (each convolution followed by BatchNorm and ReLU; downsampling by stride-2 depthwise
convolutions), global average pooling and one dense layer to the 10 classes. Channel counts are
multiples of 8. Sized so that every layer can become its own stage of a streaming pipeline on an
iCE40 UP5K: 9 compute layers, under 20,000 parameters and 1.2 million multiply-accumulates per
28x28 image.

    python models/train_dscnn_fmnist_small.py      # or: python -m models.train_dscnn_fmnist_small

writes ``dscnn_fmnist_small.onnx``, ``dscnn_fmnist_small.json`` (training report) and the shipped
data subsets (deterministic, byte-identical on every run) into ``--out`` (default: this folder).
"""

from __future__ import annotations

from torch import nn

try:
    from . import train_dscnn_fmnist, training
except ImportError:  # run as a script from inside models/
    import train_dscnn_fmnist
    import training

NAME = "dscnn_fmnist_small"
STEM_CHANNELS = 24
# (output channels, stride of the depthwise convolution) of each separable block
BLOCKS = ((40, 2), (80, 2), (144, 1))
NUM_CLASSES = train_dscnn_fmnist.NUM_CLASSES
# hardware budget the architecture must stay within (checked by `build_model`)
MAX_PARAMS = 20_000
MAX_MACS = 1_200_000


def build_model(stem: int = STEM_CHANNELS, blocks: tuple = BLOCKS) -> nn.Sequential:
    """Build the compact depthwise-separable network and check it against the budget."""
    model = train_dscnn_fmnist.build_model(stem, blocks)
    params, macs = training.count_params(model), training.count_macs(model)
    if params > MAX_PARAMS or macs > MAX_MACS:
        raise ValueError(
            f"{NAME}: {params} parameters / {macs} MACs exceed the budget "
            f"({MAX_PARAMS} / {MAX_MACS})"
        )
    return model


def main(argv: list[str] | None = None) -> None:
    """Command line: train, export to ONNX, check the export and write the report."""
    args = training.make_parser(NAME, epochs=60, lr=5e-3).parse_args(argv)
    training.run(NAME, build_model, args, weight_decay=5e-2)


if __name__ == "__main__":
    main()
