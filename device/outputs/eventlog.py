"""The log output: one line per event that matters, none per frame."""

from __future__ import annotations

import logging

from device.config import Config
from device.events import CameraState, CommandResult, ComponentState, ModelLoaded, MoodChanged

__all__ = ["LogOutput", "create"]

log = logging.getLogger("moodbox")


class LogOutput:
    name = "log"
    commands: frozenset[str] = frozenset()

    def start(self, bus) -> None:
        pass

    def handle(self, event: object) -> None:
        if isinstance(event, MoodChanged):
            origin = " (override)" if event.override else ""
            log.info("mood %s -> %s%s, confidence %.2f", event.previous, event.mood, origin, event.confidence,
                     extra={"MOOD": event.mood})
        elif isinstance(event, CameraState):
            level = logging.WARNING if event.state == "camera_lost" else logging.INFO
            log.log(level, "camera %s%s", event.state, f": {event.detail}" if event.detail else "")
        elif isinstance(event, ComponentState):
            level = logging.WARNING if event.error else logging.INFO
            log.log(level, "%s %s%s", event.component, event.state, f": {event.detail}" if event.detail else "")
        elif isinstance(event, ModelLoaded):
            accuracy = f", PrivateTest accuracy {event.accuracy:.1%}" if event.accuracy else ""
            log.info("model %s loaded (%s%s)", event.version, event.path, accuracy)
        elif isinstance(event, CommandResult):
            if event.ok:
                log.info("command %s from %s: ok", event.command.name, event.command.source)
            else:
                log.warning("command %s from %s failed: %s", event.command.name, event.command.source, event.error)

    def stop(self) -> None:
        pass


def create(config: Config, context) -> LogOutput:
    return LogOutput()
