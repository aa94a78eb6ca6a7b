"""Shared fixtures: where the repo, its extra venvs and the FER2013 data are."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Optional stacks made by `./install.sh --dev`: Bookworm's numpy 1.26 + tflite-runtime 2.14, and TensorFlow.
TFLITE_VENV = REPO / ".venv-tflite"
CONVERT_VENV = REPO / ".venv-convert"


def fer2013_dir() -> Path:
    env = os.environ.get("MOODBOX_FER2013")
    return Path(env) if env else REPO.parent / "shared" / "data" / "fer2013"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fer2013() -> Path:
    """The FER2013 folder, or a skip saying how to provide it."""
    path = fer2013_dir()
    if not (path / "fer2013.csv.gz").exists():
        pytest.skip(f"FER2013 not found at {path}: set MOODBOX_FER2013 to the folder holding fer2013.csv.gz")
    return path


def venv_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{venv.name} not found: run ./install.sh --dev to create it")
    return python


@pytest.fixture(scope="session")
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test models (tests/tiny_model.py), built once with TensorFlow and kept in pytest's
    cache until tiny_model.py changes."""
    import tiny_model

    python = venv_python(CONVERT_VENV)
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("moodbox-tiny-model")) if cache is not None else tmp_path_factory.mktemp("tiny-model")
    try:
        return tiny_model.build(root, python)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(str(exc))
