"""Data sets as the CLI reads them: ``.npz`` files with ``x`` (inputs in the model's own layout)
and ``y`` (int class labels), the subsets shipped with the example models, and random inputs.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accelgen.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs `x` (N, *model input shape) and optional labels `y` (N,)."""

    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.x)

    def limit(self, n: int | None) -> Dataset:
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise UsageError(f"--limit {n!r} must be at least 1")
        return Dataset(self.x[:n], None if self.y is None else self.y[:n], self.source)


def load_npz(path: str | Path, input_shape: tuple[int, ...] | None = None,
             need_labels: bool = False) -> Dataset:
    """Read an ``x``/``y`` .npz; every problem is one clear UsageError."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"data file {str(p)!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as npz:
            files = set(npz.files)
            if "x" not in files:
                raise UsageError(f"data file {str(p)!r} has no array 'x' (it has {sorted(files)})")
            x = npz["x"]
            y = npz["y"] if "y" in files else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UsageError(f"data file {str(p)!r} is not a readable .npz ({err})") from None
    if need_labels and y is None:
        raise UsageError(f"data file {str(p)!r} has no labels 'y'; accuracy needs them")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise UsageError(
            f"data file {str(p)!r}: x has shape {x.shape!r}; the model takes (N, *{input_shape!r})"
        )
    if y is not None:
        if y.shape != (len(x),):
            raise UsageError(f"data file {str(p)!r}: y has shape {y.shape!r}, expected ({len(x)},)")
        if y.dtype.kind not in "iu":
            raise UsageError(f"data file {str(p)!r}: y must hold integer labels, not {y.dtype}")
        y = y.astype(np.int64)
    if x.dtype.kind not in "fiu":
        raise UsageError(f"data file {str(p)!r}: x has non-numeric type {x.dtype}")
    return Dataset(x, y, str(p))


def random_inputs(shape: tuple[int, ...], dtype: str, n: int, seed: int = 0,
                  low: float = 0.0, high: float = 1.0) -> Dataset:
    """Random inputs over the input's range (integer types: their whole range)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        x = rng.integers(info.min, int(info.max) + 1, size=(n, *shape)).astype(dt)
    else:
        x = rng.uniform(low, high, size=(n, *shape)).astype(dt)
    return Dataset(x, None, f"random ({n} inputs, seed {seed})")


def shipped(model_path: Path, which: str) -> Dataset | None:
    """The evaluation or calibration subset shipped with an example model, if it is one."""
    from accelgen import zoo

    for entry in zoo.MODELS.values():
        if entry.available and entry.path().resolve() == Path(model_path).resolve():
            name = entry.eval_data if which == "eval" else entry.calib_data
            path = entry.path("eval_data" if which == "eval" else "calib_data")
            if path.is_file():
                return load_npz(path)
            log.warning("shipped data %s of %s is missing", name, entry.name)
    return None
