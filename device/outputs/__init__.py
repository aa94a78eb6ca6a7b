"""Outputs: the parts that react to moods (log, music, MQTT, display).

Each module in OUTPUT_MODULES exposes ``create(config, context)`` returning an
Output, or None when its config section disables it. Hardware libraries are
imported inside those modules, so a missing one disables only that output.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from device.bus import Output
from device.config import Config

__all__ = ["OUTPUT_MODULES", "OutputContext", "build_outputs"]

log = logging.getLogger(__name__)

OUTPUT_MODULES = [
    "device.outputs.eventlog",
    "device.outputs.mqtt",
    "device.outputs.display",
    "device.outputs.music",
]


@dataclass(frozen=True)
class OutputContext:
    state_dir: Path
    demo: bool = False  # no hardware, no accounts: dry-run player, emulated display
    box_id: str = "moodbox"
    version: str = ""


def build_outputs(config: Config, context: OutputContext, modules: list[str] | None = None) -> list[Output]:
    """Create every enabled output; one that fails to import or build is logged and skipped."""
    outputs: list[Output] = []
    summary = []
    for name in modules if modules is not None else OUTPUT_MODULES:
        short = name.rsplit(".", 1)[-1]
        try:
            output = importlib.import_module(name).create(config, context)
        except Exception as exc:  # a missing hardware library disables only its output
            log.error("output %s failed to start: %s", short, exc)
            summary.append(f"{short}=failed")
            continue
        if output is None:
            summary.append(f"{short}=disabled")
            continue
        outputs.append(output)
        summary.append(f"{short}=enabled")
    log.info("outputs: %s", ", ".join(summary))
    return outputs
