"""The example models accelgen ships, installed as the package `accelgen.zoo`.

Each entry names a trained ONNX file in this folder and the data shipped beside it:

* ``*_eval.npz``: a stratified evaluation subset of the test set;
* ``*_calib.npz``: a calibration subset drawn from the training set.

Both hold ``x`` (float32, the model's own input layout ``(N, C, H, W)``, pixel values scaled to
[0, 1]) and ``y`` (int64 class labels). The training scripts (`train_*.py`, PyTorch, the
``train`` extra) regenerate the models and the data from the Debian package
``dataset-fashion-mnist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class ZooModel:
    name: str
    onnx: str
    eval_data: str
    calib_data: str
    classes: tuple[str, ...]
    description: str

    def path(self, what: str = "onnx") -> Path:
        return Path(str(resources.files(__name__).joinpath(getattr(self, what))))

    @property
    def available(self) -> bool:
        return self.path().is_file()


MODELS: dict[str, ZooModel] = {
    "dscnn_fmnist": ZooModel(
        name="dscnn_fmnist",
        onnx="dscnn_fmnist_small.onnx",  # renamed to dscnn_fmnist.onnx with its script
        eval_data="fmnist_eval.npz",
        calib_data="fmnist_calib.npz",
        classes=FASHION_MNIST_CLASSES,
        description="depthwise-separable CNN (seed 002 style), Fashion-MNIST, <= 0.08 M params",
    ),
    "cnn_fmnist": ZooModel(
        name="cnn_fmnist",
        onnx="cnn_fmnist.onnx",
        eval_data="fmnist_eval.npz",
        calib_data="fmnist_calib.npz",
        classes=FASHION_MNIST_CLASSES,
        description="VGG-style 3x3 CNN, Fashion-MNIST, for pruning and decomposition",
    ),
}

DEFAULT_MODEL = "dscnn_fmnist"
