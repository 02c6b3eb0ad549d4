"""The README's first command installs with `pip install .` (not editable): everything the
tool imports or reads at run time must be in that install, not only in the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def source_packages() -> set[str]:
    """Every folder of accelgen/ with an __init__.py, as a dotted package name."""
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "accelgen").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    return found | {"accelgen.zoo"}  # models/ installed under that name


PROBE = "import accelgen.array.compiler, accelgen.zoo as z, accelgen; print(accelgen.__file__)"


@pytest.mark.slow
def test_non_editable_install_holds_every_package_and_data_file(tmp_path):
    # from a clean copy: setuptools' build/ folder keeps packages of earlier builds
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".git", ".hypothesis", ".*_cache"))
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    installed = {
        ".".join(p.parent.relative_to(target).parts)
        for p in (target / "accelgen").rglob("__init__.py")
    }
    assert source_packages() <= installed, sorted(source_packages() - installed)
    # the files read at run time: the default model, its data subset, the simulators' drivers
    for rel in ("accelgen/zoo/dscnn_fmnist_small.onnx", "accelgen/zoo/fmnist_eval.npz",
                "accelgen/sim/array_driver.cc", "accelgen/sim/driver_loop.h"):
        assert (target / rel).is_file(), rel
    # import the array compiler from the install alone (run outside the source tree)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(target) in probe.stdout
