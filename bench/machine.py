"""What the figures were measured on: CPU, cores, load, memory and the software stack."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["describe", "load_average", "versions"]


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _mem_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 0)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        return ""


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def versions(*dists: str) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def describe() -> dict[str, Any]:
    cpu = _cpuinfo()
    family = f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}" if cpu else ""
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_detail": family,
        "cpu_mhz": cpu.get("cpu MHz"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_mb": _mem_total_mb(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "packages": versions("numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime"),
    }
