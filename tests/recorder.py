"""An output that remembers every event on the bus and lets a test wait for one."""

from __future__ import annotations

import threading

__all__ = ["WAIT_S", "Recorder"]

WAIT_S = 30.0  # generous: only a hang reaches it


class Recorder:
    name = "recorder"
    commands: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.events: list[object] = []
        self._changed = threading.Condition()

    def start(self, bus) -> None:
        pass

    def handle(self, event: object) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def stop(self) -> None:
        pass

    def of(self, kind: type) -> list:
        with self._changed:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, predicate, timeout: float = WAIT_S) -> None:
        """Wait until ``predicate(recorder)`` holds."""
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self), timeout), "timed out waiting for an event"

    def wait_event(self, match, timeout: float = WAIT_S, after: int = 0):
        """The latest event from index ``after`` on for which ``match(event)`` holds, once there is one."""
        found: list[object] = []

        def seen(recorder: Recorder) -> bool:
            found[:] = [e for e in recorder.events[after:] if match(e)]
            return bool(found)

        try:
            self.wait_for(seen, timeout)
        except AssertionError:
            kinds = [type(e).__name__ for e in self.events[after:]]
            raise AssertionError(f"no matching event in {timeout} s; saw {kinds}") from None
        return found[-1]
