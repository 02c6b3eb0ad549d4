"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, read with numpy only.

The package installs the four standard IDX files (gzip-compressed) in
``/usr/share/datasets/fashion-mnist/``; the environment variable ``FASHION_MNIST_DIR`` points
elsewhere if they live in another folder. Images come back as float32 ``(N, 1, 28, 28)`` scaled
to [0, 1], labels as int64 ``(N,)``.

Run as a script (``python -m models.fmnist`` or ``python models/fmnist.py``) to rewrite the data
subsets shipped beside the models:

* ``fmnist_eval.npz``: 1,000 test images, 100 per class;
* ``fmnist_calib.npz``: 500 training images, 50 per class.

Both hold ``x`` (float32 ``(N, 1, 28, 28)`` in [0, 1]) and ``y`` (int64). The subsets are drawn
with fixed seeds and sorted by original index, so re-running writes identical files.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
NUM_CLASSES = 10
EVAL_FILE = "fmnist_eval.npz"
CALIB_FILE = "fmnist_calib.npz"
EVAL_PER_CLASS = 100
CALIB_PER_CLASS = 50
EVAL_SEED = 20240601
CALIB_SEED = 20240602

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX type codes: only unsigned bytes occur in Fashion-MNIST.
_IDX_UBYTE = 0x08


class DatasetMissingError(FileNotFoundError):
    """Raised when the Fashion-MNIST files are not installed."""


def data_dir() -> Path:
    """Return the folder holding the IDX files (``$FASHION_MNIST_DIR`` or the Debian path)."""
    env = os.environ.get("FASHION_MNIST_DIR")
    return Path(env) if env else DEFAULT_DIR


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes and return it as a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise ValueError(f"{path}: expected {count} data bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the ``"train"`` or ``"test"`` split as (float32 images in [0, 1], int64 labels).

    Images have the shape ``(N, 1, 28, 28)``. Raises `DatasetMissingError` naming the Debian
    package when the files are absent.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = data_dir() if root is None else Path(root)
    image_path, label_path = (root / name for name in _FILES[split])
    for path in (image_path, label_path):
        if not path.is_file():
            raise DatasetMissingError(
                f"Fashion-MNIST file {path} not found: install it with "
                "'apt-get install dataset-fashion-mnist' (or set FASHION_MNIST_DIR to the "
                "folder holding the IDX .gz files)"
            )
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: image/label files of split {split!r} do not match")
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    y = labels.astype(np.int64)
    return x, y


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Pick ``per_class`` indices of each class at random (fixed ``seed``), sorted ascending."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has only {len(members)} samples, need {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` and ``y`` with np.savez_compressed, with fixed zip timestamps.

    numpy stamps each archive member with the current time; rewriting the members with a
    constant date makes re-runs byte-identical.
    """
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    # a private temporary name, then an atomic rename: concurrent writers cannot interleave
    fd, tmp_name = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                fixed.compress_type = zipfile.ZIP_DEFLATED
                fixed.external_attr = 0o644 << 16
                dst.writestr(fixed, src.read(info.filename))
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_subsets(out_dir: Path | None = None, root: Path | None = None) -> dict[str, Path]:
    """Write the shipped eval (test set) and calibration (training set) subsets to ``out_dir``.

    ``out_dir`` defaults to the folder of this module. Returns the written paths by role.
    """
    out_dir = Path(__file__).resolve().parent if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for role, split, per_class, seed, name in (
        ("eval", "test", EVAL_PER_CLASS, EVAL_SEED, EVAL_FILE),
        ("calib", "train", CALIB_PER_CLASS, CALIB_SEED, CALIB_FILE),
    ):
        x, y = load(split, root)
        idx = stratified_indices(y, per_class, seed)
        path = out_dir / name
        _save_npz(path, np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx]))
        written[role] = path
    return written


def load_subset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a shipped ``.npz`` subset and return its ``(x, y)`` arrays."""
    with np.load(path) as data:
        return data["x"], data["y"]


def main(argv: list[str] | None = None) -> None:
    """Command line: write the shipped data subsets and print their shapes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: here)")
    parser.add_argument("--data", type=Path, default=None, help="folder of the IDX .gz files")
    args = parser.parse_args(argv)
    for role, path in write_subsets(args.out, args.data).items():
        x, y = load_subset(path)
        counts = np.bincount(y, minlength=NUM_CLASSES).tolist()
        print(f"{role}: {path} x{x.shape} {x.dtype} y{y.shape} {y.dtype} per class {counts}")


if __name__ == "__main__":
    main()
