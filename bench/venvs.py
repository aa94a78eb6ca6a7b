"""Running a bench module in another virtual environment and reading back its one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["REPO", "TF_PYTHON", "TFLITE_PYTHON", "run_json"]

REPO = Path(__file__).resolve().parent.parent
#: Bookworm's stack (numpy 1.26 + tflite-runtime 2.14) and TensorFlow, as ./install.sh --dev makes them.
TFLITE_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
TF_PYTHON = REPO / ".venv-convert" / "bin" / "python"


def run_json(python: Path, module: str, args: list[str], timeout: float) -> dict[str, Any]:
    """``python -m module args`` from the repo root; its last stdout line parsed, or status/reason on failure."""
    if not python.exists():
        return {"status": "not installed", "reason": f"{python} not found (./install.sh --dev makes it)"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run([str(python), "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"{module} took longer than {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "reason": f"{module} exited with {done.returncode}: {tail[0]}"}
    try:
        return {"status": "ok", **json.loads(lines[-1])}
    except json.JSONDecodeError:
        return {"status": "failed", "reason": f"{module} printed no JSON: {lines[-1][:200]}"}
